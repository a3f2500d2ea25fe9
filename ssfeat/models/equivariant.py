"""Group-equivariant convolutions for the cyclic rotation group C_N, in plain torch.

Feature maps carry *regular fields*: a field is ``N`` channels, one per rotation
``g_i = 2 pi i / N`` (counter-clockwise as displayed); channel ``c * N + i`` is field ``c`` at group
element ``i``. Rotating the input image counter-clockwise by ``g_k`` rotates every output map
spatially by ``g_k`` and rolls every field by ``+k`` along the group axis: an orientation histogram
per pixel that turns with the image.

Filters are rotated by bilinear resampling on a disc-masked ``k x k`` grid for angles in
``[0, 90)`` degrees and by exact ``rot90`` for the quarter turns, so the layers are *exactly*
equivariant to 90-degree rotations (``N`` must be a multiple of 4) and approximately to the others.
:meth:`expanded_weight` gives the equivalent ordinary convolution weight, which
:class:`~ssfeat.models.detector.OrientedKeypointNet.export` folds (with batch norm) into plain
``nn.Conv2d`` layers for inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def disc_mask(k: int) -> torch.Tensor:
    """``(k, k)`` mask of the grid points within radius ``k / 2`` of the centre."""
    c = (k - 1) / 2
    u = torch.arange(k, dtype=torch.float32) - c
    return ((u[None, :] ** 2 + u[:, None] ** 2) <= (k / 2) ** 2).float()


def rotation_resampler(k: int, angle: float) -> torch.Tensor:
    """``(k*k, k*k)`` matrix ``M`` with ``(M @ w.flatten()).view(k, k)`` = ``w`` rotated
    counter-clockwise (as displayed, ``y`` down) by ``angle`` radians about its centre, bilinear,
    zero outside the grid."""
    c = (k - 1) / 2
    ys, xs = torch.meshgrid(torch.arange(k, dtype=torch.float64), torch.arange(k, dtype=torch.float64), indexing="ij")
    x, y = xs - c, ys - c
    ca, sa = math.cos(angle), math.sin(angle)
    # output offset p samples the input at R(-angle) p; R(t) = [[cos, sin], [-sin, cos]] (geometry.rotation_matrix)
    sx, sy = ca * x - sa * y + c, sa * x + ca * y + c
    M = torch.zeros(k * k, k * k, dtype=torch.float64)
    x0, y0 = torch.floor(sx), torch.floor(sy)
    for dx in (0, 1):
        for dy in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            w = (1 - (sx - xi).abs()) * (1 - (sy - yi).abs())
            ok = (xi >= 0) & (xi < k) & (yi >= 0) & (yi < k) & (w > 0)
            rows = torch.arange(k * k)[ok.flatten()]
            cols = (yi * k + xi)[ok].long()
            M[rows, cols] += w[ok]
    return M.float()


class _Rotator(nn.Module):
    """Rotates ``(..., k, k)`` filters by the ``N`` elements of C_N (exact quarter turns)."""

    def __init__(self, k: int, N: int) -> None:
        super().__init__()
        if N % 4 or N < 4:
            raise ValueError(f"the group order must be a positive multiple of 4, got {N}")
        if k % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {k}")
        self.k, self.N = k, N
        with torch.device("cpu"):  # computed values, also when the network is laid out on the meta device
            M = torch.stack([rotation_resampler(k, 2 * math.pi * r / N) for r in range(N // 4)])
            mask = disc_mask(k)
        self.register_buffer("M", M, persistent=False)  # (N/4, k*k, k*k)
        self.register_buffer("mask", mask, persistent=False)

    def rotate(self, w: torch.Tensor, i: int) -> torch.Tensor:
        """``w`` ``(..., k, k)`` rotated by group element ``i``."""
        q, r = divmod(i % self.N, self.N // 4)
        w = w * self.mask
        if r:
            w = (w.flatten(-2) @ self.M[r].T).unflatten(-1, (self.k, self.k))
        return torch.rot90(w, q, (-2, -1)) if q else w


class LiftingConv(nn.Module):
    """Trivial (plain image) channels in, regular fields out.

    Input ``(B, C_in, H, W)``; output ``(B, C_out * N, H, W)`` with channel ``o * N + i`` the
    correlation with filter ``o`` rotated by ``g_i``."""

    def __init__(self, c_in: int, c_out: int, N: int, k: int) -> None:
        super().__init__()
        self.c_in, self.c_out, self.N, self.k = c_in, c_out, N, k
        self.rot = _Rotator(k, N)
        fan_in = c_in * float(self.rot.mask.sum())
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k) * math.sqrt(2.0 / fan_in))

    def expanded_weight(self) -> torch.Tensor:
        """``(C_out * N, C_in, k, k)`` ordinary convolution weight."""
        w = torch.stack([self.rot.rotate(self.weight, i) for i in range(self.N)], 1)
        return w.reshape(self.c_out * self.N, self.c_in, self.k, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.expanded_weight(), padding=self.k // 2)


class GroupConv(nn.Module):
    """Regular fields in, regular fields out: ``(B, C_in * N, H, W) -> (B, C_out * N, H, W)``.

    Output ``(o, i) = sum_{c, j} corr(x_{c, j}, rot_i(W[o, c, j - i]))``, so rolling the input
    fields by ``k`` and rotating them by ``g_k`` does the same to the output."""

    def __init__(self, c_in: int, c_out: int, N: int, k: int) -> None:
        super().__init__()
        self.c_in, self.c_out, self.N, self.k = c_in, c_out, N, k
        self.rot = _Rotator(k, N)
        fan_in = c_in * N * float(self.rot.mask.sum())
        self.weight = nn.Parameter(torch.randn(c_out, c_in, N, k, k) * math.sqrt(2.0 / fan_in))

    def expanded_weight(self) -> torch.Tensor:
        """``(C_out * N, C_in * N, k, k)`` ordinary convolution weight."""
        w = torch.stack([self.rot.rotate(torch.roll(self.weight, i, 2), i) for i in range(self.N)], 1)
        return w.reshape(self.c_out * self.N, self.c_in * self.N, self.k, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.expanded_weight(), padding=self.k // 2)


class GroupBatchNorm(nn.Module):
    """Batch norm with one mean/variance/affine per field (shared by its ``N`` channels)."""

    def __init__(self, fields: int, N: int) -> None:
        super().__init__()
        self.fields, self.N = fields, N
        self.bn = nn.BatchNorm3d(fields)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        return self.bn(x.view(B, self.fields, self.N, H, W)).view(B, -1, H, W)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel ``(C * N,)`` scale and shift of the eval-mode normalisation."""
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        return scale.repeat_interleave(self.N), shift.repeat_interleave(self.N)


def group_pool(x: torch.Tensor, N: int) -> torch.Tensor:
    """``(B, C * N, H, W) -> (B, C, H, W)``: max over each field's group axis (rotation invariant)."""
    B, CN, H, W = x.shape
    return x.view(B, CN // N, N, H, W).amax(2)


def fold_conv_bn(weight: torch.Tensor, bn: GroupBatchNorm | nn.BatchNorm2d | None) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` computing ``bn(conv(x, weight))`` in eval mode."""
    out_c, in_c, k, _ = weight.shape
    conv = nn.Conv2d(in_c, out_c, k, padding=k // 2, bias=True)
    if bn is None:
        scale, shift = torch.ones(out_c), torch.zeros(out_c)
    elif isinstance(bn, GroupBatchNorm):
        scale, shift = bn.scale_shift()
    else:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
    with torch.no_grad():
        conv.weight.copy_(weight * scale[:, None, None, None])
        conv.bias.copy_(shift)
    return conv
