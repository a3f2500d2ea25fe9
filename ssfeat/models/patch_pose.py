"""PatchPoseNet: orientation and scale histograms of a square gray patch."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BACKBONES, mlp_head

# backbones that flatten a fixed-size feature map (fast_cnn: 4x4) read exactly this patch size; the
# others pool globally and take any patch_size >= _MIN_PATCH
_FIXED_INPUT = {"tiny": 32, "fast": 32, "small": 32}
_MIN_PATCH = 8


def _require_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")


def _require_real(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")


def config_fields(cls: type, d) -> dict:
    """``d`` as the keyword arguments of the config dataclass ``cls``, checked to be a mapping of its
    field names (as stored in weights files and checkpoints).

    Raises:
        TypeError: ``d`` is not a mapping.
        ValueError: unknown keys.
    """
    if not isinstance(d, Mapping):
        raise TypeError(f"a {cls.__name__} is read from a dict of its fields, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}"
        )
    return dict(d)


@dataclass
class PatchPoseConfig:
    """Architecture of :class:`PatchPoseNet` (stored in every checkpoint and weights file)."""

    backbone: str = "tiny"  # key of ssfeat.models.layers.BACKBONES (the bundled default)
    n_ori_bins: int = 36  # orientation bins over [0, 2pi); bin i is centred at 2pi i / n
    n_scale_bins: int = 13  # log2-scale bins centred on linspace(-scale_range, scale_range, n)
    scale_range: float = 2.0
    patch_size: int = 32  # network input size; other sizes are resized by the estimator
    c4_symmetric: bool = False  # average over the four 90-degree rotations (exact C4 equivariance)
    logit_norm: float = 12.0  # centre logits and rescale to this L2 norm (0: raw logits)
    # adaptive C4 (inference only, without c4_symmetric): patches whose orientation histogram peak
    # probability is below this get the four-rotation average; 0: off
    c4_below: float = 0.0
    # one backbone per head, as the paper (two separate networks); measured here: a shared ResNet-18
    # backbone did not start to learn orientation in 450 steps (the scale pairs, at random rotations,
    # pull its pooled features towards rotation invariance), one trained on orientation alone did
    separate_backbones: bool = False
    # soft circular input window, radius in half patch sides (1: the inscribed disk; 0: off): pixels
    # outside are left out of the standardisation and zeroed, since a view turned by other than a
    # multiple of 90 degrees shows different content there
    window: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}, expected one of {sorted(BACKBONES)}")
        for name in ("n_ori_bins", "n_scale_bins", "patch_size"):
            _require_int(name, getattr(self, name))
        for name in ("scale_range", "logit_norm", "c4_below", "window"):
            _require_real(name, getattr(self, name))
        for name in ("c4_symmetric", "separate_backbones"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.n_ori_bins < 2:
            raise ValueError(f"the orientation histogram needs >= 2 bins, got n_ori_bins={self.n_ori_bins}")
        if not math.isfinite(self.window) or self.window < 0:
            raise ValueError(f"window must be a finite radius >= 0 (0: off), got {self.window}")
        if self.n_scale_bins < 2 or not (math.isfinite(self.scale_range) and self.scale_range > 0):
            raise ValueError(
                f"the scale histogram needs >= 2 bins over a finite range > 0, got {self.n_scale_bins} bins "
                f"over [-{self.scale_range}, {self.scale_range}]"
            )
        if not (math.isfinite(self.logit_norm) and self.logit_norm >= 0):
            raise ValueError(f"logit_norm must be a finite L2 norm >= 0 (0: raw logits), got {self.logit_norm}")
        if not 0.0 <= self.c4_below <= 1.0:  # also refuses NaN
            raise ValueError(f"c4_below must be a peak probability in [0, 1] (0: off), got {self.c4_below}")
        if (self.c4_symmetric or self.c4_below > 0) and self.n_ori_bins % 4:
            raise ValueError(f"C4 rotation averaging needs n_ori_bins divisible by 4, got {self.n_ori_bins}")
        fixed = _FIXED_INPUT.get(self.backbone)
        if fixed is not None and self.patch_size != fixed:
            raise ValueError(
                f"backbone {self.backbone!r} reads {fixed}x{fixed} patches (its head is sized for that input), "
                f"got patch_size={self.patch_size}"
            )
        if self.patch_size < _MIN_PATCH:
            raise ValueError(f"patch_size must be >= {_MIN_PATCH} pixels, got {self.patch_size}")

    @classmethod
    def from_dict(cls, d: dict) -> PatchPoseConfig:
        """A config from a dict of its fields (as stored in weights files and checkpoints); fields
        left out take their defaults, except ``window``, which files written before it existed lack
        (0: off).

        Raises:
            TypeError: ``d`` is not a dict, or a field has the wrong type.
            ValueError: unknown keys or values outside a field's domain.
        """
        return cls(**{"window": 0.0, **config_fields(cls, d)})  # files written before the window existed had none

    @property
    def ori_bin_width(self) -> float:
        return 2 * math.pi / self.n_ori_bins

    @property
    def scale_bin_width(self) -> float:
        return 2 * self.scale_range / (self.n_scale_bins - 1)


class PatchPoseNet(nn.Module):
    """Predict orientation and log2-scale histogram logits of gray patches.

    With ``c4_symmetric`` the network is evaluated on the four 90-degree rotations of the input
    and the orientation logits are rolled back by a quarter turn each before averaging, which makes
    it exactly equivariant to 90-degree rotations (orientation logits roll by ``n_ori_bins / 4``,
    scale logits unchanged). With ``c4_below > 0`` instead (adaptive C4, evaluation mode only), a
    single pass runs on every patch and only the patches whose orientation histogram peak is below
    ``c4_below`` (the uncertain ones) also get the other three rotations and the average: most of
    the accuracy of ``c4_symmetric`` at a fraction of its cost. A patch's output never depends on
    the other patches of its batch.

    Args:
        config: architecture; ``self.config``.

    Shape:
        - Input: ``(B, 1, P, P)`` float with ``P = config.patch_size``, values in ``[0, 1]`` (other
          shapes and dtypes raise ``ValueError``; values are not checked here, for speed:
          :class:`~ssfeat.PatchPoseEstimator` checks them).
        - Output: orientation logits ``(B, n_ori_bins)``, scale logits ``(B, n_scale_bins)``;
          ``softmax`` of each is the histogram.

    Example:
        >>> net = PatchPoseNet(PatchPoseConfig(backbone="fast")).eval()
        >>> ori, sca = net(torch.rand(2, 1, 32, 32))
        >>> ori.shape, sca.shape
        (torch.Size([2, 36]), torch.Size([2, 13]))
    """

    def __init__(self, config: PatchPoseConfig | None = None) -> None:
        super().__init__()
        if config is not None and not isinstance(config, PatchPoseConfig):
            raise TypeError(f"config must be a PatchPoseConfig (from_dict reads a dict), got {type(config).__name__}")
        self.config = config = config or PatchPoseConfig()  # the config checked its own fields
        self.set_c4(config.c4_symmetric)
        self.set_c4_below(config.c4_below)
        make, dim, hidden = BACKBONES[config.backbone]
        self.backbone = make()
        self.scale_backbone = make() if config.separate_backbones else None
        self.ori_head = mlp_head(dim, hidden, config.n_ori_bins)
        self.scale_head = mlp_head(dim, hidden, config.n_scale_bins)

    def set_c4(self, enabled: bool) -> None:
        """Switch the averaging over the four 90-degree rotations on or off (weights unchanged)."""
        if enabled and self.config.n_ori_bins % 4:
            raise ValueError("c4_symmetric needs n_ori_bins divisible by 4")
        self.config.c4_symmetric = enabled

    def set_c4_below(self, threshold: float) -> None:
        """Adaptive C4 threshold on the orientation histogram peak probability (0: off)."""
        if not 0.0 <= threshold <= 1.0 or threshold != threshold:
            raise ValueError(f"c4_below must be in [0, 1], got {threshold}")
        if threshold > 0 and self.config.n_ori_bins % 4:
            raise ValueError("adaptive C4 needs n_ori_bins divisible by 4")
        self.config.c4_below = float(threshold)

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        fs = f if self.scale_backbone is None else self.scale_backbone(x)
        return self.ori_head(f), self.scale_head(fs)

    def _check_patches(self, patches) -> None:
        """Refuse anything but finite float ``(B, 1, P, P)`` patches, with a clear message."""
        P = self.config.patch_size
        if not (isinstance(patches, torch.Tensor) and patches.ndim == 4 and patches.shape[1:] == (1, P, P)):
            got = f"shape {tuple(patches.shape)}" if isinstance(patches, torch.Tensor) else type(patches).__name__
            raise ValueError(
                f"PatchPoseNet takes (B, 1, {P}, {P}) gray patches, got {got} "
                "(PatchPoseEstimator converts color patches and resizes other sizes)"
            )
        if not patches.is_floating_point():
            raise ValueError(f"PatchPoseNet takes float patches with values in [0, 1], got {patches.dtype}")
        # one reduction (NaN and Inf propagate to the sum), in float64 so that float16 input cannot overflow
        if not bool(torch.isfinite(patches.sum(dtype=torch.float64))):
            raise ValueError("PatchPoseNet got patches with NaN or Inf values")

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        self._check_patches(patches)
        x = standardize(patches, cfg.window)
        if cfg.c4_symmetric:
            ori, sca = self._c4_average(x)
        else:
            ori, sca = self._raw(x)
            if cfg.c4_below > 0 and not self.training:
                low = F.softmax(self._normed(ori), -1).amax(-1) < cfg.c4_below
                if low.any():
                    ori_low, sca_low = self._c4_average(x[low], ori[low], sca[low])
                    ori, sca = ori.clone(), sca.clone()
                    ori[low], sca[low] = ori_low, sca_low
        return self._normed(ori), self._normed(sca)

    def scale_logits(self, patches: torch.Tensor) -> torch.Tensor:
        """Scale logits ``(B, n_scale_bins)`` of ``(B, 1, P, P)`` patches without computing the
        orientation branch (with separate backbones, its backbone is not run): ``forward(patches)[1]``
        with ``c4_symmetric`` (the average over the four 90-degree rotations), else that of a single
        pass (adaptive C4 left out). Used for distillation targets."""
        self._check_patches(patches)
        x = standardize(patches, self.config.window)
        if self.config.c4_symmetric:
            x = torch.cat([torch.rot90(x, k, (-2, -1)) for k in range(4)])
        f = self.backbone(x) if self.scale_backbone is None else self.scale_backbone(x)
        z = self.scale_head(f)
        if self.config.c4_symmetric:
            z = z.view(4, patches.shape[0], -1).mean(0)
        return self._normed(z)

    def _normed(self, z: torch.Tensor) -> torch.Tensor:
        return _fixed_norm(z, self.config.logit_norm) if self.config.logit_norm > 0 else z

    def _c4_average(
        self, x: torch.Tensor, ori0: torch.Tensor | None = None, sca0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw logits of ``(B, 1, P, P)`` standardised patches averaged over their four 90-degree
        rotations, the orientation logits rolled back by a quarter per turn. ``ori0, sca0``: the
        raw logits of the unrotated patches when already computed."""
        B, q = x.shape[0], self.config.n_ori_bins // 4
        turns = range(4) if ori0 is None else range(1, 4)
        xr = torch.cat([torch.rot90(x, k, (-2, -1)) for k in turns]).contiguous()  # k quarter turns CCW
        ori, sca = self._raw(xr)
        oris = [torch.roll(ori[i * B : (i + 1) * B], -k * q, -1) for i, k in enumerate(turns)]
        scas = list(sca.view(len(turns), B, -1))
        if ori0 is not None:
            oris, scas = [ori0, *oris], [sca0, *scas]
        return torch.stack(oris).mean(0), torch.stack(scas).mean(0)


