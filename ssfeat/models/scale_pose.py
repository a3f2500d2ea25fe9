"""LogPolarScaleNet: a keypoint's characteristic scale from a log-polar patch, equivariant to zoom
and invariant to rotation by construction (exactly for turns by an even number of angle steps: the
first convolution has stride 2 along the angles).

The input is an antialiased log-polar patch (:mod:`ssfeat.logpolar`): rings at log-spaced radii,
angles all round. A zoom of the image by ``2**u`` shifts the patch by ``u * rings_per_octave`` rings
and a rotation shifts it circularly along the angle axis. The network is

* one 2-D convolution over (ring, angle), circular and of stride 2 along the angle axis;
* per ring, features that do not change under a circular shift along the angle axis: the ring mean
  and the magnitudes of the next angular Fourier harmonics of the (ring-wise standardised) patch and
  of every channel, and each channel's maximum;
* 1-D dilated convolutions along the ring axis, ending in one logit per ring.

Every convolution along the rings is *valid* (no padding): the patch has ``context_rings`` rings
more on either side than the histogram, so no output can tell where the ends of the patch are.

So the scale histogram (softmax over rings, an absolute log2 radius) shifts with the zoom and ignores
the rotation, up to resampling and the ends of the ring range. Sizes are ``size_factor * radius``
pixels (``cv2.KeyPoint.size``'s meaning, calibrated on SIFT keypoints of the training photos).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..logpolar import LogPolarGrid
from .patch_pose import config_fields, histogram_peaks

NORM_RINGS = 4  # patches are standardised ring by ring with the statistics of the rings within this many


@dataclass
class ScalePoseConfig:
    """Architecture of :class:`LogPolarScaleNet` (stored in every checkpoint and weights file)."""

    # scale histogram bins: ring radii min_radius * 2**(i / rings_per_octave), 8 octaves from 0.5 to 128 px;
    # the log-polar patch has ``context_rings`` more rings on either side, which the valid convolutions
    # along the rings consume, so no output ring sees the ends of the patch
    n_rings: int = 33
    rings_per_octave: int = 4
    n_angles: int = 32
    min_radius: float = 0.5
    channels: int = 8  # of the 2-D convolution over (ring, angle)
    harmonics: int = 4  # angular Fourier magnitudes per channel (harmonic 0: the ring mean)
    hidden: int = 24  # channels of the 1-D convolutions along the rings
    ring_layers: int = 2  # dilated 1-D convolutions (dilations 2, 4, ...) after the first
    signed_mean: bool = True  # harmonic 0 (the ring mean) enters signed, not as a magnitude
    logit_norm: float = 12.0  # centre logits and rescale to this L2 norm (0: raw logits)
    # feature size in pixels (cv2.KeyPoint.size meaning) per unit of characteristic radius; set after
    # training so that sizes match SIFT's on the training photos (the median ratio)
    size_factor: float = 1.0
    # inference: the orientation network reads a window of this many times the size
    ori_window: float = 8.0

    def __post_init__(self) -> None:
        for name in ("n_rings", "rings_per_octave", "n_angles", "channels", "harmonics", "hidden", "ring_layers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
        _ = self.grid  # checks the ring layout
        if self.n_angles % 2 or not 1 <= self.harmonics <= self.n_angles // 4:
            raise ValueError(
                f"need an even n_angles and harmonics in [1, n_angles / 4], got {self.n_angles}, {self.harmonics}"
            )
        if self.channels < 1 or self.hidden < 1 or not 0 <= self.ring_layers <= 4:
            raise ValueError("channels and hidden must be >= 1, ring_layers in [0, 4]")
        if not isinstance(self.signed_mean, bool):
            raise TypeError(f"signed_mean must be True or False, got {self.signed_mean!r}")
        for name in ("logit_norm", "size_factor", "ori_window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise TypeError(f"{name} must be a finite number, got {v!r}")
        if self.logit_norm < 0 or self.size_factor <= 0 or self.ori_window <= 0:
            raise ValueError(
                f"need logit_norm >= 0, size_factor > 0 and ori_window > 0, got {self.logit_norm}, "
                f"{self.size_factor}, {self.ori_window}"
            )

    @property
    def context_rings(self) -> int:
        """Rings each side of the histogram's that the valid convolutions along the rings consume: 1
        for the 2-D convolution, 1 for the first 1-D one and 2, 4, ... for the dilated ones."""
        return 2 + sum(2**k for k in range(1, self.ring_layers + 1))

    @property
    def grid(self) -> LogPolarGrid:
        """The log-polar patch the network reads: the histogram's rings and ``context_rings`` more on
        either side."""
        m = self.context_rings
        return LogPolarGrid(
            self.n_rings + 2 * m,
            self.rings_per_octave,
            self.n_angles,
            self.min_radius * 2.0 ** (-m / self.rings_per_octave),
        )

    @classmethod
    def from_dict(cls, d: Mapping) -> ScalePoseConfig:
        """A config from a dict of its fields (as stored in weights files and checkpoints).

        Raises:
            TypeError: ``d`` is not a mapping, or a field has the wrong type.
            ValueError: unknown keys or values outside a field's domain.
        """
        return cls(**config_fields(cls, d))


def _harmonic_basis(n: int, harmonics: int) -> torch.Tensor:
    """``(n, 2 * harmonics)``: ``cos(k a) / n`` then ``sin(k a) / n`` for ``k < harmonics`` at the ``n``
    angles ``a = 2 pi j / n``."""
    a = 2 * math.pi * torch.arange(n) / n
    k = torch.arange(harmonics)
    return torch.cat([torch.cos(a[:, None] * k), torch.sin(a[:, None] * k)], 1) / n


def local_standardize(x: torch.Tensor, half: int) -> torch.Tensor:
    """Standardise ``(B, 1, R, T)`` log-polar patches ring by ring with the mean and RMS of the rings
    within ``half`` rings (replicated at the ends): invariant to brightness and contrast, and, unlike
    statistics of the whole patch, equivariant to shifts along the rings and blind to what lies far
    away in radius (the content beyond an image border, say)."""
    k = 2 * half + 1
    m = x.mean(3, keepdim=True)  # (B, 1, R, 1)
    m2 = x.square().mean(3, keepdim=True)
    pad = (0, 0, half, half)
    mu = F.avg_pool2d(F.pad(m, pad, mode="replicate"), (k, 1), stride=1)
    var = F.avg_pool2d(F.pad(m2, pad, mode="replicate"), (k, 1), stride=1) - mu.square()
    return (x - mu) / (var.clamp_min(0).sqrt() + 1e-3)


class _CircularConv(nn.Module):
    """3x3 convolution over (ring, angle), stride 2 along angles: valid along rings (one ring fewer
    at either end), circular along angles."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=0, stride=(1, 2), bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 0, 0), mode="circular"))))

    def fuse(self) -> None:
        """Fold the batch norm into the convolution (evaluation only; same outputs)."""
        self.conv, self.bn = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval()), nn.Identity()


