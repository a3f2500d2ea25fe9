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


def _inputs(image, centers, affines) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.ascontiguousarray(image, dtype=np.float32)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    affines = np.broadcast_to(np.asarray(affines, dtype=np.float64), (len(centers), 2, 2))
    return image, centers, affines


def feature_affines(sides: np.ndarray, orientations: np.ndarray, patch_size: int) -> np.ndarray:
    """``(N, 2, 2)`` patch-to-image maps of canonical feature patches: the patch covers ``sides``
    ``(N,)`` image pixels and is turned so that the feature's orientation (``(N,)`` radians, CCW as
    displayed) points along the patch's ``+x`` axis (``A = side / P * rotation_matrix(theta)``)."""
    c, s = np.cos(orientations), np.sin(orientations)
    R = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # geometry.rotation_matrix
    return (np.asarray(sides, np.float64) / patch_size)[:, None, None] * R


def _antialias(A: np.ndarray) -> tuple[float, np.ndarray | None]:
    """Prefilter for sampling through the ``(2, 2)`` patch-to-image map ``A``: a patch pixel covers
    an image footprint of covariance ``A A^T``, so the image is blurred by a Gaussian of covariance
    ``(A A^T - I) / 4`` (clipped to positive semi-definite; ``sigma = sqrt(step^2 - 1) / 2`` for a
    similarity of step ``step``). Returns ``(largest sigma, None)`` for (nearly) isotropic maps, which
    use a separable Gaussian of that sigma, else ``(largest sigma, kernel)`` for an anisotropic
    kernel (tilted views)."""
    lam, Q = np.linalg.eigh(0.25 * (A @ A.T - np.eye(2)))
    lam = np.clip(lam, 0.0, None)
    sig = np.sqrt(lam)
    if sig[1] - sig[0] < 0.1 or sig[1] <= 0.3:
        step = math.sqrt(abs(np.linalg.det(A)))  # isotropic: the similarity formula on the mean step
        return (0.5 * math.sqrt(step * step - 1.0) if step > 1.0 else 0.0), None
    r = int(math.ceil(3.0 * sig[1]))
    g = np.arange(-r, r + 1, dtype=np.float64)
    xy = np.stack(np.meshgrid(g, g), -1) @ Q  # offsets in the eigenbasis
    var = lam + 0.01  # a 0.1 px floor keeps the kernel finite across a zero-blur axis
    k = np.exp(-0.5 * (xy[..., 0] ** 2 / var[0] + xy[..., 1] ** 2 / var[1]))
    return float(sig[1]), (k / k.sum()).astype(np.float32)


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
    image, centers, affines = _inputs(image, centers, affines)
    H, W = image.shape
    P = patch_size
    half = (P - 1) / 2.0
    out = np.empty((len(centers), P, P), np.float32)
    for n, (c, A) in enumerate(zip(centers, affines)):
        sigma, kernel = _antialias(A)
        radius = half * np.abs(A).sum(1).max() + 3.0 * sigma + 2.0
        x0, y0 = int(math.floor(c[0] - radius)), int(math.floor(c[1] - radius))
        x1, y1 = int(math.ceil(c[0] + radius)) + 1, int(math.ceil(c[1] + radius)) + 1
        if x0 >= 0 and y0 >= 0 and x1 <= W and y1 <= H:
            region = image[y0:y1, x0:x1]
        else:
            region = image[np.ix_(_reflect(np.arange(y0, y1), H), _reflect(np.arange(x0, x1), W))]
        if kernel is not None:
            region = cv2.filter2D(region, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        elif sigma > 0.3:
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


def sample_patches(
    image: np.ndarray, centers: np.ndarray, affines: np.ndarray, patch_size: int = 32, levels_per_octave: int = 3
):
    """Fast, vectorised :func:`extract_patches` (``grid_sample`` on an image pyramid).

    Patches whose shrink factor ``step = sqrt|det A|`` falls in the same ``1 / levels_per_octave``
    octave share one antialiased image: octave ``o`` is read from ``cv2.pyrDown`` applied ``o``
    times, blurred for the group's remaining step (``0.5 * sqrt(step**2 - 1)`` pixels, the rule of
    :func:`extract_patches`). Patches that do not shrink (``step <= 1``) are sampled exactly as
    :func:`extract_patches` does. Borders are reflected (reflect-101). Arguments as
    :func:`extract_patches`; returns an ``(N, P, P)`` float32 tensor.
    """
    import torch
    import torch.nn.functional as F

    image, centers, affines = _inputs(image, centers, affines)
    N, P = len(centers), patch_size
    if N == 0:
        return torch.zeros(0, P, P)
    if min(image.shape) < 2:
        raise ValueError(f"cannot sample patches from a {image.shape[1]}x{image.shape[0]} image")
    u = torch.arange(P, dtype=torch.float32) - (P - 1) / 2.0
    grid_u = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(-1, 2)  # (P*P, 2) patch offsets
    A_t, c_t = torch.tensor(affines, dtype=torch.float32), torch.tensor(centers, dtype=torch.float32)
    steps = np.sqrt(np.abs(np.linalg.det(affines)))
    levels = np.round(np.log2(np.maximum(steps, 1.0)) * levels_per_octave).astype(int)
    pyramid = [image]
    out = torch.empty(N, P * P)
    for lev in np.unique(levels):
        idx = np.flatnonzero(levels == lev)
        octave = min(int(lev // levels_per_octave), int(math.log2(min(image.shape))) - 1)
        while len(pyramid) <= octave:
            pyramid.append(cv2.pyrDown(pyramid[-1], borderType=cv2.BORDER_REFLECT_101))
        img, f = pyramid[octave], 2.0**octave
        rest = float(np.exp(np.log(steps[idx]).mean())) / f if lev > 0 else 1.0
        sigma = 0.5 * math.sqrt(rest * rest - 1.0) if rest > 1.0 else 0.0
        if sigma > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
        h, w = img.shape
        # pyrDown keeps pixel i of octave o at pixel i * 2**o of the image; grid_sample's -1 and 1 are
        # the centres of the first and last pixels
        norm = np.array([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
        ti = torch.from_numpy(idx)
        # (n, P*P, 2) sampling positions in pixels of the full image, then grid_sample coordinates
        pos = torch.einsum("kj,nij->nki", grid_u, A_t[ti]) + c_t[ti, None, :]
        g = (pos * torch.from_numpy(norm / f).float() - 1.0).reshape(1, -1, P, 2)
        s = F.grid_sample(
            torch.from_numpy(img)[None, None], g, mode="bilinear", padding_mode="reflection", align_corners=True
        )
        out[ti] = s.reshape(len(idx), P * P)
    return out.reshape(N, P, P)
