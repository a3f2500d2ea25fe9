"""Composable detect -> orient -> describe -> match -> filter pipelines.

Every stage is a small callable; stages exchange :class:`ssfeat.features.Features`:

* detector ``(image) -> Features`` (positions, sizes, scores, and the detector's own orientation);
* orienter ``(image, Features) -> Features`` (sets ``orientations`` and maybe ``scales``; a multi-pose
  orienter returns several features per keypoint, ``parents`` links them to the keypoint);
* descriptor ``(image, Features) -> Features`` (sets ``descriptors``);
* matcher ``(Features, Features) -> Matches``;
* filters ``(Features, Features, Matches) -> Matches`` (run in order).

``image`` is always a gray float32 ``(H, W)`` array in ``[0, 1]``; :meth:`Pipeline.extract` converts any
supported input (path, uint8/uint16/float array, tensor; gray, RGB or RGBA) once.

Named pipelines (:data:`PIPELINES`) all start from the same OpenCV SIFT keypoints, so that they
differ only in the stage being compared; a trailing ``*`` adds the orientation-consistency filter
(ReKD's '*' rows), e.g. ``"ssfeat*"``.
"""

from ..features import concat_features
from ..inference.descriptor import LearnedDescriptor, SIFTDescriptor
from .build import PIPELINES, MatchResult, Pipeline, build_pipeline, check_pipeline_name, matching_stages
from .detectors import KorniaHessianDetector, LearnedDetector, SIFTDetector
from .matchers import Matches, MutualNearestNeighbor, OrientationFilter, RansacHomography, RatioTest
from .orienters import (
    PIPELINE_MODEL,
    DetectorPose,
    KorniaOrienter,
    LearnedDetectorOrienter,
    PatchPoseOrienter,
    Upright,
    pipeline_estimator,
)
from .rotation import RelativeRotation, RotationEstimator, estimate_relative_rotation, extract_rotated
from .views import AffineViews

__all__ = [
    "PIPELINES",
    "PIPELINE_MODEL",
    "AffineViews",
    "DetectorPose",
    "KorniaHessianDetector",
    "KorniaOrienter",
    "LearnedDescriptor",
    "LearnedDetector",
    "LearnedDetectorOrienter",
    "MatchResult",
    "Matches",
    "MutualNearestNeighbor",
    "OrientationFilter",
    "PatchPoseOrienter",
    "Pipeline",
    "RansacHomography",
    "RatioTest",
    "RelativeRotation",
    "RotationEstimator",
    "SIFTDescriptor",
    "SIFTDetector",
    "Upright",
    "build_pipeline",
    "check_pipeline_name",
    "concat_features",
    "estimate_relative_rotation",
    "extract_rotated",
    "matching_stages",
    "pipeline_estimator",
]
