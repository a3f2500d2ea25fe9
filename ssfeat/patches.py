"""Antialiased patch sampling under per-patch affine maps (one sampler for training, inference and
benchmarks).

A patch of size ``P`` has pixel offsets ``u = index - (P - 1) / 2``; patch pixel ``u`` takes the
image value at ``centre + A @ u`` where ``A`` ``(2, 2)`` is in image pixels per patch pixel. Before
sampling, the local image region is Gaussian-blurred when ``A`` shrinks the content, so that the
patch is antialiased; borders are reflected, so patches never have black corners.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect-101 indices into ``[0, n)``."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def extract_patches(image: np.ndarray, centers: np.ndarray, affines: np.ndarray, patch_size: int = 32) -> np.ndarray:
    """Sample patches from a single-channel float image.

    Args:
        image: ``(H, W)`` float32 image.
        centers: ``(N, 2)`` patch centres ``(x, y)`` in pixels.
        affines: ``(N, 2, 2)`` or ``(2, 2)`` maps from patch offsets to image offsets.
        patch_size: output size ``P``.

    Returns:
        ``(N, P, P)`` float32 patches.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    affines = np.broadcast_to(np.asarray(affines, dtype=np.float64), (len(centers), 2, 2))
    H, W = image.shape
    P = patch_size
    half = (P - 1) / 2.0
    out = np.empty((len(centers), P, P), np.float32)
    for n, (c, A) in enumerate(zip(centers, affines)):
        step = math.sqrt(abs(np.linalg.det(A)))
        sigma = 0.5 * math.sqrt(step * step - 1.0) if step > 1.0 else 0.0
        radius = half * np.abs(A).sum(1).max() + 3.0 * sigma + 2.0
        x0, y0 = int(math.floor(c[0] - radius)), int(math.floor(c[1] - radius))
        x1, y1 = int(math.ceil(c[0] + radius)) + 1, int(math.ceil(c[1] + radius)) + 1
        if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:
            region = image[y0:y1, x0:x1]
        else:
            region = image[np.ix_(_reflect(np.arange(y0, y1), H), _reflect(np.arange(x0, x1), W))]
        if sigma > 0.3:
            region = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        t = np.array([c[0] - x0, c[1] - y0]) - A @ np.array([half, half])
        M = np.concatenate([A, t[:, None]], 1)
        out[n] = cv2.warpAffine(
            region,
            M,
            (P, P),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    return out
