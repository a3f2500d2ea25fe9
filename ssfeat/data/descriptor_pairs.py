"""Image-pair synthesis for descriptor learning (HNDesc-style): two perspective crops of one photo,
strong independent photometric augmentation, keypoints in view 0 and their exact positions in view 1.

Each view is a ``P x P`` crop through its own random homography ``H_crop_to_photo`` (the crop's
square maps to a rotated, perspective-distorted quadrilateral of the photo, of side ``P * s`` photo
pixels, ``log2 s`` uniform in ``[-max_log2_zoom, max_log2_zoom]``); view 1's quadrilateral is
centred ``shift * P * s`` photo pixels away from view 0's along each axis (random signs), so the
views overlap only partly. ``H_0to1 = inv(H_1_to_photo) @ H_0_to_photo`` maps view-0 pixels to
view-1 pixels. Pixels whose source lies outside the photo are marked invalid (``valid0``/``valid1``)
and filled by reflection; crops that shrink the photo are antialiased first.

The original HNDesc mixes in a photorealistically *stylised* copy of each photo (a style-transfer
network); here strong photometric jitter on both views stands in for it: gamma, contrast,
brightness, a smooth illumination gradient, blur and noise, drawn independently per view.

Keypoints: the ``max_keypoints`` strongest OpenCV SIFT keypoints (``keypoints="sift"``) or those of
a keypoint source passed in (``"detector"``: e.g. ssfeat's detector, see
:class:`ssfeat.training.tasks.descriptor.DetectorKeypoints`) of view 0 whose correspondence lies
inside view 1 (``border`` px from its edges) on valid pixels of both views; if there are fewer,
random valid points fill up ``min(max_keypoints, random_fill)`` slots. ``kp_valid`` marks the real
slots (the rest is padding).
Every sample is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .homography_pairs import render_view
from .validate import check_fields, check_size


@dataclass
class DescriptorPairConfig:
    size: int = 160  # P: side of both views
    max_log2_zoom: float = 0.35  # photo pixels per view pixel: 2**u, u uniform in [-max, max]
    max_rotation_deg: float = 25.0  # per view, uniform in [-max, max] (HNDesc: 15)
    perspective: float = 0.35  # a side pair shrinks by a factor in [1 - perspective, 1] (HNDesc: 0.4)
    perspective_prob: float = 0.5
    shift: float = 0.1  # view-1 centre offset along each axis, in view sides (HNDesc: 0.1)
    max_keypoints: int = 96  # per pair (padded)
    random_fill: int = 32  # random points allowed when there are too few keypoints
    keypoints: str = "sift"  # "sift", "detector" or "random"
    border: int = 6  # keypoints this close to a view's edge are dropped
    photometric: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_size(self.size, 32)
        check_fields(
            self,
            ("max_log2_zoom", "max_rotation_deg", "perspective", "shift"),
            maxima={"max_log2_zoom": 2.0, "max_rotation_deg": 180.0, "perspective": 0.9, "shift": 1.0},
        )


def _view_homography(center: np.ndarray, side: float, rot: float, persp: tuple[float, float], P: int) -> np.ndarray:
    """``(3, 3)`` map from view pixels to photo pixels: the view's square goes to a quadrilateral
    of side ``side`` centred at ``center``, rotated counter-clockwise (as displayed) by ``rot``, with
    the top/bottom (``persp[0]``) or left/right (``persp[1]``) side pairs shrunk."""
    h = side / 2.0
    # corners (top-left, top-right, bottom-right, bottom-left) of the unrotated quadrilateral
    ft, fb = (persp[0], 1.0) if persp[0] < 1.0 else (1.0, 1.0)
    fl, fr = (persp[1], 1.0) if persp[1] < 1.0 else (1.0, 1.0)
    q = np.array(
        [
            [-h * ft, -h * fl],
            [h * ft, -h * fr],
            [h * fb, h * fr],
            [-h * fb, h * fl],
        ]
    )
    c, s = math.cos(rot), math.sin(rot)
    R = np.array([[c, s], [-s, c]])  # geometry.rotation_matrix: CCW as displayed (y down)
    quad = (q @ R.T + center).astype(np.float32)
    square = np.array([[0, 0], [P - 1, 0], [P - 1, P - 1], [0, P - 1]], np.float32)
    return cv2.getPerspectiveTransform(square, quad).astype(np.float64)


def _apply_h(H: np.ndarray, xy: np.ndarray) -> np.ndarray:
    p = np.concatenate([xy, np.ones((len(xy), 1))], 1) @ H.T
    return p[:, :2] / p[:, 2:3]


def strong_photometric(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Independent per-view jitter: gamma, contrast/brightness, a smooth linear illumination
    gradient, blur (30%) and Gaussian noise. ``(P, P)`` float in ``[0, 1]`` in and out."""
    P = v.shape[0]
    if rng.random() < 0.3:
        v = cv2.GaussianBlur(v, (0, 0), rng.uniform(0.4, 1.5), borderType=cv2.BORDER_REFLECT_101)
    v = np.clip(v, 0, 1) ** math.exp(rng.uniform(-0.6, 0.6))
    yy, xx = np.mgrid[0:P, 0:P].astype(np.float32) / max(P - 1, 1) - 0.5
    a = rng.uniform(-0.5, 0.5, 2)
    shade = 1.0 + a[0] * xx + a[1] * yy
    v = v * shade * rng.uniform(0.5, 1.5) + rng.uniform(-0.25, 0.25)
    v = v + rng.normal(0, rng.uniform(0, 0.04), v.shape)
    return np.clip(v, 0, 1).astype(np.float32)


