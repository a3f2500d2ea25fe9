"""Keypoint pairs on similarity views of unlabeled photos, for scale-covariant pose training.

A sample is a photo (longer side reduced to ``max_side``) and a view of it turned by an angle uniform
in ``[0, 2pi)`` and zoomed by ``2**u``, ``u`` uniform in ``[-max_log2_zoom, max_log2_zoom]``,
antialiased, cropped inside the turned photo, with a photometric change (:func:`similarity_view`).
Keypoints (SIFT and uniformly random points of the photo) are carried to the view by the exact
homography, and log-polar patches are read around them in both images. Every sample is a pure
function of ``(seed, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..logpolar import LogPolarGrid, ScaleSpace, sample_logpolar
from .images import photometric_change, to_uint8
from .validate import check_fields


@dataclass
class ViewPairConfig:
    """How view pairs and their keypoints are drawn."""

    max_log2_zoom: float = 2.0  # the view zooms the photo by 2**u, u uniform in [-max, max]
    max_side: int = 512  # photos are reduced to this longer side first
    keypoints: int = 32  # keypoint pairs per view pair
    sift_fraction: float = 0.75  # of them at SIFT keypoints of the photo, the others uniformly random
    noise: float = 0.01  # std of the photometric change's Gaussian noise
    # std in pixels of a random offset of each keypoint in both images (keypoints detected
    # independently in two views do not fall on exactly corresponding points)
    jitter: float = 0.7
    # scale pairs: cut both images to random rectangles (the image sizes and border distances then
    # say nothing about the zoom; without it the scale network learns to read them)
    crop: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, ("max_log2_zoom", "noise", "jitter"), (), ("sift_fraction",), maxima={"max_log2_zoom": 2.0})
        if isinstance(self.keypoints, bool) or not isinstance(self.keypoints, int) or self.keypoints < 1:
            raise ValueError(f"keypoints must be an int >= 1, got {self.keypoints!r}")
        if isinstance(self.max_side, bool) or not isinstance(self.max_side, int) or self.max_side < 64:
            raise ValueError(f"max_side must be an int >= 64, got {self.max_side!r}")


def similarity_view(
    image: np.ndarray, max_log2_zoom: float, noise: float, max_side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo and one similarity view of it.

    The view shows the photo turned counter-clockwise (as displayed) about its centre by an angle
    uniform in ``[0, 2pi)`` and zoomed by ``2**u``, ``u`` uniform in ``[-max_log2_zoom,
    max_log2_zoom]`` (antialiased where it shrinks), cropped to the largest centred square inside the
    turned photo (at most ``2 * max_side`` px a side), with a photometric change. The view has no
    uncovered pixels and no edge of the photo: no border moves with the content, as none does in
    real pairs.

    Args:
        image: ``(H, W)`` float photo in ``[0, 1]``.

    Returns:
        ``(reference, view, H_0to1)``: uint8 images (the reference is the photo with its longer side
        reduced to ``max_side``) and the ``(3, 3)`` homography from reference to view pixels.

    Raises:
        ValueError: the photo is blank or under 64 px a side after the reduction.
    """
    if float(image.max()) - float(image.min()) < 2 / 255:
        raise ValueError("blank (under 2 gray levels from darkest to brightest)")
    h, w = image.shape
    f = min(1.0, max_side / max(h, w))
    if f < 1.0:
        image = cv2.resize(image, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        h, w = image.shape
    if min(h, w) < 64:
        raise ValueError(f"{w}x{h} px: smaller than 64 px")
    a = rng.uniform(0.0, 2 * math.pi)
    zoom = 2.0 ** rng.uniform(-max_log2_zoom, max_log2_zoom)
    side = int(min(2 * max_side, zoom * min(h, w) / (abs(math.cos(a)) + abs(math.sin(a))) - 2))
    side = max(side, 8)
    R = zoom * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # CCW as displayed
    c_photo, c_view = np.array([(w - 1) / 2, (h - 1) / 2]), np.full(2, (side - 1) / 2)
    M = np.concatenate([R, (c_view - R @ c_photo)[:, None]], 1)
    src = cv2.GaussianBlur(image, (0, 0), 0.5 * math.sqrt(1 / zoom**2 - 1)) if zoom < 1.0 else image
    view = cv2.warpAffine(src, M, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return to_uint8(image), photometric_change(view, rng, noise), np.vstack([M, [0.0, 0.0, 1.0]])


def keypoints_in_both(
    ref: np.ndarray,
    view: np.ndarray,
    H_0to1: np.ndarray,
    n: int,
    sift_fraction: float,
    rng: np.random.Generator,
    sift: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``n`` keypoints ``(n, 2)`` of ``ref`` (SIFT, then uniformly random) that land inside
    ``view``, their positions ``(n, 2)`` in ``view`` and their sizes ``(n,)`` in
    ``ref`` (SIFT's; NaN for the random points). ``sift``: the SIFT keypoints
    of ``ref`` (:func:`sift_keypoints`) if already detected."""
    h, w = ref.shape
    n_sift = int(round(n * sift_fraction))
    pts, sizes = sift_keypoints(ref) if sift is None else sift
    if len(pts) > n_sift:
        pick = rng.choice(len(pts), n_sift, replace=False)
        pts, sizes = pts[pick], sizes[pick]
    rand = rng.uniform((0, 0), (w - 1, h - 1), (4 * n, 2))
    pts = np.concatenate([pts, rand])
    sizes = np.concatenate([sizes, np.full(len(rand), np.nan)])
    p1 = cv2.perspectiveTransform(pts[None], H_0to1)[0]
    hv, wv = view.shape
    inside = (p1[:, 0] >= 2) & (p1[:, 1] >= 2) & (p1[:, 0] <= wv - 3) & (p1[:, 1] <= hv - 3)
    keep = np.flatnonzero(inside)[:n]
    return pts[keep], p1[keep], sizes[keep]


def sift_keypoints(image: np.ndarray, n: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(K, 2)`` and sizes ``(K,)`` of up to ``n`` OpenCV SIFT keypoints of a uint8 image."""
    kps = cv2.SIFT_create(nfeatures=n).detect(image, None)
    return np.array([k.pt for k in kps], np.float64).reshape(-1, 2), np.array([k.size for k in kps], np.float64)


def _random_crop(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random rectangle of ``image`` (each side 1/2 to all of the image's, at least 32 px) and the
    ``(x, y)`` offset of its corner."""
    h, w = image.shape
    ch, cw = (min(n, max(32, int(n * rng.uniform(0.5, 1.0)))) for n in (h, w))
    y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    return image[y0 : y0 + ch, x0 : x0 + cw], np.array([x0, y0], np.float64)


def _translation(t: np.ndarray) -> np.ndarray:
    return np.array([[1.0, 0.0, t[0]], [0.0, 1.0, t[1]], [0.0, 0.0, 1.0]])


class ViewPairSynthesizer:
    """Batches of log-polar patch pairs at corresponding keypoints of photo / similarity-view pairs.

    Args:
        images: ``(H, W)`` uint8 or float photos.
        grid: log-polar layout of the patches.
        cfg: how pairs are drawn.
    """

    def __init__(self, images: list[np.ndarray], grid: LogPolarGrid, cfg: ViewPairConfig | None = None) -> None:
        if not images:
            raise ValueError("ViewPairSynthesizer needs at least one photo")
        self.images = [im if im.dtype != np.uint8 else im.astype(np.float32) / 255.0 for im in images]
        self.grid, self.cfg = grid, cfg or ViewPairConfig()
        self._sift: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # SIFT keypoints of each reduced photo, detected once

    def __len__(self) -> int:
        return len(self.images)

    def views(
        self, index: int, crop: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Pair ``index``: float ``(reference, view)`` images, keypoints ``p0``, ``p1`` ``(n, 2)``, their
        sizes ``(n,)`` in the reference, and the view's ``log2_zoom`` and ``rotation`` (radians CCW as
        displayed) relative to the reference. With ``crop``, both images are cut to random
        rectangles (each side 1/2 to all of the image's, anywhere in it), so that neither the image
        sizes nor the distances to the borders follow the zoom."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, index])
        i = int(rng.integers(len(self.images)))
        ref, view, H = similarity_view(self.images[i], cfg.max_log2_zoom, cfg.noise, cfg.max_side, rng)
        if i not in self._sift:
            self._sift[i] = sift_keypoints(ref)
        sift = self._sift[i]
        if crop:
            crng = np.random.default_rng([cfg.seed, index, 3])
            ref, o0 = _random_crop(ref, crng)
            view, o1 = _random_crop(view, crng)
            H = _translation(-o1) @ H @ _translation(o0)
            sift = (sift[0] - o0, sift[1])
        p0, p1, sizes = keypoints_in_both(ref, view, H, cfg.keypoints, cfg.sift_fraction, rng, sift)
        p0 = p0 + rng.normal(0.0, cfg.jitter, p0.shape)
        p1 = p1 + rng.normal(0.0, cfg.jitter, p1.shape)
        random_points = np.isnan(sizes)  # their size: log-uniform in [2, 16] px
        sizes[random_points] = np.exp2(np.random.default_rng([cfg.seed, index, 2]).uniform(1, 4, random_points.sum()))
        A = H[:2, :2] / H[2, 2]
        log2_zoom = 0.5 * math.log2(abs(np.linalg.det(A)))
        rotation = math.atan2(-A[1, 0], A[0, 0]) % (2 * math.pi)  # CCW as displayed: x' = c x + s y, y' = -s x + c y
        return ref.astype(np.float32) / 255.0, view.astype(np.float32) / 255.0, p0, p1, sizes, log2_zoom, rotation

    def sample(self, index: int) -> dict[str, torch.Tensor]:
        """Pair ``index``: ``lp0``, ``lp1`` ``(n, R, n_angles)`` log-polar patches, ``log2_zoom`` and
        ``rotation`` ``(n,)`` (view relative to photo, radians CCW as displayed)."""
        ref, view, p0, p1, _, log2_zoom, rotation = self.views(index, crop=self.cfg.crop)
        L = self.grid.rings_per_octave
        n = len(p0)
        return {
            "lp0": sample_logpolar(ScaleSpace(ref, L), p0, self.grid),
            "lp1": sample_logpolar(ScaleSpace(view, L), p1, self.grid),
            "log2_zoom": torch.full((n,), log2_zoom),
            "rotation": torch.full((n,), rotation),
        }

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """The samples of ``indices`` concatenated along the first axis."""
        parts = [self.sample(int(i)) for i in indices]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


__all__ = ["ViewPairConfig", "ViewPairSynthesizer", "keypoints_in_both", "sift_keypoints", "similarity_view"]
