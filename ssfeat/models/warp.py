"""WarpNet: homography regression from a correlation volume (GeoWarp, ICCV 2021), sized for the CPU.

Both views ``(B, 1, S, S)`` (``S = config.size``) go through the frozen encoder of the ssfeat
descriptor network (:class:`~ssfeat.models.descriptor.DescriptorNet`, stride 8): features
``(B, C, S/8, S/8)``, L2-normalised per location. The correlation volume holds, for every location
of view ``a``, its cosine similarity to every location of view ``b``: ``(B, (S/8)^2, S/8, S/8)``.
A small CNN (two strided 3x3 convolutions with batch norm and ReLU, then two linear layers) regresses
16 numbers: the offsets from the frame corners ``(-1, -1), (1, -1), (1, 1), (-1, 1)`` of the shared
region's four corners in view ``a`` and in view ``b`` (normalised coordinates, see
:mod:`ssfeat.data.warp_pairs`). The last layer starts at zero, so an untrained network predicts the
whole frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .descriptor import DescriptorConfig, DescriptorNet
from .layers import conv_bn_relu

FRAME = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


@dataclass(frozen=True)
class WarpConfig:
    size: int = 128  # side of both network inputs (multiple of 8)
    channels: tuple[int, int] = (128, 64)  # regressor convolutions
    hidden: int = 256
    backbone: DescriptorConfig = DescriptorConfig()

    @classmethod
    def from_dict(cls, d: dict) -> WarpConfig:
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        if "backbone" in d and isinstance(d["backbone"], dict):
            d["backbone"] = DescriptorConfig.from_dict(d["backbone"])
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class WarpNet(nn.Module):
    """Correlation-volume corner regressor (see the module docstring)."""

    def __init__(self, config: WarpConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or WarpConfig()
        if cfg.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {cfg.size}")
        self.backbone = DescriptorNet(cfg.backbone)
        self.backbone.requires_grad_(False)
        n = (cfg.size // 8) ** 2
        c1, c2 = cfg.channels
        self.regressor = nn.Sequential(conv_bn_relu(n, c1, 3, 2), conv_bn_relu(c1, c2, 3, 2))
        side = -(-(-(-cfg.size // 8) // 2) // 2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, cfg.hidden), nn.ReLU(inplace=True))
        self.out = nn.Linear(cfg.hidden, 16)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def train(self, mode: bool = True) -> WarpNet:
        super().train(mode)
        self.backbone.eval()  # frozen, batch-norm statistics included
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in ``[0, 1]`` -> ``(B, C, S/8, S/8)`` unit features (frozen)."""
        with torch.no_grad():
            _, f = self.backbone.encode(image)
        return F.normalize(f, dim=1)

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners of the shared region in each view: two ``(B, 4, 2)`` tensors, normalised TL, TR,
        BR, BL. Inputs are resized to ``config.size`` if needed."""
        S = self.config.size
        if image_a.shape[-2:] != (S, S):
            image_a = F.interpolate(image_a, size=(S, S), mode="bilinear", align_corners=True, antialias=True)
        if image_b.shape[-2:] != (S, S):
            image_b = F.interpolate(image_b, size=(S, S), mode="bilinear", align_corners=True, antialias=True)
        fa, fb = self.features(image_a), self.features(image_b)
        B, C, h, w = fa.shape
        corr = torch.einsum("bcn,bcm->bmn", fa.flatten(2), fb.flatten(2)).reshape(B, h * w, h, w)
        off = self.out(self.head(self.regressor(corr))).view(B, 2, 4, 2)
        frame = FRAME.to(off)
        return frame + off[:, 0], frame + off[:, 1]
