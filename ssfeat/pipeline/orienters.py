"""Pipeline orienters ``(image, Features) -> Features``: keep the detector's pose, upright, the learned
detector's orientation, kornia's dominant gradient, or ssfeat's patch pose."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..features import Features, concat_features
from ..inference.detector import KeypointDetector
from ..inference.pose import PatchPoseEstimator
from ..patches import sample_patches

# Bundled model the ssfeat orienters use by default, in a single pass (no adaptive C4): on SIFT
# keypoints it matches as well as the larger "patchpose_fast" model (docs/benchmarks.md) at about half the
# network time, and the matching time budget holds.
PIPELINE_MODEL = "patchpose_tiny"


def pipeline_estimator(weights: str | Path | None = None, device: str | torch.device = "cpu") -> PatchPoseEstimator:
    """The estimator of the ssfeat orienters: ``weights`` (bundled name, file or run; default
    :data:`PIPELINE_MODEL`) in a single pass, whatever rotation averaging the weights store (pass
    your own :class:`PatchPoseEstimator` to a pipeline for C4), on ``device``."""
    return PatchPoseEstimator.from_pretrained(weights or PIPELINE_MODEL, device=device, c4=False)


class DetectorPose:
    """Pass-through: keep the detector's own orientation and scale (for SIFT: SIFT's)."""

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        return feats


class Upright:
    """Orientation 0 for every feature (upright descriptors); scale unchanged."""

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        return replace(feats, orientations=np.zeros(len(feats), np.float32))


class LearnedDetectorOrienter:
    """Orientation from the equivariant detector's dense histogram map at any keypoints (read at
    the pyramid level matching each feature's size); scale unchanged."""

    def __init__(self, weights: str = "detector", detector=None, device: str | torch.device = "cpu") -> None:
        self.detector = detector or KeypointDetector.from_pretrained(weights, device=device)

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        ori = self.detector.orientations(image, feats.keypoints, feats.scales)
        return replace(feats, orientations=ori)


class KorniaOrienter:
    """kornia's ``LAFOrienter`` with ``PatchDominantGradientOrientation`` (SIFT-like gradient
    histogram) on a patch covering ``mr_size`` times the feature size; scale unchanged."""

    def __init__(self, patch_size: int = 32, mr_size: float = 4.5) -> None:
        from kornia.feature import LAFOrienter

        self.op = LAFOrienter(patch_size)
        self.mr_size = mr_size

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        laf = feats.to_laf(self.mr_size)
        out = self.op(laf, torch.from_numpy(np.ascontiguousarray(image))[None, None])
        f = Features.from_laf(out, feats.image_size, self.mr_size)
        return replace(feats, orientations=f.orientations)


class PatchPoseOrienter:
    """ssfeat patch pose at each keypoint.

    Orientation only (default): the orientation network reads an axis-aligned window around every
    keypoint of ``support_factor`` times the detector's feature size (so the window follows the
    detector's scale), or, with ``support`` set, a fixed ``support`` x ``support`` pixel window.

    With ``scale=True`` both size and orientation are ssfeat's, scale-covariant
    (:meth:`PatchPoseEstimator.keypoint_poses`): the scale network gives each keypoint a size from its
    position alone (or, with ``size_prior``, refines the detector's size) and the orientation network
    reads a window proportional to that size.

    Args:
        estimator: the patch-pose estimator (default: the bundled models).
        support_factor: window side as a multiple of the feature size (default 12: about the region
            OpenCV's SIFT descriptor reads).
        support: fixed window side in pixels instead (``None``: use ``support_factor``).
        scale: also set the feature size (see above); ``support`` and ``support_factor`` then do not
            apply.
        size_prior: with ``scale``, refine the detector's size instead of ignoring it.
        k_ori, k_scale: multi-pose (paper Table 2): one feature per each of the ``k_ori`` strongest
            orientation modes at the strongest size, and (with ``scale``) one per each further of
            the ``k_scale`` strongest size modes, with the strongest orientation read at that size.
        min_ratio: a secondary mode is emitted only if its histogram peak is at least this fraction of
            the strongest one (SIFT uses 0.8 for its secondary orientations).
    """

    def __init__(
        self,
        estimator: PatchPoseEstimator | None = None,
        support_factor: float = 12.0,
        support: float | None = None,
        scale: bool = False,
        size_prior: bool = False,
        k_ori: int = 1,
        k_scale: int = 1,
        min_ratio: float = 0.5,
    ) -> None:
        if k_ori < 1 or k_scale < 1:
            raise ValueError("k_ori and k_scale must be >= 1")
        self.estimator = estimator or pipeline_estimator()
        if scale and self.estimator.scale_model is None:
            raise ValueError("scale=True needs an estimator with a scale model")
        self.support_factor, self.support, self.scale, self.size_prior = support_factor, support, scale, size_prior
        self.k_ori, self.k_scale, self.min_ratio = k_ori, k_scale if scale else 1, min_ratio

    def patches(self, image: np.ndarray, feats: Features) -> torch.Tensor:
        """The ``(N, 1, P, P)`` network inputs of the orientation-only mode."""
        if self.support is not None:
            if min(image.shape) < self.support:
                h, w = image.shape
                raise ValueError(f"the {w}x{h} image is smaller than the {self.support:g} px patch")
            return self.estimator.extract(image, feats.keypoints, self.support)
        P = self.estimator.config.patch_size
        A = (self.support_factor * feats.scales / P)[:, None, None] * np.eye(2)
        return sample_patches(image, feats.keypoints, A, P)[:, None]

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        k = max(self.k_ori, self.k_scale)
        if self.scale:
            p = self.estimator.keypoint_poses(image, feats.keypoints, feats.scales if self.size_prior else None, k)
            ori, ori_s, size, size_s = (t.numpy() for t in (p.orientation, p.ori_score, p.size, p.size_score))
            ori_at_size = p.ori_at_size.numpy()
        else:
            t = self.estimator.topk(self.patches(image, feats), k)
            ori, ori_s = t.orientation.cpu().numpy(), t.ori_score.cpu().numpy()
            size, size_s = None, np.ones((len(feats), 1))
        parts = []
        for i in range(self.k_ori):
            for j in range(self.k_scale):
                if i and j:  # further sizes carry the strongest orientation read at their own size
                    continue
                ok = (ori_s[:, i] >= self.min_ratio * ori_s[:, 0]) & (size_s[:, j] >= self.min_ratio * size_s[:, 0])
                idx = np.flatnonzero(ok) if i or j else np.arange(len(feats))
                f = feats.subset(idx)
                f.orientations = (ori[idx, i] if j == 0 else ori_at_size[idx, j]).astype(np.float32)
                if size is not None:
                    f.scales = size[idx, j].astype(np.float32)
                parts.append(f)
        return concat_features(parts)


__all__ = [
    "DetectorPose",
    "KorniaOrienter",
    "LearnedDetectorOrienter",
    "PIPELINE_MODEL",
    "PatchPoseOrienter",
    "Upright",
    "pipeline_estimator",
]
