"""WarpNet: homography regression from a correlation volume (GeoWarp, ICCV 2021), sized for the CPU.

Both views ``(B, 1, S, S)`` (``S = config.size``) go through the frozen encoder of the ssfeat
descriptor network (:class:`~ssfeat.models.descriptor.DescriptorNet`, stride 8): features
``(B, C, s, s)`` with ``s = S / 8``, L2-normalised per location (its stride-4 dense descriptors
would double the corner resolution, but a training step costs over 10x more on the CPU). The
correlation volume holds the cosine similarity of every location of view ``a`` to every location of
view ``b``: ``(B, s^2, s^2)``.

GeoWarp feeds the raw volume (locations of ``a`` as channels) to its CNN, which must then learn
which channel is which position. Ours reads a summary of the volume instead, ``(B, 10, s, s)``:
for every location of ``b`` the expected matching position in ``a`` under a softmax of the
similarities (learned temperature) and the best similarity, the same for every location of ``a``,
and the grid coordinates. The regressor then works on positions, which do not depend on which
channel of the raw volume holds which location. Not a controlled comparison: our first version (the
raw volume, as GeoWarp) reached a mean corner error of 0.113 after 25 CPU minutes of training; a
prototype of this one on cached features reached 0.082 after 9 (held-out pairs, k = 0.6).
A CNN (3x3 convolutions with batch norm and ReLU, two of them strided) and two linear layers regress
16 numbers: the offsets from the frame corners ``(-1, -1), (1, -1), (1, 1), (-1, 1)`` of the shared
region's four corners in view ``a`` and in view ``b`` (normalised coordinates, see
:mod:`ssfeat.data.warp_pairs`). The last layer starts at zero, so an untrained network predicts the
whole frames.
"""

from __future__ import annotations

import dataclasses
import math
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
    channels: tuple[int, int] = (64, 128)  # regressor convolutions at full and at quarter grid resolution
    hidden: int = 256
    temperature: float = 20.0  # initial softmax temperature on cosine similarities (learned)
    backbone: DescriptorConfig = DescriptorConfig()

    def __post_init__(self) -> None:
        if self.size % 8:
            raise ValueError(f"size must be a multiple of 8, got {self.size}")

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


def check_images(image, name: str = "image", size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``image`` is a float tensor of gray images ``(B, 1, H, W)`` with
    sides of at least 8 px (``size``: exactly ``size x size``) and finite values. Cheap: one
    reduction over the values."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W) (gray images), got {tuple(image.shape)}")
    if size is not None and image.shape[-2:] != (size, size):
        raise ValueError(
            f"{name} must be {size}x{size} px (the regressor's input size), got {image.shape[3]}x{image.shape[2]}"
        )
    if min(image.shape[-2:]) < 8:
        raise ValueError(f"{name}: the {image.shape[3]}x{image.shape[2]} images are too small (< 8 px)")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got {image.dtype}")
    if image.numel() and not torch.isfinite(image.sum(dtype=torch.float64)):  # float64 cannot overflow here
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_pair(image_a, image_b) -> None:
    check_images(image_a, "image_a")
    check_images(image_b, "image_b")
    if len(image_a) != len(image_b):
        raise ValueError(f"image_a and image_b must hold as many images, got {len(image_a)} and {len(image_b)}")


