"""Named pipelines (:data:`PIPELINES`) and the :class:`Pipeline` that runs the stages."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import as_image
from ..features import Features
from ..inference.descriptor import LearnedDescriptor, SIFTDescriptor
from ..inference.pose import PatchPoseEstimator, check_device
from .detectors import KorniaHessianDetector, LearnedDetector, SIFTDetector
from .matchers import Matches, MutualNearestNeighbor, OrientationFilter, RansacHomography, RatioTest
from .orienters import (
    DetectorPose,
    KorniaOrienter,
    LearnedDetectorOrienter,
    PatchPoseOrienter,
    Upright,
    pipeline_estimator,
)
from .rotation import RelativeRotation, RotationEstimator, extract_rotated
from .views import AffineViews


@dataclass
class MatchResult:
    """Output of :meth:`Pipeline.__call__`."""

    features0: Features
    features1: Features
    matches: Matches
    rotation: RelativeRotation | None = None  # image 1 against image 0, with rotation compensation


# rotation compensation turns image 1 only when the estimate's confidence is at least this (chance
# level, for unrelated images, is about 0.08; see ssfeat.pipeline.rotation)
MIN_ROTATION_CONFIDENCE = 0.12
# nor when the estimated turn is smaller than this (degrees): upright descriptors are trained to bear small
# rotations (the dense descriptor up to about 25 degrees), and resampling the image would cost more than it gains
MIN_ROTATION_DEG = 10.0


class Pipeline:
    """detector -> orienter -> descriptor -> matcher -> filters, each replaceable.

    Example:
        >>> pipe = build_pipeline("ssfeat")
        >>> res = pipe("img1.png", "img2.png")
        >>> res.matches.idx.shape   # (M, 2)
    """

    def __init__(
        self,
        detector,
        orienter=None,
        descriptor=None,
        matcher=None,
        filters=(),
        name: str = "",
        views=None,
        rotation: RotationEstimator | None = None,
    ) -> None:
        self.detector = detector
        self.orienter = orienter or DetectorPose()
        self.descriptor = descriptor or SIFTDescriptor()
        self.matcher = matcher or MutualNearestNeighbor()
        self.filters = list(filters)
        self.name = name
        self.views = views
        self.rotation = rotation

    def extract(self, image) -> Features:
        """Features of one image (path, array or tensor; any channel layout and bit depth); with
        ``views`` (:class:`AffineViews`), of all its simulated views."""
        img = as_image(image)
        if self.views is not None:
            return self.views(self._extract_view, img)
        return self._extract_view(img)

    def extract_batch(self, images, image_batch: int = 8) -> list[Features]:
        """Features of several images (each as for :meth:`extract`). A descriptor stage with a
        ``describe_batch`` method (the dense learned descriptor) describes same-sized images
        ``image_batch`` at a time in one forward pass; the other stages run per image."""
        imgs = [as_image(im) for im in images]
        describe_batch = getattr(self.descriptor, "describe_batch", None)
        if self.views is not None or describe_batch is None:
            return [self.extract(im) for im in imgs]
        oriented = [self.orienter(im, self.detector(im)) for im in imgs]
        return describe_batch(imgs, oriented, image_batch)

    def _extract_view(self, img: np.ndarray) -> Features:
        return self.descriptor(img, self.orienter(img, self.detector(img)))

    def match_features(self, f0: Features, f1: Features) -> Matches:
        m = self.matcher(f0, f1)
        for f in self.filters:
            m = f(f0, f1, m)
        return m

    def extract_upright(self, image, rotation: RelativeRotation) -> Features:
        """Features of ``image`` turned upright by ``rotation`` (when its confidence is at least
        :data:`MIN_ROTATION_CONFIDENCE` and its angle at least :data:`MIN_ROTATION_DEG`; else of the
        image as it is), in the image's own coordinates."""
        turn = rotation.confidence >= MIN_ROTATION_CONFIDENCE and abs(math.degrees(rotation.angle)) >= MIN_ROTATION_DEG
        angle = rotation.angle if turn else 0.0
        return extract_rotated(self.extract, as_image(image), angle)

    def extract_pair(self, image0, image1) -> tuple[Features, Features, RelativeRotation | None]:
        """Features of both images (image 1 compensated for its rotation when the pipeline has a
        ``rotation`` estimator) and the estimated rotation (``None`` without one)."""
        img0, img1 = as_image(image0), as_image(image1)
        if self.rotation is None:
            return self.extract(img0), self.extract(img1), None
        r = self.rotation(img0, img1)
        return self.extract(img0), self.extract_upright(img1, r), r

    def __call__(self, image0, image1) -> MatchResult:
        f0, f1, r = self.extract_pair(image0, image1)
        return MatchResult(f0, f1, self.match_features(f0, f1), r)


