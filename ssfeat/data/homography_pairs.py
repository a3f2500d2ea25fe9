"""Image-pair synthesis for the keypoint detector: two views of a photo related by an exact affine
homography (continuous rotation, scale and shear that all take effect), photometric augmentation of
both views, one input range ``[0, 1]``.

View 0 is an axis-aligned ``P x P`` crop of the photo centred at ``c``. View 1 shows the same
content through ``A`` (rotation by ``rotation`` counter-clockwise, magnification ``2**log2_scale``,
shear): the view-1 pixel ``x1 = c_P + A (x0 - c_P)`` shows what view-0 pixel ``x0`` shows
(``c_P`` the crop centre), i.e. ``H_0to1 = T(c_P) A T(-c_P)``. Pixels of a view whose source lies
outside the photo are marked invalid (``valid0``/``valid1``) and filled by reflection. Every sample
is a pure function of ``(seed, index)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..geometry import linear_rotation_scale
from .synthesis import photometric_jitter
from .validate import check_fields, check_size


@dataclass
class HomographyPairConfig:
    size: int = 128  # P: side of both views
    max_rotation_deg: float = 180.0  # rotation uniform in [-max, max]
    max_log2_scale: float = 0.5  # log2 magnification uniform in [-max, max]
    max_shear: float = 0.15  # shear coefficient uniform in [-max, max]
    photometric: bool = True  # independent gamma/contrast/brightness/noise on both views
    seed: int = 0

    def __post_init__(self) -> None:
        check_size(self.size, 32)
        check_fields(
            self,
            ("max_rotation_deg", "max_log2_scale", "max_shear"),
            maxima={"max_rotation_deg": 180.0, "max_log2_scale": 2.0, "max_shear": 1.0},
        )


def pair_affine(rotation: float, log2_scale: float, shear: float) -> np.ndarray:
    """``(2, 2)`` map of view-0 offsets to view-1 offsets: content rotated CCW (as displayed) by
    ``rotation``, sheared, magnified by ``2**log2_scale``."""
    c, s = math.cos(rotation), math.sin(rotation)
    R = np.array([[c, s], [-s, c]])  # geometry.rotation_matrix
    Sh = np.array([[1.0, shear], [0.0, 1.0]])
    return (2.0**log2_scale) * R @ Sh


def render_view(img: np.ndarray, M: np.ndarray, P: int, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """A ``P x P`` view of ``img`` whose pixel ``x`` shows photo pixel ``M x`` (``M`` ``(2, 3)``
    affine or ``(3, 3)`` homography), antialiased by a Gaussian blur when the view shrinks the photo
    by ``shrink`` (photo pixels per view pixel) > 1; borders reflected. Returns the view and its
    validity mask (1 where the source pixel lies inside the photo)."""
    src = img
    if shrink > 1.0:
        src = cv2.GaussianBlur(img, (0, 0), 0.5 * math.sqrt(shrink**2 - 1), borderType=cv2.BORDER_REFLECT_101)
    warp = cv2.warpPerspective if M.shape[0] == 3 else cv2.warpAffine
    v = warp(src, M, (P, P), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
    ones = np.ones_like(img)
    valid = warp(ones, M, (P, P), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0.0)
    return v, valid


class HomographyPairSynthesizer:
    """Pairs of views of ``images`` (list of gray ``(H, W)`` uint8 or float arrays)."""

    def __init__(self, images: list[np.ndarray], cfg: HomographyPairConfig | None = None) -> None:
        self.cfg = cfg or HomographyPairConfig()
        P = self.cfg.size
        self.images = [im for im in images if min(im.shape[:2]) >= P]
        if not self.images:
            raise ValueError(f"no image is at least {P}x{P} pixels (the view size)")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> dict[str, np.ndarray | float]:
        cfg, P = self.cfg, self.cfg.size
        rng = np.random.default_rng([cfg.seed, 7, index])
        img = self.images[int(rng.integers(len(self.images)))]
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        H, W = img.shape
        half = (P - 1) / 2.0
        c = np.array([rng.uniform(half, W - 1 - half), rng.uniform(half, H - 1 - half)])
        rot = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
        ls = rng.uniform(-cfg.max_log2_scale, cfg.max_log2_scale)
        sh = rng.uniform(-cfg.max_shear, cfg.max_shear)
        A = pair_affine(rot, ls, sh)
        cP = np.array([half, half])
        H_0to1 = np.eye(3)
        H_0to1[:2, :2] = A
        H_0to1[:2, 2] = cP - A @ cP
        # view 0: axis-aligned crop; photo pixel of view-0 pixel x0 is x0 - cP + c
        x0, y0 = int(round(c[0] - half)), int(round(c[1] - half))
        v0 = img[y0 : y0 + P, x0 : x0 + P]
        off0 = np.array([x0, y0], dtype=np.float64)
        # view 1: photo pixel of view-1 pixel x1 is off0 + A^-1 (x1 - cP) + cP
        Ainv = np.linalg.inv(A)
        M = np.concatenate([Ainv, (off0 + cP - Ainv @ cP)[:, None]], 1)
        v1, valid1 = render_view(img, M, P, 1.0 / math.sqrt(abs(np.linalg.det(A))))
        v0 = np.ascontiguousarray(v0)
        if cfg.photometric:
            v0, v1 = photometric_jitter(v0, rng), photometric_jitter(v1, rng)
        return {
            "image0": v0.astype(np.float32),
            "image1": v1.astype(np.float32),
            "valid0": np.ones((P, P), np.float32),
            "valid1": valid1.astype(np.float32),
            "H_0to1": H_0to1.astype(np.float32),
            "rotation": np.float32(linear_rotation_scale(torch.from_numpy(A))[0]),
        }

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Stacked samples: images/valid masks ``(B, 1, P, P)``, ``H_0to1`` ``(B, 3, 3)``,
        ``rotation`` ``(B,)`` (the local rotation of ``H_0to1``, radians CCW in ``[0, 2pi)``)."""
        samples = [self.sample(int(i)) for i in indices]
        out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
        for k in ("image0", "image1", "valid0", "valid1"):
            out[k] = out[k][:, None]
        return out
