"""Shared building blocks and the backbone table."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def mlp_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    """``Linear-BN-ReLU-Linear`` head: ``(B, dim) -> (B, out)``."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


def fuse_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution or linear layer inside an
    ``nn.Sequential`` into that layer (the batch norm becomes ``nn.Identity``), in place; returns
    ``module`` in evaluation mode. Same outputs in evaluation mode, fewer passes over the
    activations; for inference only (the model cannot be trained afterwards)."""
    module.eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            if isinstance(layer, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(layer, bn), nn.Identity()
            elif isinstance(layer, nn.Linear) and isinstance(bn, nn.BatchNorm1d):
                seq[i], seq[i + 1] = fuse_linear_bn_eval(layer, bn), nn.Identity()
    return module


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and an identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, cout, 3, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.short(x))


def resnet18() -> nn.Module:
    """The paper's backbone: ResNet-18 (torchvision layout, written here; randomly initialised),
    gray input, global max pooling. ``(B, 1, 32, 32) -> (B, 512)``."""
    layers = [nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def fast_cnn(width: int = 16) -> nn.Module:
    """Small strided CNN for CPU inference; keeps the 4x4 spatial layout (flattened), which carries
    the orientation. ``(B, 1, 32, 32) -> (B, 4 * width * 16)``."""
    w = width
    return nn.Sequential(
        conv_bn_relu(1, w, 5, 2),  # 16x16
        conv_bn_relu(w, 2 * w, 3, 2),  # 8x8
        conv_bn_relu(2 * w, 2 * w, 3, 1),
        conv_bn_relu(2 * w, 4 * w, 3, 2),  # 4x4
        conv_bn_relu(4 * w, 4 * w, 3, 1),
        nn.Flatten(),
    )


# name -> (constructor, feature dimension for a 32x32 input, head hidden size)
BACKBONES: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    "resnet18": (resnet18, 512, 256),
    "tiny": (lambda: fast_cnn(8), 32 * 16, 64),
    "fast": (lambda: fast_cnn(16), 64 * 16, 128),
    "small": (lambda: fast_cnn(32), 128 * 16, 256),
}


# images and patches are float in [0, 1]; values further than this outside are refused. The margin
# leaves room for the overshoot of bicubic / Lanczos resampling (up to about 0.15 on real photos)
# and still catches 8-bit data (0..255) and mean/std-normalised inputs
RANGE_TOLERANCE = 0.5


def check_unit_images(x, plural: str, singular: str) -> None:
    """Raise a one-line ``ValueError`` unless ``x`` is a floating-point tensor of finite values in
    ``[0, 1]`` (up to :data:`RANGE_TOLERANCE`); ``plural`` / ``singular`` name it in the message
    (``"images"``, ``"image"``)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{plural} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{plural} must be a floating-point tensor with values in [0, 1], got dtype {x.dtype} "
            f"(8-bit data: {plural}.float() / 255)"
        )
    if x.numel():
        lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()  # one pass; NaN propagates to both
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{plural} contain NaN or Inf values")
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise ValueError(
                f"{singular} values must be in [0, 1], found [{lo:g}, {hi:g}] "
                "(divide 0..255 data by 255; undo any mean/std normalisation)"
            )


def gray_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1|3, H, W)`` -> ``(B, 1, H, W)``: RGB to gray with the weights OpenCV uses."""
    if x.shape[1] == 3:
        return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return x


def check_positions(xy: torch.Tensor, shape: tuple[int, int] | None) -> None:
    """Raise a one-line ``ValueError`` unless every ``(..., 2)`` pixel position ``(x, y)`` is finite
    and, given ``shape`` ``(H, W)``, inside an image of that shape (pixel centres at integers:
    ``[-0.5, W - 0.5]``)."""
    if not xy.numel():
        return
    xy = xy.detach()
    if not torch.isfinite(xy).all():
        raise ValueError("keypoint coordinates contain NaN or Inf")
    if shape is None:
        return
    H, W = shape
    x, y = xy[..., 0], xy[..., 1]
    outside = (x < -0.5) | (y < -0.5) | (x > W - 0.5) | (y > H - 0.5)
    n = int(outside.sum())
    if n:
        raise ValueError(f"{n} keypoints lie outside the {W}x{H} image")
