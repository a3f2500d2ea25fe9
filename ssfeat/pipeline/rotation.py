"""Rotation compensation for upright detectors, descriptors and matchers.

Upright methods (a dense descriptor trained on small rotations, LightGlue on SuperPoint, ...) fail
when one image is turned in-plane against the other. :func:`estimate_relative_rotation` measures
that turn from ssfeat's learned orientations, and :func:`extract_rotated` runs any extraction on an
image turned upright, mapping its features back.

The estimate: SIFT keypoints oriented by ssfeat's patch-pose network, described with SIFT on their
oriented patches (rotation invariant) and matched mutually; every putative match votes for the
difference ``orientation1 - orientation0`` of its two keypoints, and the peak of that circular
histogram is the relative rotation (wrong matches spread their votes uniformly). The confidence is
the share of putative matches whose difference lies within ``AGREE_DEG`` of the estimate; chance
level, for unrelated images, is ``2 * AGREE_DEG / 360`` (about 0.08).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..data.images import as_image
from ..features import Features
from ..geometry import inside_image, wrap_angle
from ..inference.descriptor import SIFTDescriptor
from ..inference.pose import PatchPoseEstimator
from .detectors import SIFTDetector
from .matchers import MutualNearestNeighbor
from .orienters import PatchPoseOrienter

AGREE_DEG = 15.0  # a match agrees with the estimate when its orientation difference is this close
N_BINS = 72  # 5 degree bins of the vote histogram
MIN_MATCHES = 8  # fewer putative matches: no estimate (angle 0, confidence 0)
BORDER_PX = 3.0  # features mapped back closer than this to the image border are dropped


@dataclass
class RelativeRotation:
    """``angle``: radians CCW as displayed in ``(-pi, pi]``, image 1 shows image 0's content turned
    counter-clockwise by it; ``confidence`` in ``[0, 1]`` (see the module docstring);
    ``n_matches``: putative matches that voted."""

    angle: float
    confidence: float
    n_matches: int


class RotationEstimator:
    """The relative in-plane rotation of two images from ssfeat's learned orientations.

    Args:
        max_keypoints: SIFT keypoints per image.
        estimator: the patch-pose estimator of the orientations (default: the pipelines' bundled one).
    """

    def __init__(self, max_keypoints: int = 1000, estimator: PatchPoseEstimator | None = None) -> None:
        self.detector = SIFTDetector(max_keypoints)
        self.orienter = PatchPoseOrienter(estimator)
        self.descriptor = SIFTDescriptor()
        self.matcher = MutualNearestNeighbor()

    def features(self, image) -> Features:
        """ssfeat-oriented SIFT features of one image (reusable across the pairs it belongs to)."""
        img = as_image(image)
        return self.descriptor(img, self.orienter(img, self.detector(img)))

    def from_features(self, f0: Features, f1: Features) -> RelativeRotation:
        """The relative rotation of two images from their :meth:`features`."""
        m = self.matcher(f0, f1)
        if len(m) < MIN_MATCHES:
            return RelativeRotation(0.0, 0.0, len(m))
        d = wrap_angle(f1.orientations[m.idx[:, 1]].astype(np.float64) - f0.orientations[m.idx[:, 0]])
        return vote_rotation(d)

    def __call__(self, image0, image1) -> RelativeRotation:
        return self.from_features(self.features(image0), self.features(image1))


def vote_rotation(diffs: np.ndarray) -> RelativeRotation:
    """The peak of the circular histogram of orientation differences ``diffs`` ``(M,)`` (radians),
    refined by the circular mean of the differences within half a bin of it."""
    width = 2 * math.pi / N_BINS
    hist = np.bincount((diffs // width).astype(np.int64) % N_BINS, minlength=N_BINS).astype(np.float64)
    hist = hist + 0.5 * (np.roll(hist, 1) + np.roll(hist, -1))  # smooth: the peak may straddle two bins
    peak = (np.argmax(hist) + 0.5) * width
    near = np.abs(wrap_angle(diffs - peak + math.pi) - math.pi) <= width
    angle = math.atan2(np.sin(diffs[near]).mean(), np.cos(diffs[near]).mean())
    agree = np.abs(wrap_angle(diffs - angle + math.pi) - math.pi) <= math.radians(AGREE_DEG)
    return RelativeRotation(angle, float(agree.mean()), len(diffs))


def estimate_relative_rotation(
    image0, image1, max_keypoints: int = 1000, estimator: PatchPoseEstimator | None = None
) -> tuple[float, float]:
    """The in-plane rotation of ``image1`` relative to ``image0`` (path, array or tensor each).

    Returns:
        ``(angle, confidence)``: radians counter-clockwise as displayed in ``(-pi, pi]`` (image 1 shows
        image 0's content turned counter-clockwise by ``angle``) and the share in ``[0, 1]`` of
        putative matches that agree with it within 15 degrees (chance: about 0.08; ``0.0`` with
        ``angle 0.0`` when fewer than 8 putative matches were found).

    Example:
        >>> angle, conf = estimate_relative_rotation("a.png", "b.png")
        >>> math.degrees(angle)   # e.g. 90.3 when b is a turned a quarter counter-clockwise
    """
    r = RotationEstimator(max_keypoints, estimator)(image0, image1)
    return r.angle, r.confidence


def upright_affine(shape: tuple[int, int], angle: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The ``(2, 3)`` map of image pixels to a canvas on which the image is turned clockwise by
    ``angle`` (radians; undoing a counter-clockwise turn by ``angle``), and the canvas ``(H, W)``
    that holds the whole turned image."""
    H, W = shape
    c, s = math.cos(angle), math.sin(angle)
    R = np.array([[c, -s], [s, c]])  # clockwise on screen by angle (y down)
    corners = np.array([[0, 0], [W - 1, 0], [W - 1, H - 1], [0, H - 1]], np.float64)
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    turned = (corners - centre) @ R.T
    lo, hi = turned.min(0), turned.max(0)
    Wc, Hc = (int(math.ceil(v - 1e-6)) + 1 for v in hi - lo)  # pixel centres span 0..side - 1
    A = np.concatenate([R, (-centre @ R.T - lo)[:, None]], 1)
    return A, (Hc, Wc)


def extract_rotated(extract: Callable[[np.ndarray], Features], image: np.ndarray, angle: float) -> Features:
    """``extract`` run on ``image`` ``(H, W)`` turned clockwise by ``angle`` radians (upright when
    the image shows its content turned counter-clockwise by ``angle``), with the features mapped
    back: positions into ``image``, orientations turned back by ``angle``, sizes unchanged. The
    canvas holds the whole turned image (black outside it); features that map back to within
    ``BORDER_PX`` of the border, or outside, are dropped."""
    if abs(wrap_angle(angle + math.pi) - math.pi) < 1e-9:
        return extract(image)
    A, (Hc, Wc) = upright_affine(image.shape, angle)
    canvas = cv2.warpAffine(np.ascontiguousarray(image, np.float32), A, (Wc, Hc), flags=cv2.INTER_LINEAR)
    f = extract(canvas)
    R = A[:, :2]
    xy = (f.keypoints.astype(np.float64) - A[:, 2]) @ R  # R is orthonormal: its inverse is R.T
    keep = inside_image(xy, image.shape, margin=BORDER_PX)
    f = replace(f, keypoints=xy.astype(np.float32), orientations=f.orientations + np.float32(angle))
    return replace(f.subset(np.flatnonzero(keep)), image_size=image.shape)


__all__ = [
    "RelativeRotation",
    "RotationEstimator",
    "estimate_relative_rotation",
    "extract_rotated",
    "upright_affine",
    "vote_rotation",
]