def grid_coords(side: int, device=None, dtype=None) -> torch.Tensor:
    """``(2, side * side)`` normalised ``(x, y)`` of a ``side x side`` grid, row-major."""
    g = torch.linspace(-1.0, 1.0, side, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([gx, gy]).flatten(1)


class WarpNet(nn.Module):
    """Correlation-volume corner regressor (see the module docstring)."""

    def __init__(self, config: WarpConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or WarpConfig()
        self.backbone = DescriptorNet(cfg.backbone)
        self.backbone.requires_grad_(False)
        c1, c2 = cfg.channels
        side = cfg.size // 8
        layers = [conv_bn_relu(10, c1, 3), conv_bn_relu(c1, c1, 3), conv_bn_relu(c1, c2, 3, 2)]
        side = -(-side // 2)
        while True:  # at least two strided stages, down to a 4 x 4 grid at most
            layers += [conv_bn_relu(c2, c2, 3), conv_bn_relu(c2, c2, 3, 2)]
            side = -(-side // 2)
            if side <= 4:
                break
        self.regressor = nn.Sequential(*layers, conv_bn_relu(c2, c2, 3))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * side * side, cfg.hidden), nn.ReLU(inplace=True))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.temperature)))
        self.out = nn.Linear(cfg.hidden, 16)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def train(self, mode: bool = True) -> WarpNet:
        super().train(mode)
        self.backbone.eval()  # frozen, batch-norm statistics included
        return self

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, 1, S, S)`` (antialiased; unchanged if already that size)."""
        S = self.config.size
        if image.shape[-2:] == (S, S):
            return image
        return F.interpolate(image, size=(S, S), mode="bilinear", align_corners=True, antialias=True)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S)`` in ``[0, 1]`` -> ``(B, C, S/8, S/8)`` unit features. No gradient reaches
        the (frozen) weights, but one flows to ``image`` when it requires it (features-wise loss)."""
        _, f = self.backbone.encode(image)
        return F.normalize(f, dim=1)

    def regress(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners from unit features ``(B, C, s, s)`` of both views: two ``(B, 4, 2)``."""
        B, _, h, w = fa.shape
        corr = torch.einsum("bcn,bcm->bnm", fa.flatten(2), fb.flatten(2))  # (B, n_a, n_b)
        t = self.log_temperature.exp()
        xy = grid_coords(h, fa.device, fa.dtype)  # (2, n)
        in_a = torch.einsum("cn,bnm->bcm", xy, torch.softmax(t * corr, dim=1))  # at each b location
        in_b = torch.einsum("cm,bnm->bcn", xy, torch.softmax(t * corr, dim=2))  # at each a location
        grid = xy[None].expand(B, -1, -1)
        x = torch.cat([grid, in_a, corr.amax(1)[:, None], grid, in_b, corr.amax(2)[:, None]], 1)
        off = self.out(self.head(self.regressor(x.reshape(B, 10, h, w)))).view(B, 2, 4, 2)
        frame = FRAME.to(off)
        return frame + off[:, 0], frame + off[:, 1]

    def forward(
        self, image_a: torch.Tensor, image_b: torch.Tensor, both_orders: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Corners of the shared region in each view: two ``(B, 4, 2)`` tensors, normalised TL, TR,
        BR, BL (in ``image_a``, in ``image_b``). Inputs ``(B, 1, H, W)`` in ``[0, 1]`` are resized to
        ``config.size`` if needed. With ``both_orders`` the pairs ``(b, a)`` follow as rows
        ``B..2B - 1`` (features computed once): then the first tensor holds the corners in the first
        image of each ordered pair (``a``, then ``b``) and the second those in the other one.

        Raises:
            ValueError: inputs that are not float ``(B, 1, H, W)`` tensors of at least 8 x 8 px, with
                as many images in both and finite values.
        """
        _check_pair(image_a, image_b)
        return self._corners(image_a, image_b, both_orders)

    def _corners(
        self, image_a: torch.Tensor, image_b: torch.Tensor, both_orders: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` on inputs already checked."""
        with torch.no_grad():
            fa, fb = self.features(self.resize(image_a)), self.features(self.resize(image_b))
        if both_orders:
            fa, fb = torch.cat([fa, fb]), torch.cat([fb, fa])
        return self.regress(fa, fb)

    def shared_region(
        self, image_a: torch.Tensor, image_b: torch.Tensor, flips: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """GeoWarp's ``compute_warping``: the prediction averaged over both input orders, two
        ``(B, 4, 2)``. ``flips`` also averages the predictions for the pair flipped horizontally,
        vertically and both (mapped back; 4x the cost, more precise corners). Inputs and errors as
        :meth:`forward`."""
        _check_pair(image_a, image_b)
        B = image_a.shape[0]
        modes = [(False, False), (True, False), (False, True), (True, True)] if flips else [(False, False)]
        a = torch.cat([_flip(image_a, h, v) for h, v in modes])
        b = torch.cat([_flip(image_b, h, v) for h, v in modes])
        first, second = self._corners(a, b, both_orders=True)  # the flips of checked inputs
        n = len(a)
        qa, qb = 0.5 * (first[:n] + second[n:]), 0.5 * (second[:n] + first[n:])
        qa = torch.stack([unflip_corners(qa[i * B : (i + 1) * B], h, v) for i, (h, v) in enumerate(modes)]).mean(0)
        qb = torch.stack([unflip_corners(qb[i * B : (i + 1) * B], h, v) for i, (h, v) in enumerate(modes)]).mean(0)
        return qa, qb


def _flip(image: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    dims = [d for d, on in ((-1, horizontal), (-2, vertical)) if on]
    return image.flip(dims) if dims else image


def unflip_corners(quad: torch.Tensor, horizontal: bool = True, vertical: bool = False) -> torch.Tensor:
    """Corners ``(B, 4, 2)`` (TL, TR, BR, BL, normalised) predicted on flipped images, expressed in
    the unflipped frame: a horizontal flip maps ``x -> -x`` and swaps TL <-> TR, BR <-> BL; a
    vertical one ``y -> -y`` and TL <-> BL, TR <-> BR."""
    if horizontal:
        quad = torch.stack([-quad[:, [1, 0, 3, 2], 0], quad[:, [1, 0, 3, 2], 1]], -1)
    if vertical:
        quad = torch.stack([quad[:, [3, 2, 1, 0], 0], -quad[:, [3, 2, 1, 0], 1]], -1)
    return quad


def warp_to_frame(image: torch.Tensor, quad: torch.Tensor, size: int) -> torch.Tensor:
    """Warp ``(B, 1, H, W)`` images so that ``quad`` ``(B, 4, 2)`` (normalised TL, TR, BR, BL of each
    image) fills a ``size x size`` frame; differentiable in ``image`` and ``quad``. Outside the image
    the border is repeated."""
    if not (isinstance(image, torch.Tensor) and image.ndim == 4):
        raise ValueError(f"image must be a (B, C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if not (isinstance(quad, torch.Tensor) and quad.shape == (len(image), 4, 2)):
        got = tuple(quad.shape) if isinstance(quad, torch.Tensor) else type(quad).__name__
        raise ValueError(f"quad must have shape ({len(image)}, 4, 2) (four corners per image), got {got}")
    from kornia.geometry.transform import get_perspective_transform, warp_perspective

    h, w = image.shape[-2:]
    scale = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=quad.device, dtype=quad.dtype)
    src = (quad + 1.0) * scale
    dst = ((FRAME.to(quad) + 1.0) * (size - 1) / 2.0).expand_as(quad)
    M = get_perspective_transform(src, dst)  # image pixel -> frame pixel
    return warp_perspective(image, M, (size, size), align_corners=True, padding_mode="border")