# Named pipelines use SIFT keypoints (unless "detector" says otherwise), the SIFT descriptor on the
# oriented, scaled patch and mutual nearest neighbours; most differ only in the orienter.
PIPELINES: dict[str, dict] = {
    "sift": {"orienter": "sift"},  # SIFT's own orientation and scale
    "upright": {"orienter": "upright"},
    "kornia": {"orienter": "kornia"},  # kornia dominant gradient orientation, SIFT's scale
    "ssfeat": {"orienter": "ssfeat"},  # ssfeat orientation, SIFT's scale
    "ssfeat_multi": {"orienter": "ssfeat_multi"},  # + a second orientation where the histogram has one
    "ssfeat_scale": {"orienter": "ssfeat_scale"},  # ssfeat orientation and size, scale-covariant
    "ssfeat_scale_prior": {"orienter": "ssfeat_scale_prior"},  # the same, refining SIFT's size
    "sift_rootsift": {"orienter": "sift", "descriptor": "rootsift"},
    "ssfeat_rootsift": {"orienter": "ssfeat", "descriptor": "rootsift"},
    "sift_ratio": {"orienter": "sift", "matcher": "ratio"},
    "ssfeat_ratio": {"orienter": "ssfeat", "matcher": "ratio"},
    # other detectors, each with its own orientation
    "rekd": {"detector": "learned", "orienter": "sift"},  # ssfeat's equivariant detector
    "rekd_upright": {"detector": "learned", "orienter": "upright"},
    "hessian": {"detector": "kornia", "orienter": "sift"},  # kornia Hessian blobs + dominant gradient
    "sift_rekdori": {"orienter": "rekd"},  # SIFT keypoints, orientation from the detector's histogram map
    # descriptors: same SIFT keypoints, ssfeat's learned descriptor
    "hndesc": {"orienter": "sift", "descriptor": "hndesc"},  # dense map sampled at the keypoints
    "hndesc_patch": {"orienter": "sift", "descriptor": "hndesc_patch"},  # SIFT-oriented patches
    "ssfeat_hndesc_patch": {"orienter": "ssfeat", "descriptor": "hndesc_patch"},  # ssfeat-oriented patches
    "rekd_hndesc": {"detector": "learned", "orienter": "sift", "descriptor": "hndesc"},
    # rotation compensation: image 1 turned upright relative to image 0 before the upright dense descriptor
    "hndesc_rc": {"orienter": "sift", "descriptor": "hndesc", "compensate_rotation": True},
    # affine view synthesis (ASIFT-style, 16 views, 4x the keypoint budget over all views)
    "asift": {"orienter": "sift", "views": True},  # SIFT keypoints and orientation in every view
    "ssfeat_asift": {"orienter": "ssfeat", "views": True},  # same keypoints, ssfeat orientation
}


def _orienter(name: str, estimator: PatchPoseEstimator | None, device):
    if name == "sift":
        return DetectorPose()
    if name == "upright":
        return Upright()
    if name == "kornia":
        return KorniaOrienter()
    if name == "rekd":
        return LearnedDetectorOrienter(device=device)
    est = estimator or pipeline_estimator(device=device)
    if name == "ssfeat":
        return PatchPoseOrienter(est)
    if name == "ssfeat_multi":
        return PatchPoseOrienter(est, k_ori=2)
    if name == "ssfeat_scale":
        return PatchPoseOrienter(est, scale=True)
    if name == "ssfeat_scale_prior":
        return PatchPoseOrienter(est, scale=True, size_prior=True)
    raise ValueError(f"unknown orienter {name!r}")


