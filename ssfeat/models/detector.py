"""OrientedKeypointNet: a rotation-equivariant keypoint detector with a dense orientation histogram
map (ReKD, CVPR 2022), sized for the CPU.

Input: gray images ``(B, 1, H, W)`` in ``[0, 1]`` (the one input range, for training and inference).
Every internal scale ``s`` of ``config.internal_scales`` blurs and resizes the image, normalises it
locally (``(x - mean) / (std + 0.05)`` over a ``norm_window`` box) and runs the equivariant trunk
(a lifting convolution and group convolutions, each followed by per-field batch norm and ReLU).
The orientation branch maps the last regular fields to one regular field (``N`` channels per pixel:
orientation logits, bin ``i`` = angle ``2 pi i / N`` counter-clockwise); the keypoint branch
max-pools every field over the group (rotation invariant), concatenates the scales and applies
batch norm, a 1x1 convolution and a softplus. Orientation logits of the scales are upsampled and
summed. All resampling is symmetric under 90-degree rotations, so the whole network is exactly
90-degree equivariant.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .equivariant import GroupBatchNorm, GroupConv, LiftingConv, fold_conv_bn, group_pool

MAX_GROUP_ORDER = 64
MAX_KERNEL_SIZE = 31


@dataclass(frozen=True)
class DetectorConfig:
    group_order: int = 16  # N: orientation bins (multiple of 4)
    fields: tuple[int, ...] = (2, 2, 1)  # regular fields per trunk layer
    kernel_size: int = 5
    internal_scales: tuple[float, ...] = (1.0, 0.5)
    norm_window: int = 31  # side of the local-normalisation box (pixels, odd)

    def __post_init__(self) -> None:
        if not self.fields or min(self.fields) < 1:
            raise ValueError(f"fields must be one or more positive counts, got {self.fields}")
        # sane bounds: the network computes (group_order / 4) resampling matrices of kernel_size**4 values
        if not 4 <= self.group_order <= MAX_GROUP_ORDER:
            raise ValueError(f"group_order must lie in [4, {MAX_GROUP_ORDER}], got {self.group_order}")
        if not 1 <= self.kernel_size <= MAX_KERNEL_SIZE:
            raise ValueError(f"kernel_size must lie in [1, {MAX_KERNEL_SIZE}], got {self.kernel_size}")

    @classmethod
    def from_dict(cls, d: dict) -> DetectorConfig:
        d = dict(d)
        for k in ("fields", "internal_scales"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with reflected borders (symmetric kernel)."""
    if sigma <= 0.3:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    u = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(u**2) / (2 * sigma**2))
    g = g / g.sum()
    C = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect") if min(x.shape[-2:]) > r else F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(C, 1, 1, 1), groups=C)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(C, 1, 1, 1), groups=C)


def local_normalize(x: torch.Tensor, window: int, eps: float = 0.05) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over a ``window`` box, borders reflected (``(B, 1, H, W)``).
    The variance is floored at 1e-12 so that flat regions get a finite gradient (``sqrt`` at 0)."""
    r = window // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    xp = F.pad(x, (r, r, r, r), mode=mode)
    mu = box_mean(xp, window)
    var = (box_mean(xp * xp, window) - mu * mu).clamp_min(1e-12)
    return (x - mu) / (var.sqrt() + eps)


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over every ``window x window`` box (valid positions) by cumulative sums: cost independent
    of the window. ``(B, C, H, W) -> (B, C, H - window + 1, W - window + 1)``."""
    c = F.pad(x.double().cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    w = window
    s = c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]
    return (s / (w * w)).to(x.dtype)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class _DetectorBase(nn.Module):
    """Shared forward of the trainable and the exported network (they differ in the layers)."""

    config: DetectorConfig

    def trunk(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``image`` ``(B, 1, H, W)`` in ``[0, 1]``.

        Returns:
            score ``(B, 1, H, W)`` (>= 0) and orientation logits ``(B, N, H, W)``.
        """
        cfg = self.config
        N = cfg.group_order
        H, W = image.shape[-2:]
        kp_feats, ori = [], None
        for s in cfg.internal_scales:
            x = image
            if s != 1.0:
                x = gaussian_blur(x, 0.5 * math.sqrt(max(1.0 / s**2 - 1.0, 0.0)))
                x = resize(x, (max(8, round(H * s)), max(8, round(W * s))))
            f = self.trunk(local_normalize(x, cfg.norm_window))
            o = resize(self.ori_head(f), (H, W))
            ori = o if ori is None else ori + o
            kp_feats.append(resize(group_pool(f, N), (H, W)))
        score = F.softplus(self.kp_head(torch.cat(kp_feats, 1)))
        return score, ori


class OrientedKeypointNet(_DetectorBase):
    """Trainable equivariant detector (see the module docstring)."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        super().__init__()
        cfg = config or DetectorConfig()
        self.config = cfg
        N, k = cfg.group_order, cfg.kernel_size
        convs, norms = [LiftingConv(1, cfg.fields[0], N, k)], [GroupBatchNorm(cfg.fields[0], N)]
        for a, b in zip(cfg.fields[:-1], cfg.fields[1:]):
            convs.append(GroupConv(a, b, N, k))
            norms.append(GroupBatchNorm(b, N))
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.ori_conv = GroupConv(cfg.fields[-1], 1, N, 1)
        n_kp = cfg.fields[-1] * len(cfg.internal_scales)
        self.kp_bn = nn.BatchNorm2d(n_kp)
        self.kp_conv = nn.Conv2d(n_kp, 1, 1)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
        return x

    def ori_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.ori_conv(f)

    def kp_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.kp_conv(self.kp_bn(f))

    @torch.no_grad()
    def export(self) -> ExportedKeypointNet:
        """The same function (eval mode) with ordinary convolutions: filters rotated and batch norm
        folded once, instead of at every call."""
        return ExportedKeypointNet(self)


class ExportedKeypointNet(_DetectorBase):
    """Inference-only :class:`OrientedKeypointNet` made of plain ``nn.Conv2d`` layers."""

    def __init__(self, net: OrientedKeypointNet | None = None, config: DetectorConfig | None = None) -> None:
        super().__init__()
        if net is not None:
            self.config = net.config
            was = net.training
            net.eval()
            layers = [fold_conv_bn(c.expanded_weight(), n) for c, n in zip(net.convs, net.norms)]
            self.layers = nn.ModuleList(layers)
            self.ori = fold_conv_bn(net.ori_conv.expanded_weight(), None)
            with torch.no_grad():
                self.ori.bias.zero_()
            kp_w = net.kp_conv.weight[:, :, 0, 0]  # fold kp batch norm into the 1x1 conv
            bn = net.kp_bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            self.kp = nn.Conv2d(kp_w.shape[1], 1, 1)
            with torch.no_grad():
                self.kp.weight.copy_((kp_w * scale)[:, :, None, None])
                self.kp.bias.copy_(net.kp_conv.bias + kp_w @ shift)
            net.train(was)
        else:  # empty shell to load a state dict into
            cfg = config or DetectorConfig()
            self.config = cfg
            N, k, f = cfg.group_order, cfg.kernel_size, cfg.fields
            chans = [1] + [c * N for c in f]
            self.layers = nn.ModuleList(nn.Conv2d(a, b, k, padding=k // 2) for a, b in zip(chans[:-1], chans[1:]))
            self.ori = nn.Conv2d(chans[-1], N, 1)
            self.kp = nn.Conv2d(f[-1] * len(cfg.internal_scales), 1, 1)
        self.eval()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.layers:
            x = F.relu(conv(x))
        return x

    def ori_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.ori(f)

    def kp_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.kp(f)
