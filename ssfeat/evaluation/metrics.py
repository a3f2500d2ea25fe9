"""Pure metric functions on tensors (no I/O)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..geometry import angle_diff, linear_rotation_scale, map_orientations

ORI_THRESHOLDS_DEG = (5.0, 10.0)
SCALE_THRESHOLDS = (1.0 / 6.0, 1.0 / 3.0)


def orientation_error(ori0: torch.Tensor, ori1: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """``|wrap(ori1 - ori0 - rotation)|`` in radians; all ``(B,)`` or broadcastable."""
    return angle_diff(ori1 - ori0, rotation).abs()


def scale_error(s0: torch.Tensor, s1: torch.Tensor, log2_scale: torch.Tensor) -> torch.Tensor:
    """``|(s1 - s0) - log2_scale|`` in log2 units."""
    return ((s1 - s0) - log2_scale).abs()


def accuracy(err: torch.Tensor, threshold: float) -> float:
    """Fraction (in %) of errors ``<= threshold``; NaN errors count as wrong."""
    if err.numel() == 0:
        return float("nan")
    return 100.0 * (err <= threshold).float().mean().item()


def topk_recall(cand0: torch.Tensor, cand1: torch.Tensor, gt: torch.Tensor, threshold: float, circular: bool) -> float:
    """Paper Table 2: a pair counts if any pair of its top-k candidates ``(B, k)`` x ``(B, k)``
    matches the ground truth ``(B,)`` within ``threshold``."""
    d = cand1[:, None, :] - cand0[:, :, None]
    err = angle_diff(d, gt[:, None, None]).abs() if circular else (d - gt[:, None, None]).abs()
    return 100.0 * (err.flatten(1) <= threshold).any(1).float().mean().item()


def pose_accuracies(ori0, ori1, rotation, s0, s1, log2_scale) -> dict[str, float]:
    """The paper's four numbers: scale at +-1/6 and +-1/3 (log2), orientation at +-5 and +-10 deg.
    Either half may be ``None`` to skip it."""
    out = {}
    if s0 is not None:
        e = scale_error(s0, s1, log2_scale)
        out.update({f"scale_acc@{t:.3f}": accuracy(e, t) for t in SCALE_THRESHOLDS})
    if ori0 is not None:
        e = orientation_error(ori0, ori1, rotation)
        out.update({f"ori_acc@{t:g}deg": accuracy(e, math.radians(t)) for t in ORI_THRESHOLDS_DEG})
    return out


def orientation_definedness(J: torch.Tensor, threshold: float, n_directions: int = 360) -> torch.Tensor:
    """How well the relative orientation is defined under local affine maps.

    For each ``(2, 2)`` map ``J`` (view 0 -> view 1, ``(x, y)`` offsets), the share of directions
    in view 0 (``n_directions`` evenly spaced) that ``J`` turns by its rotation (the polar rotation
    of :func:`~ssfeat.geometry.linear_rotation_scale`, the ground truth of the sequence
    benchmarks) within ``threshold`` radians. 1 for a similarity; below 1 once a tilt bends
    directions by more than the threshold (at most ``atan((t - 1) / (2 sqrt t))`` for tilt ``t``).
    An estimator whose answer follows one image direction exactly would score this on average if
    the directions it follows were spread evenly: a reference for orientation accuracy on oblique
    views, not a bound (real directions are not spread evenly, and an estimator can beat it).

    Args:
        J: ``(N, 2, 2)``.

    Returns:
        ``(N,)`` shares in ``[0, 1]``; NaN where ``J`` is not finite or not orientation-preserving
        (``det J <= 0``), where no rotation describes it.
    """
    J = J.double()
    theta, _ = linear_rotation_scale(J)
    phi = np.arange(n_directions) * (2 * math.pi / n_directions)
    turned = torch.from_numpy(map_orientations(np.broadcast_to(phi, (len(J), n_directions)), J.numpy()) - phi)
    share = (angle_diff(turned, theta[:, None]).abs() <= threshold).double().mean(1)
    valid = torch.isfinite(J).flatten(1).all(1) & (torch.linalg.det(torch.nan_to_num(J)) > 0)
    return torch.where(valid, share, torch.full_like(share, float("nan")))