def circular_window(size: int, radius: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(size, size)`` soft disk centred on the patch: 1 inside ``radius`` half sides, falling to 0
    over about ``size / 32`` pixels (a logistic edge) around it."""
    u = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    r = torch.sqrt(u[None, :] ** 2 + u[:, None] ** 2)
    return torch.sigmoid((radius * size / 2.0 - r) / (size / 32.0))


def standardize(patches: torch.Tensor, window: float = 0.0) -> torch.Tensor:
    """Per-patch zero mean and unit RMS (invariance to brightness and contrast) of ``(B, C, P, P)``
    patches; with ``window > 0`` the statistics are weighted by :func:`circular_window` and the
    result is multiplied by it."""
    P = patches.shape[-1]
    w = circular_window(P, window, patches.device, patches.dtype) if window > 0 else patches.new_ones(P, P)
    total = w.sum() * patches.shape[1]
    x = patches - (patches * w).sum((1, 2, 3), keepdim=True) / total
    return x / (((x.square() * w).sum((1, 2, 3), keepdim=True) / total).sqrt() + 1e-3) * w


def _fixed_norm(z: torch.Tensor, norm: float) -> torch.Tensor:
    """Centre ``(B, K)`` logits and rescale each row to L2 norm ``norm``."""
    z = z - z.mean(-1, keepdim=True)
    return norm * F.normalize(z, dim=-1, eps=1e-6)


def histogram_peaks(prob: torch.Tensor, k: int, circular: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` strongest modes of histograms with sub-bin refinement.

    Local maxima come first (by probability), then the remaining bins by probability, so ``k`` may
    exceed the number of modes. Each position is refined by a parabola through the log-probabilities
    of the bin and its two neighbours.

    Args:
        prob: ``(B, K)`` histograms.
        k: number of candidates (``1 <= k <= K``).
        circular: neighbours wrap around (orientation) or not (scale; edge bins are not refined).

    Returns:
        ``positions`` ``(B, k)`` in bins (float; circular ones in ``[0, K)``), ``scores`` ``(B, k)``.
    """
    K = prob.shape[-1]
    logp = torch.log(prob.clamp_min(1e-12))
    if circular:
        left, right = torch.roll(logp, 1, -1), torch.roll(logp, -1, -1)
    else:
        left = torch.cat([logp[:, :1], logp[:, :-1]], -1)
        right = torch.cat([logp[:, 1:], logp[:, -1:]], -1)
    is_peak = (logp >= left) & (logp >= right)
    rank_key = prob + is_peak.to(prob.dtype) * 2.0  # peaks first
    scores, idx = rank_key.topk(k, -1)
    scores = scores - 2.0 * (scores > 1.0).to(scores.dtype)
    l, c, r = left.gather(-1, idx), logp.gather(-1, idx), right.gather(-1, idx)
    denom = l - 2 * c + r
    delta = torch.where(denom < -1e-9, 0.5 * (l - r) / denom.clamp(max=-1e-9), torch.zeros_like(c))
    delta = delta.clamp(-0.5, 0.5)
    if not circular:
        delta = torch.where((idx == 0) | (idx == K - 1), torch.zeros_like(delta), delta)
    pos = idx.to(prob.dtype) + delta
    if circular:
        pos = torch.remainder(pos, K)
    return pos, scores


def decode_pose(
    ori_logits: torch.Tensor, scale_logits: torch.Tensor, config: PatchPoseConfig, k: int = 1
) -> dict[str, torch.Tensor]:
    """Histograms and the top-``k`` poses from logits ``(B, K_ori)``, ``(B, K_sca)``.

    Returns:
        dict with ``ori_hist`` ``(B, K_ori)``, ``scale_hist`` ``(B, K_sca)``, ``orientation``
        ``(B, k)`` radians in ``[0, 2pi)``, ``log2_scale`` ``(B, k)``, ``ori_score`` and
        ``scale_score`` ``(B, k)`` (histogram mass of the chosen bins).
    """
    po, ps = F.softmax(ori_logits, -1), F.softmax(scale_logits, -1)
    opos, osc = histogram_peaks(po, min(k, po.shape[-1]), circular=True)
    spos, ssc = histogram_peaks(ps, min(k, ps.shape[-1]), circular=False)
    return {
        "ori_hist": po,
        "scale_hist": ps,
        "orientation": torch.remainder(opos * config.ori_bin_width, 2 * math.pi),
        "log2_scale": spos * config.scale_bin_width - config.scale_range,
        "ori_score": osc,
        "scale_score": ssc,
    }
