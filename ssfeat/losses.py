"""Histogram alignment losses (Lee et al., BMVC 2021, Eq. 3-7), vectorised."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
