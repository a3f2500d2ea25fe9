"""ssfeat: self-supervised learning of local image-feature geometry.

Public API::

    from ssfeat import PatchPoseEstimator, build_pipeline, read_image, sample_images
    est = PatchPoseEstimator.from_pretrained()   # bundled patch-pose weights, offline
    photos = sample_images()                     # the bundled sample photos (paths)
    pipe = build_pipeline("ssfeat")              # detect -> orient -> describe -> match
    result = pipe(read_image(photos[0]), read_image(photos[1]))  # result.matches.idx: (M, 2)

The four model kinds and their inference APIs:

- patch pose (scale and orientation of a patch, or scale-covariant at keypoints):
  ``PatchPoseEstimator`` over ``PatchPoseNet`` and ``LogPolarScaleNet``
- oriented keypoints: ``KeypointDetector`` (``DetectConfig``)
- local descriptors: ``LearnedDescriptor``
- homography regression (warp): ``WarpReranker``, used with ``GlobalDescriptor`` for retrieval
"""

from .data.images import read_image, sample_images
from .features import Features
from .inference import (
    DetectConfig,
    GlobalDescriptor,
    KeypointDetector,
    KeypointPoses,
    LearnedDescriptor,
    PatchPoseEstimator,
    PoseOutput,
    TopKPoses,
    WarpReranker,
)
from .models import LogPolarScaleNet, PatchPoseConfig, PatchPoseNet, ScalePoseConfig
from .pipeline import Pipeline, build_pipeline, estimate_relative_rotation
from .version import __version__

__all__ = [
    "DetectConfig",
    "Features",
    "GlobalDescriptor",
    "KeypointDetector",
    "KeypointPoses",
    "LearnedDescriptor",
    "LogPolarScaleNet",
    "PatchPoseConfig",
    "PatchPoseEstimator",
    "PatchPoseNet",
    "Pipeline",
    "PoseOutput",
    "ScalePoseConfig",
    "TopKPoses",
    "WarpReranker",
    "__version__",
    "build_pipeline",
    "estimate_relative_rotation",
    "read_image",
    "sample_images",
]
