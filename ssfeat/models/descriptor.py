"""DescriptorNet: a CPU-sized dense local-descriptor network (a small U-Net in the spirit of HNDesc's
CAPS ResUNet, randomly initialised; no torchvision).

Input: gray images ``(B, 1, H, W)`` in ``[0, 1]``, normalised locally (``(x - mean) / (std + 0.05)``
over a ``norm_window`` box) so that descriptors do not depend on brightness or contrast.
Encoder: a full-resolution 3x3 convolution, then stages at strides 2, 4 and 8 (a strided 3x3
convolution and a 3x3 convolution each, all with batch norm and ReLU). Decoder: the stride-8
features are upsampled bilinearly to stride 4, concatenated with the stride-4 features, fused by a
1x1 and a 3x3 convolution, and projected to ``dim`` channels. The output is a dense map at stride 4
(``(B, dim, ceil(H/4), ceil(W/4))``, like CAPS/HNDesc); descriptors are read from it bilinearly at
keypoints and L2-normalised (:func:`sample_descriptors`).

Coordinates: pixel ``(x, y)`` of the input is the centre of pixel ``x`` (0-based); output cell
``j`` covers input pixels ``4j .. 4j + 3``, so its centre is input coordinate ``4j + 1.5``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .detector import local_normalize
from .layers import check_positions, check_unit_images, conv_bn_relu, gray_channels


@dataclass(frozen=True)
class DescriptorConfig:
    channels: tuple[int, int, int, int] = (16, 32, 64, 128)  # full resolution, strides 2, 4, 8
    decoder_channels: int = 96
    dim: int = 128  # descriptor length
    norm_window: int = 31  # local-normalisation box (pixels, odd)

    @classmethod
    def from_dict(cls, d: dict) -> DescriptorConfig:
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


STRIDE = 4


class DescriptorNet(nn.Module):
    """Dense descriptor U-Net (see the module docstring)."""

    stride = STRIDE

    def __init__(self, config: DescriptorConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DescriptorConfig()
        c0, c1, c2, c3 = cfg.channels
        self.stem = conv_bn_relu(1, c0, 3)
        self.enc1 = nn.Sequential(conv_bn_relu(c0, c1, 3, 2), conv_bn_relu(c1, c1, 3))
        self.enc2 = nn.Sequential(conv_bn_relu(c1, c2, 3, 2), conv_bn_relu(c2, c2, 3))
        self.enc3 = nn.Sequential(conv_bn_relu(c2, c3, 3, 2), conv_bn_relu(c3, c3, 3))
        d = cfg.decoder_channels
        self.fuse = nn.Sequential(conv_bn_relu(c3 + c2, d, 1), conv_bn_relu(d, d, 3))
        self.head = nn.Conv2d(d, cfg.dim, 1)

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Check ``(B, 1|3, H, W)`` float images in ``[0, 1]`` and return them gray ``(B, 1, H, W)``
        in the network's dtype (RGB is converted as OpenCV does; float64 is cast).

        Raises:
            ValueError: not a tensor, wrong shape or dtype, NaN/Inf, values outside ``[0, 1]``.
        """
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"images must be a (B, 1 or 3, H, W) tensor, got {shape}")
        check_unit_images(image, "images", "image")
        return gray_channels(image.to(self.head.weight.dtype))

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features of ``(B, 1|3, H, W)`` images in ``[0, 1]`` (:meth:`prepare`; padded to a
        multiple of 8): stride 4 ``(B, c2, H'/4, W'/4)`` and stride 8 ``(B, c3, H'/8, W'/8)``
        (non-negative)."""
        return self._encode(self.prepare(image))

    def _encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = image.shape[-2:]
        Hp, Wp = -H % 8, -W % 8
        x = local_normalize(image, self.config.norm_window)
        if Hp or Wp:
            x = F.pad(x, (0, Wp, 0, Hp), mode="replicate")
        f2 = self.enc2(self.enc1(self.stem(x)))
        return f2, self.enc3(f2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1|3, H, W)`` in ``[0, 1]`` (:meth:`prepare`) -> raw dense descriptors
        ``(B, dim, ceil(H/4), ceil(W/4))`` (not normalised; :func:`sample_descriptors` normalises
        after interpolation)."""
        image = self.prepare(image)
        H, W = image.shape[-2:]
        f2, f3 = self._encode(image)  # padded to a multiple of 8, cropped again at stride 4
        up = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(self.fuse(torch.cat([up, f2], 1)))
        return out[..., : -(-H // STRIDE), : -(-W // STRIDE)]

    def describe_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Patch mode: ``(B, 1, P, P)`` patches in ``[0, 1]`` -> ``(B, dim)`` L2-normalised
        descriptors read at each patch's centre."""
        P = patches.shape[-1]
        c = torch.full((patches.shape[0], 1, 2), (P - 1) / 2.0, device=patches.device, dtype=patches.dtype)
        return sample_descriptors(self(patches), c, (P, P))[:, 0]


def sample_descriptors(dense: torch.Tensor, keypoints: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear descriptors at keypoints, L2-normalised.

    Args:
        dense: ``(B, D, h, w)`` output of :class:`DescriptorNet` for ``(B, 1, H, W)`` images.
        keypoints: ``(B, K, 2)`` pixel ``(x, y)`` in the input images.
        image_size: ``(H, W)`` of the input images.

    Returns:
        ``(B, K, D)`` unit descriptors.

    Raises:
        ValueError: a keypoint is NaN/Inf or outside the image (``[-0.5, W - 0.5] x [-0.5, H - 0.5]``).
    """
    check_positions(keypoints, image_size)
    h, w = dense.shape[-2:]
    # input coordinate x sits at output coordinate (x - 1.5) / 4 (cell centres, see module docstring)
    pos = (keypoints - (STRIDE - 1) / 2.0) / STRIDE
    norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=dense.device, dtype=dense.dtype)
    grid = (pos * norm - 1.0)[:, None]  # (B, 1, K, 2)
    d = F.grid_sample(dense, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return F.normalize(d[:, :, 0].transpose(1, 2), dim=-1)
