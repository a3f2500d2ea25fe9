"""Shared building blocks and the backbone table."""

from __future__ import annotations

from collections.abc import Callable

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
