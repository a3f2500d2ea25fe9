"""Pure metric functions on tensors (no I/O)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..features import Features
from ..geometry import angle_diff, inside_image, linear_rotation_scale, local_rotation_scale, map_orientations, warp_xy

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


def corner_metrics(pred_a: torch.Tensor, pred_b: torch.Tensor, t_a: torch.Tensor, t_b: torch.Tensor) -> dict:
    """``corner_err``: mean distance (normalised units) of the 8 predicted corners to the truth;
    ``within_0.1``: share (%) of pairs whose 8 corners all lie within 0.1 of the truth;
    ``mean_within_0.1``: share (%) of pairs whose mean corner distance is at most 0.1."""
    d = torch.cat([(pred_a - t_a).norm(dim=-1), (pred_b - t_b).norm(dim=-1)], 1)  # (B, 8)
    return {
        "corner_err": float(d.mean()),
        "within_0.1": 100.0 * float((d.amax(1) <= 0.1).float().mean()),
        "mean_within_0.1": 100.0 * float((d.mean(1) <= 0.1).float().mean()),
    }


def _nearest_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0:
        return np.zeros(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    return torch.cdist(torch.from_numpy(a).double(), torch.from_numpy(b).double()).min(1).values.numpy()


def repeatability(f0: Features, f1: Features, H_0to1: np.ndarray, threshold: float = 3.0) -> float | None:
    """Symmetric repeatability (%) of the distinct keypoint locations, visibility-masked; ``None``
    if no keypoint is visible in the other image."""
    k0 = np.unique(f0.keypoints, axis=0).astype(np.float64)
    k1 = np.unique(f1.keypoints, axis=0).astype(np.float64)
    w0, w1 = warp_xy(k0, H_0to1), warp_xy(k1, np.linalg.inv(H_0to1))
    v0, v1 = inside_image(w0, f1.image_size), inside_image(w1, f0.image_size)
    n = int(v0.sum() + v1.sum())
    if n == 0:
        return None
    rep = (_nearest_dist(w0[v0], k1) <= threshold).sum() + (_nearest_dist(w1[v1], k0) <= threshold).sum()
    return 100.0 * float(rep) / n


def keypoint_metrics(f0: Features, f1: Features, H_0to1: np.ndarray, threshold: float = 3.0) -> dict:
    """Detector metrics of one pair beyond :func:`repeatability`.

    * ``rep_oneway``: ReKD's one-directional repeatability (%): the share of all image-0 features
      whose projection has an image-1 feature within ``threshold`` px, with no visibility mask
      (features projecting outside image 1 count as failures);
    * ``ori_acc``: ``[acc@5, acc@10, acc@20]`` (%) of the features' orientations on repeated
      keypoints (mutual nearest neighbours in position within ``threshold`` px): the relative
      orientation ``o1 - o0`` against the homography's local rotation at the keypoint;
      ``None`` without repeated keypoints; ``n_repeated`` their number.
    """
    out: dict = {"rep_oneway": None, "ori_acc": None, "n_repeated": 0}
    if len(f0) == 0:
        return out
    w0 = warp_xy(f0.keypoints.astype(np.float64), H_0to1)
    if len(f1) == 0:
        out["rep_oneway"] = 0.0
        return out
    d = torch.cdist(torch.from_numpy(w0), torch.from_numpy(f1.keypoints.astype(np.float64)))
    dmin, j = d.min(1)
    out["rep_oneway"] = 100.0 * float((dmin <= threshold).double().mean())
    i_back = d.argmin(0)
    mutual = (i_back[j] == torch.arange(len(f0))) & (dmin <= threshold)
    i = torch.nonzero(mutual)[:, 0]
    if len(i) == 0:
        return out
    i_np, j_np = i.numpy(), j[i].numpy()
    theta, _ = local_rotation_scale(torch.from_numpy(f0.keypoints[i_np].astype(np.float64)), torch.from_numpy(H_0to1))
    rel = f1.orientations[j_np].astype(np.float64) - f0.orientations[i_np].astype(np.float64)
    err = np.abs(angle_diff(rel, theta.numpy()))
    out["ori_acc"] = [100.0 * float((err <= np.radians(t)).mean()) for t in (5, 10, 20)]
    out["n_repeated"] = int(len(i_np))
    return out


def corner_error(H_est: np.ndarray | None, H_gt: np.ndarray, shape0: tuple[int, int]) -> float:
    """Mean distance (px) between image-0 corners mapped by ``H_est`` and by ``H_gt`` (inf if none)."""
    if H_est is None:
        return float("inf")
    h, w = shape0
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    return float(np.linalg.norm(warp_xy(c, H_est) - warp_xy(c, H_gt), axis=1).mean())


def auc_share(corner_error: float, t: float) -> float:
    """A pair's share of the homography AUC up to ``t`` px: ``max(0, 1 - corner_error / t)`` (the
    mean over pairs is the area under the accuracy-vs-threshold curve on [0, t], divided by t)."""
    return max(0.0, 1.0 - corner_error / t)


def floor_corner_error(
    x0: np.ndarray, x1: np.ndarray, correct: np.ndarray, H_gt: np.ndarray, shape0: tuple[int, int]
) -> float:
    """Corner error (px) of the least-squares homography of the correct matches alone: about what a
    robust estimator that kept exactly those matches would reach (a reference, not a strict bound:
    least squares minimises point residuals, not corner error), set by keypoint localisation and
    ground-truth error.

    Args:
        x0, x1: ``(M, 2)`` matched points; correct: ``(M,)`` boolean mask; H_gt: ``(3, 3)``
            true ``H_0to1``; shape0: image 0's ``(H, W)``.

    Returns:
        The mean corner distance (:func:`corner_error`); inf with fewer than 4 correct matches or
        a degenerate fit (e.g. collinear points).
    """
    if correct.sum() < 4:
        return float("inf")
    H, _ = cv2.findHomography(x0[correct], x1[correct], 0)
    if H is None or not np.isfinite(H).all() or abs(H[2, 2]) < 1e-12:
        return float("inf")
    return corner_error(H / H[2, 2], H_gt, shape0)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign-test p-value of ``wins`` against ``losses`` (ties left out)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def standard_error(d: np.ndarray) -> float | None:
    """Standard error of the mean of ``d`` (``None`` for fewer than two values)."""
    return round(float(d.std(ddof=1) / math.sqrt(len(d))), 3) if len(d) > 1 else None
