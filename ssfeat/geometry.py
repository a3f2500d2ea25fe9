"""Geometric conventions of ssfeat, defined once here and tested in ``tests/test_geometry.py``.

Conventions
-----------
* Pixel coordinates are ``(x, y)`` with ``x`` to the right and ``y`` down; the centre of pixel
  ``(column i, row j)`` is at ``(i, j)`` (OpenCV / kornia convention).
* **Angles are radians**, positive = **counter-clockwise as displayed on screen**. Orientations
  live in ``[0, 2*pi)``. Names ending in ``_deg`` are in degrees.
* In ``y``-down pixel coordinates an on-screen counter-clockwise rotation by ``theta`` is the
  matrix ``rotation_matrix(theta) = [[cos, sin], [-sin, cos]]``.
* **Scale is log2**. A patch whose content is magnified by ``s`` has ``log2_scale`` larger by
  ``log2(s)``.
* Homographies are named ``H_0to1`` and map pixel coordinates of view 0 to view 1.
* OpenCV's ``cv2.KeyPoint.angle`` is in degrees, **clockwise** as displayed (checked on SIFT:
  rotating an image by +30 degrees counter-clockwise lowers SIFT's angles by 30). It is converted in
  exactly one place: :func:`angle_from_cv2` / :func:`angle_to_cv2`.
* kornia local affine frames (LAFs, ``(B, N, 2, 3)``) use degrees counter-clockwise as displayed;
  :func:`laf_from_pose` / :func:`pose_from_laf` convert.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

TWO_PI = 2.0 * math.pi


def wrap_angle(angle: torch.Tensor | np.ndarray | float) -> torch.Tensor | np.ndarray | float:
    """Wrap angles (radians) to ``[0, 2*pi)``. Works on tensors, arrays and floats."""
    if isinstance(angle, torch.Tensor):
        out = torch.remainder(angle, TWO_PI)
        return torch.where(out >= TWO_PI, out - TWO_PI, out)
    out = np.mod(angle, TWO_PI)
    return np.where(out >= TWO_PI, out - TWO_PI, out) if isinstance(out, np.ndarray) else float(out % TWO_PI)


def angle_diff(a, b):
    """Signed difference ``a - b`` of angles (radians) wrapped to ``[-pi, pi)``."""
    return wrap_angle(a - b + math.pi) - math.pi


def rotation_matrix(theta: torch.Tensor) -> torch.Tensor:
    """On-screen counter-clockwise rotation in ``y``-down pixel coordinates.

    Args:
        theta: ``(...)`` radians.

    Returns:
        ``(..., 2, 2)`` matrices ``[[cos, sin], [-sin, cos]]``.
    """
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def similarity_matrix(theta: torch.Tensor, log2_scale: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` matrix that rotates content counter-clockwise by ``theta`` and magnifies it
    by ``2**log2_scale`` (both ``(...)``), acting on ``(x, y)`` offsets."""
    return rotation_matrix(theta) * torch.exp2(log2_scale)[..., None, None]


def angle_from_cv2(angle_deg: np.ndarray | float) -> np.ndarray | float:
    """OpenCV ``KeyPoint.angle`` (degrees, clockwise) -> ssfeat orientation (radians, CCW)."""
    return wrap_angle(np.deg2rad(-np.asarray(angle_deg, dtype=np.float64)))


def angle_to_cv2(angle: np.ndarray | float) -> np.ndarray | float:
    """ssfeat orientation (radians, CCW) -> OpenCV ``KeyPoint.angle`` (degrees in ``[0, 360)``)."""
    deg = np.mod(-np.rad2deg(np.asarray(angle, dtype=np.float64)), 360.0)
    return np.where(deg >= 360.0, deg - 360.0, deg)


def angle_to_lightglue(angle: np.ndarray | float) -> np.ndarray | float:
    """ssfeat orientation (radians, CCW) -> LightGlue's ``oris``: radians of OpenCV's clockwise
    ``KeyPoint.angle`` (``deg2rad(angle)``, as LightGlue's SIFT extractor builds them), in ``[0, 2pi)``."""
    return wrap_angle(-np.asarray(angle, dtype=np.float64))


