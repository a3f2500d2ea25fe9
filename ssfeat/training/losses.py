"""Training losses, vectorised: histogram alignment (patch pose, Lee et al. BMVC 2021, Eq. 3-7),
dense orientation alignment and MSIP (keypoint detector, ReKD), listwise AP and hardest-negative
triplet with in-batch hard negatives (descriptors, HNDesc), corner regression, consistency and features-wise
losses (homography regression, GeoWarp)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..geometry import warp_to_view0
from ..models.warp import warp_to_frame


def shift_histogram(p: torch.Tensor, shift: torch.Tensor, circular: bool) -> torch.Tensor:
    """Shift each row of ``p`` ``(B, K)`` right by a fractional number of bins ``shift`` ``(B,)``.

    ``out[j] = (1 - w) * p[j - floor(s)] + w * p[j - floor(s) - 1]`` with ``w = s - floor(s)``:
    linear interpolation between the two neighbouring integer shifts. Circular (orientation) or
    zero-filled (scale: mass shifted past either end is dropped).
    """
    K = p.shape[-1]
    lo = torch.floor(shift)
    w = (shift - lo).unsqueeze(-1).to(p.dtype)
    idx = torch.arange(K, device=p.device)

    def take(s: torch.Tensor) -> torch.Tensor:  # out[j] = p[j - s]
        src = idx - s.long().unsqueeze(-1)
        if circular:
            return p.gather(-1, torch.remainder(src, K))
        valid = (src >= 0) & (src < K)
        return p.gather(-1, src.clamp(0, K - 1)) * valid

    return (1 - w) * take(lo) + w * take(lo + 1)


def shared_bins(shift: torch.Tensor, K: int) -> torch.Tensor:
    """``(B, K)`` boolean mask of the bins ``j`` whose source bins ``j - floor(s)`` and
    ``j - ceil(s)`` both exist: the bins the two scale histograms share (paper's set B)."""
    idx = torch.arange(K, device=shift.device)
    lo = torch.floor(shift).long().unsqueeze(-1)
    hi = torch.ceil(shift).long().unsqueeze(-1)
    return (idx - hi >= 0) & (idx - lo <= K - 1)


SCALE_MODES = ("full", "shared")


def histogram_alignment_loss(
    logits0: torch.Tensor,
    logits1: torch.Tensor,
    shift: torch.Tensor,
    circular: bool,
    temperature: float = 1.0,
    symmetric: bool = True,
    scale_mode: str = "full",
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cross-entropy between the histogram of view 1 and the shifted histogram of view 0.

    Args:
        logits0, logits1: ``(B, K)`` logits of the two views.
        shift: ``(B,)`` ground-truth shift in bins (view 1 = view 0 shifted right by ``shift``).
        circular: orientation (True: circular shift, all bins) or scale (False: zero-filled shift).
        temperature: logits are divided by it before the softmax.
        symmetric: add the reverse cross-entropy (paper Eq. 6-7).
        scale_mode: for scale only. ``"shared"``: paper Eq. 4, only the bins both histograms share
            after the shift contribute. ``"full"``: every bin contributes, so mass shifted past either
            end of the histogram counts as a disagreement. Measured here: with ``"shared"`` from a
            random start the network settled on a degenerate optimum (all mass on the two edge bins,
            which the shift moves out of the shared set) and scale accuracy stayed at chance; ``"full"``
            makes the best input-independent histogram a central one and training leaves it.

    Returns:
        scalar, the mean over the batch. It is ~0 when both histograms are one-hot and aligned;
        flat histograms cannot drive it to 0 (their entropy is counted).
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    p0 = F.softmax(logits0 / temperature, -1)
    logp1 = F.log_softmax(logits1 / temperature, -1)
    q = shift_histogram(p0, shift, circular)
    logq = torch.log(q + eps)
    terms = -(logp1.exp() * logq)
    if symmetric:
        terms = terms - q * logp1
    if not circular and scale_mode == "shared":
        terms = terms * shared_bins(shift, q.shape[-1])
    return terms.sum(-1).mean()


def mode_agreement_loss(
    logits0: torch.Tensor, logits1: torch.Tensor, shift: torch.Tensor, circular: bool
) -> torch.Tensor:
    """Cross-entropy of each view's histogram against the other view's strongest bin, shifted.

    Histogram alignment matches whole histograms; two modes of nearly equal mass then satisfy it
    while the strongest one differs between the views. Here each view's argmax, one-hot and moved by
    ``shift`` (fractional shifts split over two bins; scale: bins shifted past either end are dropped),
    is a fixed target for the other view (no gradient through the argmax).

    Args:
        logits0, logits1: ``(B, K)`` logits of the two views.
        shift: ``(B,)`` shift in bins (view 1 = view 0 shifted right by ``shift``).

    Returns:
        scalar, the mean over the batch and both directions; ~0 when each view puts all its mass on
        the other's shifted mode.
    """

    def toward(src: torch.Tensor, dst: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # (B,)
        with torch.no_grad():
            target = shift_histogram(F.one_hot(src.argmax(-1), src.shape[-1]).to(src.dtype), s, circular)
        return -(target * F.log_softmax(dst, -1)).sum(-1)

    return 0.5 * (toward(logits0, logits1, shift) + toward(logits1, logits0, -shift)).mean()


# ------------------------------------------------------------------------------------------------
# dense losses of the keypoint detector (ReKD)


def dense_orientation_loss(
    logits0: torch.Tensor,
    logits1: torch.Tensor,
    H_0to1: torch.Tensor,
    rotation: torch.Tensor,
    mask0: torch.Tensor,
    symmetric: bool = True,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Dense orientation alignment (ReKD) with a fractional circular shift.

    At every view-0 pixel of ``mask0``, view 1's orientation histogram (sampled at the
    corresponding point) must equal view 0's histogram shifted by ``rotation / (2 pi / N)`` bins.

    Args:
        logits0, logits1: ``(B, N, H, W)`` orientation logits of the two views.
        H_0to1: ``(B, 3, 3)``; rotation: ``(B,)`` local rotation of ``H_0to1`` (radians CCW).
        mask0: ``(B, 1, H, W)`` view-0 pixels to use (visible in both views).
    """
    B, N, H, W = logits0.shape
    w1, _ = warp_to_view0(logits1, H_0to1)
    sel = mask0[:, 0] > 0.5  # (B, H, W)
    if not sel.any():
        return logits0.sum() * 0.0
    l0 = logits0.permute(0, 2, 3, 1)[sel]
    l1 = w1.permute(0, 2, 3, 1)[sel]
    shift = (rotation / (2 * math.pi / N))[:, None, None].expand(B, H, W)[sel]
    return histogram_alignment_loss(l0, l1, shift, circular=True, temperature=temperature, symmetric=symmetric)


MSIP_WINDOWS = ((8, 256.0), (16, 64.0), (24, 16.0), (32, 4.0), (40, 1.0))


def _msip_one_way(score: torch.Tensor, target: torch.Tensor, vis: torch.Tensor, w: int) -> torch.Tensor:
    """Index-proposal loss of ``score`` against the window-wise argmax of ``target`` (both
    ``(B, 1, H, W)``, ``target`` already in this view's frame and detached)."""
    B, _, H, W = score.shape
    Hc, Wc = H // w * w, W // w * w
    s = F.unfold(score[..., :Hc, :Wc], w, stride=w)  # (B, w*w, L)
    t = F.unfold(target[..., :Hc, :Wc], w, stride=w)
    v = F.unfold(vis[..., :Hc, :Wc], w, stride=w).amin(1)  # (B, L): window fully visible
    m = s.amax(1, keepdim=True).detach()
    e = torch.exp(s / (m + 1e-6)) - 1.0 + 1e-6  # soft index proposal (Key.Net)
    idx = torch.arange(w * w, device=score.device, dtype=score.dtype)
    pos = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1)  # (w*w, 2) x, y in window
    soft = (e.unsqueeze(-1) * pos[None, :, None, :]).sum(1) / e.sum(1).unsqueeze(-1)  # (B, L, 2)
    hard = pos[t.argmax(1)]  # (B, L, 2)
    sc = ((e * s).sum(1) / e.sum(1)).detach()  # (B, L) soft score
    lo, hi = sc.amin(1, keepdim=True), sc.amax(1, keepdim=True)
    rel = torch.where(hi - lo > 1e-6, (sc - lo) / (hi - lo).clamp_min(1e-6), torch.ones_like(sc))
    weight = rel * v * (t.amax(1) > 0)
    d2 = (((soft - hard) / w) ** 2).sum(-1)
    return (weight * d2).sum() / weight.sum().clamp_min(1e-6)


def msip_loss(
    score0: torch.Tensor,
    score1: torch.Tensor,
    H_0to1: torch.Tensor,
    mask0: torch.Tensor,
    mask1: torch.Tensor,
    windows: tuple[tuple[int, float], ...] = MSIP_WINDOWS,
) -> torch.Tensor:
    """Multi-scale index-proposal keypoint loss (Key.Net, as used by ReKD), symmetric.

    In each non-overlapping ``w x w`` window, the soft-argmax of one view's score map must land on
    the argmax of the other view's (detached, warped) map. Windows are weighted by their
    normalised soft score and must be fully visible; the window sizes are combined with the
    weights ``windows`` (normalised to sum 1), so the loss is in units of squared window sides.

    Args:
        score0, score1: ``(B, 1, H, W)`` non-negative score maps; H_0to1: ``(B, 3, 3)``;
        mask0, mask1: ``(B, 1, H, W)`` visibility masks of :func:`visibility_masks`.
    """
    t0, _ = warp_to_view0(score1.detach(), H_0to1)
    t1, _ = warp_to_view0(score0.detach(), torch.linalg.inv(H_0to1))
    total = sum(wt for _, wt in windows)
    loss = score0.sum() * 0.0
    for w, wt in windows:
        if w > min(score0.shape[-2:]):
            continue
        l01 = _msip_one_way(score0 * mask0, t0 * mask0, mask0, w)
        l10 = _msip_one_way(score1 * mask1, t1 * mask1, mask1, w)
        loss = loss + wt / total * 0.5 * (l01 + l10)
    return loss


# ------------------------------------------------------------------------------------------------
# descriptors (HNDesc)


def hard_negatives(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    group: torch.Tensor,
    k: int,
    exclude_same_group: bool = True,
    same_group_far: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities of each anchor to its positive and to its ``k`` hardest in-batch negatives.

    Anchor ``i``'s positive is row ``offset + i`` of ``positives``; its candidates are the other
    rows; with ``exclude_same_group`` only those of other groups (other images: HNDesc's in-batch
    negatives), except where ``same_group_far`` ``(N, M)`` bool allows a same-group candidate (e.g.
    keypoints far enough from the true match). With fewer than ``k`` candidates the weakest one is
    repeated (as HNDesc pads).

    Args:
        anchors: ``(N, D)`` unit descriptors; positives: ``(M, D)``, ``M >= offset + N`` (e.g. the
            positives of all processes, :func:`ssfeat.distributed.gather_rows`).
        group: ``(M,)`` image index of every positive (anchor ``i`` has ``group[offset + i]``).
        k: negatives per anchor.

    Returns:
        ``s_pos`` ``(N,)`` and ``s_neg`` ``(N, k)`` cosine similarities, hardest first.
    """
    S = anchors @ positives.T
    N, M = S.shape
    rows = torch.arange(N, device=S.device)
    own = torch.zeros(N, M, dtype=torch.bool, device=S.device)
    own[rows, rows + offset] = True
    same = group[offset : offset + N, None] == group[None, :]
    allowed = ~same if exclude_same_group else ~own
    if same_group_far is not None:
        allowed = allowed | (same & same_group_far)
    allowed = allowed & ~own
    masked = S.masked_fill(~allowed, float("-inf"))
    kk = min(k, max(M - 1, 1))
    s_neg, _ = masked.topk(kk, dim=1)
    n_allowed = allowed.sum(1, keepdim=True).clamp(min=1)
    # pad rows with fewer than k candidates by repeating their weakest one
    col = torch.arange(kk, device=S.device)[None].expand(N, kk)
    s_neg = torch.gather(s_neg, 1, torch.minimum(col, n_allowed - 1))
    if kk < k:
        s_neg = torch.cat([s_neg, s_neg[:, -1:].expand(N, k - kk)], 1)
    return S[rows, rows + offset], s_neg


def quantized_ap(
    scores: torch.Tensor, labels: torch.Tensor, nq: int = 20, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    """Differentiable average precision of ranked lists (R2D2/HNDesc quantised AP).

    Scores are soft-assigned to ``nq`` triangular bins evenly spaced on ``[lo, hi]`` (the top and
    bottom bins saturate); per bin, precision = cumulative positives / cumulative count from the
    highest bin down, and AP = sum over bins of precision x the bin's share of the positives.

    Args:
        scores: ``(N, M)`` similarities; labels: ``(N, M)`` 1 for positives, 0 for negatives.

    Returns:
        ``(N,)`` AP in ``[0, 1]``.
    """
    delta = (hi - lo) / (nq - 1)
    centers = torch.linspace(hi, lo, nq, device=scores.device, dtype=scores.dtype)  # highest first
    q = (1.0 - (scores[:, None, :] - centers[None, :, None]).abs() / delta).clamp(0, 1)  # (N, nq, M)
    q[:, 0] = torch.where(scores >= hi, torch.ones_like(scores), q[:, 0])
    q[:, -1] = torch.where(scores <= lo, torch.ones_like(scores), q[:, -1])
    labels = labels.to(scores.dtype)
    npos = (q * labels[:, None]).sum(-1)  # (N, nq)
    nall = q.sum(-1)
    prec = npos.cumsum(1) / (nall.cumsum(1) + 1e-8)
    rec = npos / labels.sum(1, keepdim=True).clamp(min=1e-8)
    return (prec * rec).sum(1)


def ap_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, nq: int = 20) -> torch.Tensor:
    """Listwise AP loss ``mean(1 - AP)`` of lists ``[s_pos, s_neg...]`` (HNDesc): ``s_pos`` ``(N,)``,
    ``s_neg`` ``(N, k)`` from :func:`hard_negatives`."""
    scores = torch.cat([s_pos[:, None], s_neg], 1)
    labels = torch.zeros_like(scores)
    labels[:, 0] = 1
    return (1.0 - quantized_ap(scores, labels, nq)).mean()


def triplet_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hardest-negative triplet loss ``mean(relu(margin + d(a, p) - d(a, n_hardest)))`` with the
    descriptor distance ``d = sqrt(2 - 2 cos)``; ``s_neg`` ``(N, k)`` hardest first."""
    d = lambda s: (2.0 - 2.0 * s).clamp(min=1e-8).sqrt()  # noqa: E731
    return F.relu(margin + d(s_pos) - d(s_neg[:, 0])).mean()


# ------------------------------------------------------------------------------------------------
# homography regression (GeoWarp)


def corner_loss(pred: tuple[torch.Tensor, torch.Tensor], t_a: torch.Tensor, t_b: torch.Tensor) -> torch.Tensor:
    """Self-supervised loss: mean squared error of the predicted corners ``(B, 4, 2)`` in both views
    against the true corners of the shared region ``t_a``, ``t_b`` (normalised coordinates)."""
    return 0.5 * (F.mse_loss(pred[0], t_a) + F.mse_loss(pred[1], t_b))


def consistency_loss(preds: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """GeoWarp's consistency loss on unlabeled (query, positive) pairs: several predictions of the
    same two quadrilaterals (both input orders, flipped and not, all brought to the order
    ``(query quad, positive quad)`` and the unflipped frame) are pulled to their detached mean."""
    q = torch.stack([torch.cat(p, 1) for p in preds])  # (n, B, 8, 2)
    return ((q - q.mean(0).detach()) ** 2).mean(dim=(1, 2, 3)).sum()


def features_wise_loss(
    features, image_q: torch.Tensor, image_p: torch.Tensor, quad_q: torch.Tensor, quad_p: torch.Tensor
) -> torch.Tensor:
    """GeoWarp's features-wise loss: warp both ``(B, 1, S, S)`` images of each (query, positive)
    pair so that the predicted shared region (``quad_q``, ``quad_p``: ``(B, 4, 2)``) fills the frame,
    and compare their features (MSE). ``features`` is the frozen backbone (``WarpNet.features``);
    the gradient flows through it and the differentiable warp into the predicted corners."""
    S = image_q.shape[-1]
    return F.mse_loss(features(warp_to_frame(image_q, quad_q, S)), features(warp_to_frame(image_p, quad_p, S)))
