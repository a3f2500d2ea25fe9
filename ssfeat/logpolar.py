"""Antialiased log-polar sampling around keypoints: a zoom of the image is a shift along the ring
(log-radius) axis and a rotation a circular shift along the angle axis.

Ring ``i`` has radius ``r_i = min_radius * 2**(i / rings_per_octave)`` pixels; angle ``j`` is
``2 pi j / n_angles`` radians, counter-clockwise as displayed (the direction ``(cos a, -sin a)`` in
pixel coordinates, y down). If view 1 shows view 0 magnified by ``2**u`` and turned counter-clockwise
by ``theta`` about a keypoint, then ``lp1[i, j] = lp0[i - u * rings_per_octave, j - theta / (2 pi /
n_angles)]`` for the rings both views resolve.

Each ring is read from a Gaussian scale space at the blur its sample spacing needs (the rule of
:mod:`ssfeat.patches`: ``sigma = 0.5 * sqrt(step**2 - 1)`` for samples ``step`` pixels apart), so a
ring of radius ``r`` sees the image at a blur proportional to ``r`` and the sampling commutes with
zoom down to the pixel grid. Samples beyond the image border take their ring's mean (see
:func:`sample_logpolar`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LogPolarGrid:
    """Geometry of a log-polar patch ``(n_rings, n_angles)``."""

    n_rings: int = 33
    rings_per_octave: int = 4
    n_angles: int = 32
    min_radius: float = 0.75  # pixels; the largest ring is min_radius * 2**((n_rings - 1) / rings_per_octave)

    def __post_init__(self) -> None:
        for name in ("n_rings", "rings_per_octave", "n_angles"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"LogPolarGrid.{name} must be an int >= 1, got {v!r}")
        if self.n_angles < 4:
            raise ValueError(f"LogPolarGrid.n_angles must be >= 4, got {self.n_angles}")
        if not (isinstance(self.min_radius, (int, float)) and math.isfinite(self.min_radius) and self.min_radius > 0):
            raise ValueError(f"LogPolarGrid.min_radius must be a positive number of pixels, got {self.min_radius!r}")

    def radii(self) -> np.ndarray:
        """``(n_rings,)`` ring radii in pixels."""
        return self.min_radius * np.exp2(np.arange(self.n_rings) / self.rings_per_octave)

    @property
    def max_radius(self) -> float:
        return float(self.radii()[-1])

    def steps(self) -> np.ndarray:
        """``(n_rings,)`` sample spacing of each ring in pixels (the larger of the angular and radial
        spacing)."""
        r = self.radii()
        return r * max(2 * math.pi / self.n_angles, 2.0 ** (1.0 / self.rings_per_octave) - 1.0)


class ScaleSpace:
    """A Gaussian scale space of a ``(H, W)`` float image with ``levels_per_octave`` levels per
    octave: level ``k`` is antialiased for samples ``2**(k / levels_per_octave)`` pixels apart.
    Octave ``o`` is read from ``cv2.pyrDown`` applied ``o`` times; levels are built on first use."""

    def __init__(self, image: np.ndarray, levels_per_octave: int) -> None:
        image = np.ascontiguousarray(image, dtype=np.float32)
        if image.ndim != 2 or min(image.shape) < 2:
            raise ValueError(f"a scale space needs a 2-D image of at least 2x2 pixels, got shape {image.shape}")
        self.L = levels_per_octave
        self.shape = image.shape
        self._pyramid = [image]
        self._levels: dict[int, tuple[torch.Tensor, float]] = {}
        self._max_octave = max(0, int(math.log2(min(image.shape))) - 1)

    def level(self, k: int) -> tuple[torch.Tensor, float]:
        """Level ``k`` as a ``(1, 1, h, w)`` tensor and its pixel size ``f`` in image pixels (pixel
        ``i`` of the level sits at image pixel ``i * f``)."""
        if k not in self._levels:
            octave = min(k // self.L, self._max_octave)
            while len(self._pyramid) <= octave:
                self._pyramid.append(cv2.pyrDown(self._pyramid[-1], borderType=cv2.BORDER_REFLECT_101))
            img, f = self._pyramid[octave], 2.0**octave
            rest = 2.0 ** (k / self.L) / f
            sigma = 0.5 * math.sqrt(rest * rest - 1.0) if rest > 1.0 else 0.0
            if sigma > 0.3:
                img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
            self._levels[k] = (torch.from_numpy(np.ascontiguousarray(img))[None, None], f)
        return self._levels[k]


def ring_levels(grid: LogPolarGrid) -> np.ndarray:
    """``(n_rings,)`` scale-space level (``grid.rings_per_octave`` levels per octave) each ring is read
    from."""
    return np.round(np.log2(np.maximum(grid.steps(), 1.0)) * grid.rings_per_octave).astype(int)


def sample_logpolar(
    image: np.ndarray | ScaleSpace,
    xy: np.ndarray,
    grid: LogPolarGrid,
    first_ring: np.ndarray | None = None,
    n_rings: int | None = None,
) -> torch.Tensor:
    """Log-polar patches of a gray image around keypoints.

    Samples that fall outside the image take the mean of their ring's samples inside it (or, for a
    ring wholly outside, of the patch's samples inside): what lies beyond the border is unknown, and
    a constant says so without inventing structure, where a reflection would show a mirrored copy
    that differs from view to view.

    Args:
        image: ``(H, W)`` float image (or a :class:`ScaleSpace` of it, to share it across calls).
        xy: ``(N, 2)`` keypoint positions ``(x, y)`` in pixels.
        grid: the ring and angle layout.
        first_ring, n_rings: a window of the grid's rings per keypoint: keypoint ``i`` gets rings
            ``first_ring[i] .. first_ring[i] + n_rings - 1`` of ``grid`` (``(N,)`` ints; default: all
            rings), read exactly as in the whole patch.

    Returns:
        ``(N, n_rings, n_angles)`` float32 tensor (``n_rings`` defaults to ``grid.n_rings``).
    """
    ss = image if isinstance(image, ScaleSpace) else ScaleSpace(image, grid.rings_per_octave)
    xy_t = torch.as_tensor(np.asarray(xy, np.float64).reshape(-1, 2), dtype=torch.float32)
    N, T = len(xy_t), grid.n_angles
    R = grid.n_rings if n_rings is None else n_rings
    first = np.zeros(N, np.int64) if first_ring is None else np.asarray(first_ring, np.int64).reshape(-1)
    if len(first) != N or not 1 <= R <= grid.n_rings or (N and (first.min() < 0 or first.max() + R > grid.n_rings)):
        raise ValueError(f"ring windows must lie within the grid's {grid.n_rings} rings")
    out = torch.empty(N, R, T)
    if N == 0:
        return out
    a = 2 * math.pi * np.arange(T) / T
    unit = torch.from_numpy(np.stack([np.cos(a), -np.sin(a)], -1).astype(np.float32))  # (T, 2), CCW as displayed
    ring = first[:, None] + np.arange(R)  # (N, R) ring index in the grid
    radii = grid.radii().astype(np.float32)
    r = torch.from_numpy(radii if first_ring is None else radii[ring])  # (R,) or (N, R)
    pos = xy_t[:, None, None, :] + r[..., None, None] * unit  # (N, R, T, 2)
    levels = ring_levels(grid)[ring[:1] if first_ring is None else ring]  # (1 or N, R)
    for k in np.unique(levels):
        img, f = ss.level(int(k))
        h, w = img.shape[-2:]
        scale = torch.tensor([2.0 / max(w - 1, 1) / f, 2.0 / max(h - 1, 1) / f])
        # grid_sample's -1 and 1 are the centres of the level's first and last pixels
        if first_ring is None:  # whole patches: the same rings for every keypoint (faster than the mask)
            sel = torch.from_numpy(np.flatnonzero(levels[0] == k))
            g = pos[:, sel] * scale - 1.0
            s = F.grid_sample(img, g.reshape(1, -1, T, 2), mode="bilinear", padding_mode="border", align_corners=True)
            out[:, sel] = s.reshape(N, len(sel), T)
        else:
            sel = torch.from_numpy(levels == k)
            g = pos[sel] * scale - 1.0  # (M, T, 2)
            s = F.grid_sample(img, g[None], mode="bilinear", padding_mode="border", align_corners=True)
            out[sel] = s[0, 0]
    H, W = ss.shape
    inside = (
        (pos[..., 0] >= -0.5) & (pos[..., 0] <= W - 0.5) & (pos[..., 1] >= -0.5) & (pos[..., 1] <= H - 0.5)
    ).float()
    n_in = inside.sum(-1, keepdim=True)  # (N, R, 1)
    ring_mean = (out * inside).sum(-1, keepdim=True) / n_in.clamp_min(1)
    patch_mean = (out * inside).sum((1, 2), keepdim=True) / inside.sum((1, 2), keepdim=True).clamp_min(1)
    fill = torch.where(n_in > 0, ring_mean, patch_mean)
    return torch.where(inside > 0, out, fill)


__all__ = ["LogPolarGrid", "ScaleSpace", "ring_levels", "sample_logpolar"]
