"""Matchers ``(Features, Features) -> Matches`` and filters ``(Features, Features, Matches) -> Matches``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..features import Features
from ..geometry import TWO_PI, angle_diff, wrap_angle


@dataclass
class Matches:
    """``idx`` ``(M, 2)`` int64 pairs (index into features0, index into features1); ``distances``
    ``(M,)`` descriptor distances; ``H_0to1`` the homography a RANSAC filter fitted (else ``None``)."""

    idx: np.ndarray
    distances: np.ndarray
    H_0to1: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, keep: np.ndarray) -> Matches:
        return Matches(self.idx[keep], self.distances[keep], self.H_0to1)

    @classmethod
    def empty(cls) -> Matches:
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))


def _descs(f0: Features, f1: Features) -> tuple[torch.Tensor, torch.Tensor] | None:
    if f0.descriptors is None or f1.descriptors is None:
        raise ValueError("matching needs descriptors: the pipeline has no descriptor stage")
    if len(f0) == 0 or len(f1) == 0:
        return None
    return torch.from_numpy(f0.descriptors), torch.from_numpy(f1.descriptors)


class MutualNearestNeighbor:
    """Mutual nearest neighbours in L2 descriptor distance (kornia ``match_mnn``)."""

    def __call__(self, f0: Features, f1: Features) -> Matches:
        from kornia.feature import match_mnn

        d = _descs(f0, f1)
        if d is None:
            return Matches.empty()
        dist, idx = match_mnn(*d)
        return Matches(idx.numpy().astype(np.int64), dist[:, 0].numpy())


class RatioTest:
    """Lowe's ratio test (nearest / second nearest < ``ratio``), mutual by default (kornia
    ``match_smnn`` / ``match_snn``)."""

    def __init__(self, ratio: float = 0.8, mutual: bool = True) -> None:
        self.ratio, self.mutual = ratio, mutual

    def __call__(self, f0: Features, f1: Features) -> Matches:
        from kornia.feature import match_smnn, match_snn

        d = _descs(f0, f1)
        if d is None or min(len(f0), len(f1)) < 2:
            return Matches.empty()
        dist, idx = (match_smnn if self.mutual else match_snn)(*d, self.ratio)
        return Matches(idx.numpy().astype(np.int64), dist[:, 0].numpy())


class OrientationFilter:
    """Keep matches whose relative orientation ``o1 - o0`` lies within ``tolerance_deg`` of the
    dominant one (the peak of a smoothed circular histogram of all relative orientations, refined by
    a circular mean). For a homography the relative rotation is nearly constant over the image, so
    this removes matches whose poses disagree (ReKD's '*' filter, with continuous angles)."""

    def __init__(self, tolerance_deg: float = 30.0, bins: int = 36) -> None:
        self.tol = math.radians(tolerance_deg)
        self.bins = bins

    def dominant(self, delta: np.ndarray) -> float:
        """The dominant angle (radians) of ``delta`` ``(M,)``."""
        b = self.bins
        h = np.bincount(np.floor(wrap_angle(delta) / TWO_PI * b).astype(int) % b, minlength=b).astype(float)
        h = h + 0.5 * (np.roll(h, 1) + np.roll(h, -1))
        centre = (np.argmax(h) + 0.5) * TWO_PI / b
        near = np.abs(angle_diff(delta, centre)) <= self.tol
        return float(wrap_angle(centre + np.angle(np.exp(1j * angle_diff(delta[near], centre)).mean())))

    def __call__(self, f0: Features, f1: Features, m: Matches) -> Matches:
        if len(m) == 0:
            return m
        delta = f1.orientations[m.idx[:, 1]].astype(np.float64) - f0.orientations[m.idx[:, 0]]
        return m.subset(np.abs(angle_diff(delta, self.dominant(delta))) <= self.tol)


class RansacHomography:
    """OpenCV RANSAC homography; keeps the inliers and stores the fitted ``H_0to1`` (fewer than 4
    matches or no model found: no matches, ``H_0to1 = None``).

    A fit supported by fewer than ``min_inliers`` inliers, or by fewer than ``min_inlier_ratio`` of
    the matches, is a failure (:meth:`failure`): RANSAC finds a handful of chance inliers among any
    few hundred wrong matches. The filter then keeps its inliers but stores ``H_0to1 = None``.
    """

    def __init__(
        self,
        threshold: float = 3.0,
        max_iters: int = 5000,
        confidence: float = 0.9995,
        min_inliers: int = 15,
        min_inlier_ratio: float = 0.05,
    ) -> None:
        if min_inliers < 4:
            raise ValueError(f"min_inliers must be >= 4 (a homography has 4 point pairs), got {min_inliers}")
        if not 0.0 <= min_inlier_ratio <= 1.0:
            raise ValueError(f"min_inlier_ratio must be a fraction in [0, 1], got {min_inlier_ratio}")
        self.threshold, self.max_iters, self.confidence = threshold, max_iters, confidence
        self.min_inliers, self.min_inlier_ratio = min_inliers, min_inlier_ratio

    def failure(self, H: np.ndarray | None, inliers: np.ndarray) -> str | None:
        """Why the fit ``(H, inliers)`` of :meth:`fit` is not a homography to trust, or None."""
        n, m = int(inliers.sum()), len(inliers)
        if H is None:
            return f"no homography fits the {m} matches" if m >= 4 else f"{m} matches, a homography needs 4"
        if n < self.min_inliers:
            return f"{n} RANSAC inliers of {m} matches, fewer than min_inliers={self.min_inliers}"
        if n < self.min_inlier_ratio * m:
            return f"{n} RANSAC inliers of {m} matches ({n / m:.1%}), under min_inlier_ratio={self.min_inlier_ratio:g}"
        return None

    def fit(self, pts0: np.ndarray, pts1: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """``(H_0to1 or None, inlier mask (M,))`` for ``(M, 2)`` point arrays."""
        if len(pts0) < 4:
            return None, np.zeros(len(pts0), bool)
        H, mask = cv2.findHomography(
            pts0.astype(np.float64),
            pts1.astype(np.float64),
            cv2.RANSAC,
            self.threshold,
            maxIters=self.max_iters,
            confidence=self.confidence,
        )
        if H is None or not np.isfinite(H).all():
            return None, np.zeros(len(pts0), bool)
        return H / H[2, 2], mask.ravel().astype(bool)

    def __call__(self, f0: Features, f1: Features, m: Matches) -> Matches:
        H, inl = self.fit(f0.keypoints[m.idx[:, 0]], f1.keypoints[m.idx[:, 1]])
        out = m.subset(inl)
        out.H_0to1 = None if self.failure(H, inl) else H
        return out


__all__ = ["Matches", "MutualNearestNeighbor", "OrientationFilter", "RansacHomography", "RatioTest"]