class DescriptorPairSynthesizer:
    """Pairs of perspective views of ``images`` (list of gray ``(H, W)`` uint8 arrays) with
    keypoint correspondences (see the module docstring).

    Args:
        images: the photos.
        cfg: :class:`DescriptorPairConfig`.
        keypoint_source: with ``cfg.keypoints == "detector"``: ``(view, n) -> (M, 2)`` keypoints
            ``(x, y)`` of a float ``(P, P)`` view, strongest first (``n``: how many are wanted).
    """

    def __init__(
        self,
        images: list[np.ndarray],
        cfg: DescriptorPairConfig | None = None,
        keypoint_source: Callable[[np.ndarray, int], np.ndarray] | None = None,
    ) -> None:
        self.cfg = cfg or DescriptorPairConfig()
        if self.cfg.keypoints not in ("sift", "detector", "random"):
            raise ValueError(f"keypoints must be 'sift', 'detector' or 'random', not {self.cfg.keypoints!r}")
        if self.cfg.keypoints == "detector" and keypoint_source is None:
            raise ValueError('keypoints="detector" needs a keypoint_source (e.g. a detector\'s keypoints)')
        self.keypoint_source = keypoint_source
        P = self.cfg.size
        self.images = [im for im in images if min(im.shape[:2]) >= P // 2]
        if not self.images:
            raise ValueError(f"no image is at least {P // 2}x{P // 2} pixels (half the view size)")
        self._sift = None

    def __len__(self) -> int:
        return len(self.images)

    def _detect(self, v0: np.ndarray, n: int) -> np.ndarray:
        """``(M, 2)`` keypoints of view 0, strongest first."""
        cfg = self.cfg
        if cfg.keypoints == "random":
            return np.zeros((0, 2))
        if cfg.keypoints == "detector":
            return np.asarray(self.keypoint_source(v0, n), np.float64).reshape(-1, 2)
        if self._sift is None:
            self._sift = cv2.SIFT_create()
        kps = sorted(self._sift.detect(np.round(v0 * 255).astype(np.uint8), None), key=lambda k: -k.response)
        xy = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        if len(xy):  # one entry per location (SIFT repeats locations with several orientations)
            _, first = np.unique(np.round(xy, 2), axis=0, return_index=True)
            xy = xy[np.sort(first)]
        return xy

    def sample(self, index: int) -> dict[str, np.ndarray]:
        cfg, P, K = self.cfg, self.cfg.size, self.cfg.max_keypoints
        rng = np.random.default_rng([cfg.seed, 11, index])
        img = self.images[int(rng.integers(len(self.images)))]
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        Hh, Ww = img.shape
        sides, Hs = [], []
        base = None
        for view in range(2):
            side = P * 2.0 ** rng.uniform(-cfg.max_log2_zoom, cfg.max_log2_zoom)
            rot = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
            persp = [1.0, 1.0]
            if rng.random() < cfg.perspective_prob:
                persp[int(rng.integers(2))] = 1.0 - rng.uniform(0, cfg.perspective)
            if view == 0:
                r = side / math.sqrt(2.0)  # half-diagonal: the view fits whatever its rotation
                lo, hi = np.array([r, r]), np.array([Ww - 1 - r, Hh - 1 - r])
                u = rng.uniform(0.0, 1.0, 2)  # drawn always, so that the random stream is fixed
                # the centre is uniform where the view fits; on a small photo it is the photo's centre
                base = np.where(lo <= hi, lo + u * (hi - lo), np.array([(Ww - 1) / 2, (Hh - 1) / 2]))
                center = base
            else:
                center = base + cfg.shift * side * rng.choice([-1.0, 1.0], 2)
            sides.append(side)
            Hs.append(_view_homography(center, side, rot, tuple(persp), P))
        v0, valid0 = render_view(img, Hs[0], P, sides[0] / P)
        v1, valid1 = render_view(img, Hs[1], P, sides[1] / P)
        H_0to1 = np.linalg.inv(Hs[1]) @ Hs[0]
        H_0to1 /= H_0to1[2, 2]

        def usable(xy: np.ndarray) -> np.ndarray:
            if len(xy) == 0:
                return np.zeros(0, bool)
            b = cfg.border
            xy1 = _apply_h(H_0to1, xy)
            inside = np.all((xy >= b) & (xy <= P - 1 - b), 1) & np.all((xy1 >= b) & (xy1 <= P - 1 - b), 1)
            i0 = np.clip(np.round(xy).astype(int), 0, P - 1)
            i1 = np.clip(np.round(xy1).astype(int), 0, P - 1)
            return inside & (valid0[i0[:, 1], i0[:, 0]] > 0) & (valid1[i1[:, 1], i1[:, 0]] > 0)

        kp = self._detect(v0, K)
        kp = kp[usable(kp)][:K]
        n_fill = min(K, cfg.random_fill if cfg.keypoints != "random" else K) - len(kp)
        if n_fill > 0:
            cand = rng.uniform(cfg.border, P - 1 - cfg.border, (8 * n_fill, 2))
            kp = np.concatenate([kp, cand[usable(cand)][:n_fill]])
        n = len(kp)
        kp0 = np.zeros((K, 2), np.float32)
        kp0[:n] = kp
        kp1 = np.zeros((K, 2), np.float32)
        if n:
            kp1[:n] = _apply_h(H_0to1, kp)
        mask = np.zeros(K, bool)
        mask[:n] = True
        if cfg.photometric:
            v0, v1 = strong_photometric(v0, rng), strong_photometric(v1, rng)
        return {
            "image0": v0.astype(np.float32),
            "image1": v1.astype(np.float32),
            "valid0": valid0.astype(np.float32),
            "valid1": valid1.astype(np.float32),
            "H_0to1": H_0to1.astype(np.float32),
            "kp0": kp0,
            "kp1": kp1,
            "kp_valid": mask,
        }

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Stacked samples: images/valid masks ``(B, 1, P, P)`` in ``[0, 1]``, ``H_0to1``
        ``(B, 3, 3)``, ``kp0``/``kp1`` ``(B, K, 2)`` pixel ``(x, y)``, ``kp_valid`` ``(B, K)`` bool."""
        samples = [self.sample(int(i)) for i in indices]
        out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
        for k in ("image0", "image1", "valid0", "valid1"):
            out[k] = out[k][:, None]
        return out