class LogPolarScaleNet(nn.Module):
    """Scale logits over the rings of log-polar patches.

    Args:
        config: architecture; ``self.config``.

    Shape:
        - Input: ``(B, R, n_angles)`` or ``(B, 1, R, n_angles)`` float log-polar patches of
          ``config.grid`` (``R = n_rings + 2 * context_rings``; gray values, each patch is
          standardised to zero mean and unit RMS here).
        - Output: ``(B, R - 2 * context_rings)`` logits (``(B, n_rings)`` for ``config.grid``);
          ``softmax`` is the histogram over ring radii.
    """

    def __init__(self, config: ScalePoseConfig | None = None) -> None:
        super().__init__()
        if config is not None and not isinstance(config, ScalePoseConfig):
            raise TypeError(f"config must be a ScalePoseConfig, got {type(config).__name__}")
        self.config = c = config or ScalePoseConfig()
        self.conv = _CircularConv(1, c.channels)
        # (T, 2h) cosines and sines of the first angular harmonics, for the patch (T angles) and the
        # convolution's output (T / 2 angles): |x @ basis| pairs are Fourier magnitudes
        self.register_buffer("basis", _harmonic_basis(c.n_angles, c.harmonics))
        self.register_buffer("basis2", _harmonic_basis(c.n_angles // 2, c.harmonics))
        n_feat = (1 + c.channels) * c.harmonics + c.channels
        h = c.hidden
        layers: list[nn.Module] = [nn.Conv1d(n_feat, h, 3), nn.ReLU()]
        for k in range(1, c.ring_layers + 1):  # valid: context_rings = 1 + 1 + 2 + 4 + ...
            layers += [nn.Conv1d(h, h, 3, dilation=2**k), nn.ReLU()]
        self.rings = nn.Sequential(*layers, nn.Conv1d(h, 1, 1))

    def fused(self) -> LogPolarScaleNet:
        """This network in evaluation mode with its batch norm folded into the convolution (same
        outputs, faster; it cannot be trained afterwards)."""
        self.eval()
        if not isinstance(self.conv.bn, nn.Identity):
            self.conv.fuse()
        return self

    def sizes(
        self, logits: torch.Tensor, k: int = 1, first_ring: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` strongest modes of the scale histograms of ``(B, K)`` logits: sizes ``(B, k)``
        in pixels (``size_factor`` times the ring radius, sub-ring refined) and their histogram mass
        ``(B, k)``. The logits are of the histogram's rings ``first_ring .. first_ring + K - 1``
        (``(B,)``; default: all ``n_rings`` from the first)."""
        c = self.config
        pos, score = histogram_peaks(F.softmax(logits, -1), min(k, logits.shape[-1]), circular=False)
        if first_ring is not None:
            pos = pos + first_ring.to(pos)[:, None]
        return c.size_factor * c.min_radius * torch.exp2(pos / c.rings_per_octave), score

    def features(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-ring features ``(B, n_feat, n_rings)``, unchanged by a circular shift of the patch
        by an even number of angles (the stride-2 convolution aliases odd shifts)."""
        c = self.config
        x = patches if patches.ndim == 4 else patches[:, None]
        m = c.context_rings
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[3] != c.n_angles or x.shape[2] <= 2 * m:
            raise ValueError(
                f"LogPolarScaleNet takes (B, R, {c.n_angles}) log-polar patches with R > {2 * m} rings "
                f"(config.grid: R = {c.grid.n_rings}), got {tuple(patches.shape)}"
            )
        x = local_standardize(x, NORM_RINGS)
        y = self.conv(x)  # (B, C, R - 2, T / 2)
        z = torch.cat([x[:, :, 1:-1] @ self.basis, y @ self.basis2], 1)  # (B, 1 + C, R - 2, 2h)
        h = self.config.harmonics
        mags = (z[..., :h].square() + z[..., h:].square() + 1e-12).sqrt()  # (B, 1 + C, R - 2, h)
        if c.signed_mean:  # the ring mean keeps its sign (a dark or a bright blob)
            mags = torch.cat([z[..., :1], mags[..., 1:]], -1)
        return torch.cat([mags.permute(0, 1, 3, 2).flatten(1, 2), y.amax(-1)], 1)  # (B, n_feat, R - 2)

    def raw_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """``(B, R - 2 * context_rings)`` logits before the norm :meth:`forward` gives them: each
        depends on its own ``2 * (context_rings + NORM_RINGS) + 1`` rings of the patch only."""
        return self.rings(self.features(patches))[:, 0]

    def normalize_logits(self, z: torch.Tensor, n_rings: int | None = None) -> torch.Tensor:
        """Centre ``(B, K)`` raw logits and scale them to an L2 norm of ``logit_norm`` (0: as they
        are). ``n_rings``: ``z`` holds a window of the logits of that many rings; the norm is
        extrapolated from the window's (the histogram's shape within the window is kept)."""
        if self.config.logit_norm <= 0:
            return z
        z = z - z.mean(-1, keepdim=True)
        gain = 1.0 if n_rings is None else math.sqrt(z.shape[-1] / n_rings)
        return self.config.logit_norm * gain * F.normalize(z, dim=-1, eps=1e-6)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.normalize_logits(self.raw_logits(patches))


__all__ = ["LogPolarScaleNet", "ScalePoseConfig"]