def _descriptor(name: str, weights: str, sift_first_octave: int, device):
    if name in ("sift", "rootsift"):
        return SIFTDescriptor(root=name == "rootsift", first_octave=sift_first_octave)
    if name in ("hndesc", "hndesc_patch"):
        return LearnedDescriptor(weights, mode="patch" if name == "hndesc_patch" else "dense", device=device)
    raise ValueError(f"unknown descriptor {name!r}")


def check_pipeline_name(name: str) -> str:
    """The base name (``*`` stripped) of a named pipeline.

    Raises:
        ValueError: not a name of :data:`PIPELINES`, optionally with a trailing ``*``.
    """
    base = name.rstrip("*") if isinstance(name, str) else None
    if base not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)} (optionally with a '*')")
    return base


def matching_stages(name: str = "ssfeat", ransac: bool = False) -> tuple[MutualNearestNeighbor | RatioTest, list]:
    """The matcher and filters of a named pipeline (see :func:`build_pipeline`), without building its
    detector, orienter or descriptor: ``(matcher, [filters])``."""
    conf = PIPELINES[check_pipeline_name(name)]
    filters: list = [OrientationFilter()] if name.endswith("*") else []
    if ransac:
        filters.append(RansacHomography())
    return (RatioTest() if conf.get("matcher") == "ratio" else MutualNearestNeighbor()), filters


def build_pipeline(
    name: str = "ssfeat",
    max_keypoints: int = 1000,
    estimator: PatchPoseEstimator | None = None,
    ransac: bool = False,
    descriptor_weights: str = "descriptor",
    sift_first_octave: int = 0,
    compensate_rotation: bool | None = None,
    device: str | torch.device = "cpu",
) -> Pipeline:
    """A named pipeline (see :data:`PIPELINES`; a trailing ``*`` adds :class:`OrientationFilter`).

    Args:
        name: pipeline name.
        max_keypoints: keypoint budget per image (the same for every pipeline).
        estimator: patch-pose estimator for the ssfeat orienters (default: the bundled model).
        ransac: append a :class:`RansacHomography` filter.
        descriptor_weights: weights of the learned descriptor (``hndesc*`` pipelines): bundled
            name, ``.safetensors`` file or descriptor run folder.
        sift_first_octave: ``first_octave`` of the SIFT descriptor (see :class:`SIFTDescriptor`;
            ``-1``: OpenCV's own descriptors, slower).
        compensate_rotation: estimate the rotation of image 1 against image 0 and extract image 1
            turned upright (see :class:`Pipeline`); ``None``: as the named pipeline says (on for
            ``*_rc`` pipelines).
        device: torch device of the networks (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or
            ``"auto"``: CUDA, else MPS, else CPU); a given ``estimator`` is used where it is.
            OpenCV's SIFT and kornia's Hessian detector and dominant-gradient orienter run on the CPU.
    """
    device = check_device(device)
    conf = PIPELINES[check_pipeline_name(name)]
    if compensate_rotation is None:
        compensate_rotation = conf.get("compensate_rotation", False)
    matcher, filters = matching_stages(name, ransac)
    det = conf.get("detector", "sift")
    if det == "learned":
        detector = LearnedDetector(max_keypoints, device=device)
    elif det == "kornia":
        detector = KorniaHessianDetector(max_keypoints)
    else:
        detector = SIFTDetector(max_keypoints)
    if compensate_rotation and estimator is None:
        estimator = pipeline_estimator(device=device)
    return Pipeline(
        detector,
        _orienter(conf["orienter"], estimator, device),
        _descriptor(conf.get("descriptor", "sift"), descriptor_weights, sift_first_octave, device),
        matcher,
        filters,
        name=name,
        views=AffineViews(max_keypoints=4 * max_keypoints) if conf.get("views") else None,
        rotation=RotationEstimator(max_keypoints, estimator) if compensate_rotation else None,
    )


__all__ = [
    "MIN_ROTATION_CONFIDENCE",
    "MIN_ROTATION_DEG",
    "MatchResult",
    "PIPELINES",
    "Pipeline",
    "build_pipeline",
    "check_pipeline_name",
    "matching_stages",
]
