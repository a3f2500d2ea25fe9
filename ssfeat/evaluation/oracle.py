"""Ground-truth poses for the matching benchmark's ``oracle`` / ``oracle_scale`` rows: the ``sift``
pipeline with the orientations (and sizes) a perfect pose estimator would give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..features import Features
from ..geometry import local_rotation_scale, warp_xy
from ..pipeline import Pipeline

ORACLES = ("oracle", "oracle_scale")


def oracle_orientations(keypoints1: np.ndarray, H_0to1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth poses of image-1 keypoints relative to upright image-0 keypoints.

    Args:
        keypoints1: ``(N, 2)`` image-1 keypoints (x, y).
        H_0to1: ``(3, 3)`` homography from image 0 to image 1.

    Returns:
        ``theta`` and ``log2_scale``, both ``(N,)`` float32: the local rotation (radians, CCW as
        displayed) and log2 scale of ``H_0to1`` (:func:`~ssfeat.geometry.local_rotation_scale`) at
        each keypoint's preimage ``H_0to1^-1 x1``; 0 where the preimage is at infinity.
    """
    theta, log2s = np.zeros(len(keypoints1)), np.zeros(len(keypoints1))
    if len(keypoints1):
        x0 = warp_xy(keypoints1.astype(np.float64), np.linalg.inv(H_0to1))
        ok = np.isfinite(x0).all(1)
        if ok.any():
            t, ls = local_rotation_scale(torch.from_numpy(x0[ok]), torch.from_numpy(H_0to1))
            theta[ok], log2s[ok] = t.numpy(), ls.numpy()
    return theta.astype(np.float32), log2s.astype(np.float32)


class OracleFeatures:
    """Features of the ``oracle`` / ``oracle_scale`` rows (see :mod:`ssfeat.evaluation.matching`).

    The detector, descriptor and matcher are those of ``sift_pipeline`` (the ``sift`` pipeline of
    the same benchmark), so that only the poses differ from it. Detections are cached per image in
    ``detections`` (a dict that several oracles may share) and image-0 features per image.
    """

    def __init__(self, sift_pipeline: Pipeline, scale: bool = False, detections: dict | None = None) -> None:
        self.detector, self.descriptor = sift_pipeline.detector, sift_pipeline.descriptor
        self.matcher, self.scale = sift_pipeline.matcher, scale
        self._detected: dict[Path, Features] = {} if detections is None else detections
        self._image0: dict[Path, Features] = {}

    def _detect(self, path: Path, image: np.ndarray) -> Features:
        if path not in self._detected:
            self._detected[path] = self.detector(image)
        return self._detected[path].subset(np.arange(len(self._detected[path])))  # a copy

    def __call__(self, pair, im0: np.ndarray, im1: np.ndarray) -> tuple[Features, Features]:
        """``(features of image 0, features of image 1)`` of one pair (a matching-benchmark
        ``ImagePair``: ``path0``, ``path1``, ``H_0to1``), from its ``(H0, W0)`` and ``(H1, W1)`` float
        images."""
        f0 = self._detect(pair.path0, im0)
        size = float(np.median(f0.scales)) if len(f0) else 1.0  # image 0's median SIFT size
        if pair.path0 not in self._image0:
            f0.orientations = np.zeros(len(f0), np.float32)
            if self.scale:
                f0.scales = np.full(len(f0), size, np.float32)
            self._image0[pair.path0] = self.descriptor(im0, f0)
        f1 = self._detect(pair.path1, im1)
        f1.orientations, log2s = oracle_orientations(f1.keypoints, pair.H_0to1)
        if self.scale:
            f1.scales = (size * np.exp2(log2s)).astype(np.float32)
        return self._image0[pair.path0], self.descriptor(im1, f1)


__all__ = ["ORACLES", "OracleFeatures", "oracle_orientations"]