def angle_from_lightglue(oris: np.ndarray | float) -> np.ndarray | float:
    """LightGlue's ``oris`` (radians, clockwise as displayed) -> ssfeat orientation (radians, CCW)."""
    return wrap_angle(-np.asarray(oris, dtype=np.float64))


def warp_points(points: torch.Tensor, H_0to1: torch.Tensor) -> torch.Tensor:
    """Map ``(N, 2)`` points with a ``(3, 3)`` homography (perspective divide included)."""
    ones = torch.ones_like(points[..., :1])
    p = torch.cat([points, ones], -1) @ H_0to1.transpose(-1, -2)
    return p[..., :2] / p[..., 2:3]


def inside_image(xy: np.ndarray, shape: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """``(N,)`` mask of ``(N, 2)`` pixel positions at least ``margin`` px inside an image of
    ``shape = (H, W)`` (pixel centres span ``[0, W - 1] x [0, H - 1]``)."""
    H, W = shape
    x, y = xy[:, 0], xy[:, 1]
    return (x >= margin) & (y >= margin) & (x <= W - 1 - margin) & (y <= H - 1 - margin)


def map_orientations(orientations: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Orientations (radians CCW as displayed) carried through linear maps of ``(x, y)`` offsets:
    the direction of each orientation vector after the map (exact for similarities; for other maps
    the image of the orientation vector).

    Args:
        orientations: ``(N,)`` with one ``(2, 2)`` map ``A``, or ``(N, D)`` with ``(N, 2, 2)`` maps
            (``D`` orientations per map).

    Returns:
        Same shape as ``orientations``, in ``[0, 2pi)``.
    """
    d = np.stack([np.cos(orientations), -np.sin(orientations)], -1)  # y down
    d = d @ np.swapaxes(np.asarray(A, np.float64), -1, -2)
    return wrap_angle(np.arctan2(-d[..., 1], d[..., 0]))


def homography_jacobian(points: torch.Tensor, H_0to1: torch.Tensor) -> torch.Tensor:
    """Jacobian ``d warp(p) / d p`` of a homography at ``(N, 2)`` points, ``(N, 2, 2)``."""
    ones = torch.ones_like(points[..., :1])
    ph = torch.cat([points, ones], -1)
    num = ph @ H_0to1[:2].transpose(-1, -2)  # (N, 2)
    den = ph @ H_0to1[2]  # (N,)
    # d(num/den)/dp = (H[:2,:2] * den - num (x) H[2,:2]) / den^2
    J = H_0to1[:2, :2][None] * den[:, None, None] - num[:, :, None] * H_0to1[2, :2][None, None, :]
    return J / (den**2)[:, None, None]


def linear_rotation_scale(J: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation and log2 scale of ``(N, 2, 2)`` linear maps of ``(x, y)`` offsets (view 0 -> view 1).

    ``J`` is factored as ``J = R(theta) * U`` where ``R(theta)`` is the closest rotation (polar
    decomposition) and ``U`` symmetric positive; the scale is ``sqrt(|det J|)``. For a similarity
    (:func:`similarity_matrix`) this is exactly its rotation and scale; a tilt (``U`` with
    determinant 1) changes neither.

    Returns:
        ``theta`` ``(N,)`` radians CCW in ``[0, 2pi)``, ``log2_scale`` ``(N,)``.
    """
    # closest rotation in y-down convention [[c, s], [-s, c]]: c ~ J00 + J11, s ~ J01 - J10
    c = J[..., 0, 0] + J[..., 1, 1]
    s = J[..., 0, 1] - J[..., 1, 0]
    theta = wrap_angle(torch.atan2(s, c))
    log2_scale = 0.5 * torch.log2(torch.linalg.det(J).abs().clamp_min(1e-12))
    return theta, log2_scale


def local_rotation_scale(points: torch.Tensor, H_0to1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous local rotation and log2 scale of a homography at ``(N, 2)`` points: those of its
    Jacobian (:func:`linear_rotation_scale`).

    Returns:
        ``theta`` ``(N,)`` radians CCW in ``[0, 2pi)``, ``log2_scale`` ``(N,)``.
    """
    return linear_rotation_scale(homography_jacobian(points, H_0to1))


def tilt_matrix(tilt: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 2)`` symmetric maps of determinant 1 that stretch by ``sqrt(tilt)`` along the
    offset ``(cos(direction), sin(direction))`` and compress by ``sqrt(tilt)`` across it: the
    affine part of viewing a plane at ``acos(1 / tilt)`` from its normal, up to a similarity
    (ASIFT's tilt)."""
    c, s = torch.cos(direction), torch.sin(direction)
    a, b = torch.sqrt(tilt), 1.0 / torch.sqrt(tilt)
    off = (a - b) * c * s
    rows = [torch.stack([a * c * c + b * s * s, off], -1), torch.stack([off, a * s * s + b * c * c], -1)]
    return torch.stack(rows, -2)


def laf_from_pose(xy: torch.Tensor, size: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """kornia LAFs ``(1, N, 2, 3)`` from centres ``(N, 2)``, LAF scales ``(N,)`` (pixels) and
    orientations ``(N,)`` (radians, CCW)."""
    from kornia.feature import laf_from_center_scale_ori

    return laf_from_center_scale_ori(xy[None], size[None, :, None, None], torch.rad2deg(angle)[None, :, None])


def pose_from_laf(laf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`laf_from_pose` for ``(1, N, 2, 3)`` LAFs: centres, scales, angles (rad)."""
    from kornia.feature import get_laf_center, get_laf_orientation, get_laf_scale

    return (
        get_laf_center(laf)[0],
        get_laf_scale(laf)[0, :, 0, 0],
        wrap_angle(torch.deg2rad(get_laf_orientation(laf)[0, :, 0])),
    )


def warp_to_view0(x1: torch.Tensor, H_0to1: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """Resample view-1 maps on the view-0 pixel grid: ``out(x0) = x1(H_0to1 x0)``.

    Args:
        x1: ``(B, C, H, W)`` maps of view 1 (both views are ``H x W``).
        H_0to1: ``(B, 3, 3)``.

    Returns:
        the warped maps ``(B, C, H, W)`` and ``(B, 1, H, W)`` mask of view-0 pixels that land inside view 1.
    """
    B, _, H, W = x1.shape
    kw = {"dtype": x1.dtype, "device": x1.device}
    ys, xs = torch.meshgrid(torch.arange(H, **kw), torch.arange(W, **kw), indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3) @ H_0to1.to(x1.dtype).transpose(1, 2)
    p = p[..., :2] / p[..., 2:3]
    inside = ((p[..., 0] >= 0) & (p[..., 0] <= W - 1) & (p[..., 1] >= 0) & (p[..., 1] <= H - 1)).view(B, 1, H, W)
    scale = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], dtype=x1.dtype, device=x1.device)
    g = (p * scale - 1.0).view(B, H, W, 2)
    out = F.grid_sample(x1, g, mode=mode, padding_mode="zeros", align_corners=True)
    return out, inside.to(x1.dtype)


def visibility_masks(
    H_0to1: torch.Tensor, valid0: torch.Tensor, valid1: torch.Tensor, border: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 1, H, W)`` masks of the pixels of view 0 (resp. 1) that are valid, at least ``border``
    pixels from the edge, and seen validly by the other view."""
    w1, in1 = warp_to_view0(valid1, H_0to1, "nearest")
    w0, in0 = warp_to_view0(valid0, torch.linalg.inv(H_0to1), "nearest")
    m0, m1 = valid0 * w1 * in1, valid1 * w0 * in0
    if border > 0:
        b = torch.zeros_like(m0)
        b[..., border:-border, border:-border] = 1
        m0, m1 = m0 * b, m1 * b
    return m0, m1


def warp_xy(xy: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points mapped by the homography ``H`` ``(3, 3)`` (float64 numpy in and out)."""
    if len(xy) == 0:
        return xy.astype(np.float64)
    return warp_points(torch.from_numpy(xy.astype(np.float64)), torch.from_numpy(H)).numpy()
