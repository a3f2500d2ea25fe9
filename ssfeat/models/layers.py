"""Shared building blocks and the backbone table."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def mlp_head(dim: int, hidden: int, out: int) -> nn.Sequential:
    """``Linear-BN-ReLU-Linear`` head: ``(B, dim) -> (B, out)``."""
    return nn.Sequential(
        nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


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
