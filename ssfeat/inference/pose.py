"""PatchPoseEstimator: the user-facing patch-pose API (tensors in, poses out; OpenCV and kornia
adapters)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import as_image, to_uint8
from ..features import strongest_distinct
from ..geometry import angle_to_cv2, inside_image, laf_from_pose
from ..models.layers import fuse_batchnorm
from ..models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose
from ..models.weights import load_pose_model
from ..patches import sample_patches

# patches are float in [0, 1]; values further than this outside are refused. The margin leaves room
# for the overshoot of bicubic / Lanczos resampling (up to about 0.15 on real photos) and still
# catches 8-bit data (0..255) and mean/std-normalised inputs
RANGE_TOLERANCE = 0.5


@dataclass
class PoseOutput:
    """Per-patch poses. ``orientation`` ``(B,)`` radians CCW in ``[0, 2pi)``; ``log2_scale`` ``(B,)``;
    ``ori_hist`` ``(B, 36)`` and ``scale_hist`` ``(B, 13)`` probabilities."""

    orientation: torch.Tensor
    log2_scale: torch.Tensor
    ori_hist: torch.Tensor
    scale_hist: torch.Tensor


@dataclass
class TopKPoses:
    """The ``k`` strongest histogram modes per patch, strongest first: ``orientation``,
    ``log2_scale``, ``ori_score``, ``scale_score``, all ``(B, k)``."""

    orientation: torch.Tensor
    log2_scale: torch.Tensor
    ori_score: torch.Tensor
    scale_score: torch.Tensor


class PatchPoseEstimator(nn.Module):
    """Estimate the orientation and log2 scale of image patches.

    Conventions (see :mod:`ssfeat.geometry`): if patch B shows patch A's content rotated
    counter-clockwise on screen by ``theta``, ``orientation(B) - orientation(A) == theta (mod 2pi)``;
    if B shows A's content magnified by ``s``, ``log2_scale(B) - log2_scale(A) == log2(s)``.

    Args:
        model: a trained :class:`PatchPoseNet`.
        batch_size: patches per forward pass (memory / cache bound only), an int >= 1.

    Patches are float tensors with values in ``[0, 1]`` (values more than ``RANGE_TOLERANCE`` = 0.5
    outside, NaN, Inf and integer dtypes are refused with a ``ValueError``: divide 8-bit data by 255;
    resampling overshoot, as from bicubic upsampling, is accepted).

    Example:
        >>> est = PatchPoseEstimator.from_pretrained()
        >>> out = est(torch.rand(4, 1, 32, 32))
        >>> out.orientation.shape, out.ori_hist.shape
        (torch.Size([4]), torch.Size([4, 36]))
    """

    def __init__(self, model: PatchPoseNet, batch_size: int = 256) -> None:
        super().__init__()
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "config", None), PatchPoseConfig):
            raise TypeError(
                f"model must be a PatchPoseNet, got {type(model).__name__} "
                "(PatchPoseEstimator.from_pretrained loads one from a name or file)"
            )
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"batch_size must be an int >= 1 (patches per forward pass), got {value!r}")
        self._batch_size = int(value)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "patchpose",
        device: str | torch.device = "cpu",
        c4: bool | None = None,
        c4_below: float | None = None,
    ) -> PatchPoseEstimator:
        """The bundled model (default; no network access), a ``.safetensors`` file written by
        ``ssfeat export``, or a training run folder / checkpoint.

        ``c4=True`` averages the network over the four 90-degree rotations of each patch: exactly
        90-degree equivariant and more accurate, about 4x the time of one pass; ``c4=False`` switches every rotation
        averaging off (``None``: as stored). ``c4_below`` sets the adaptive C4 threshold: patches whose
        orientation histogram peak probability is below it get the four-rotation average, the others
        a single pass (the bundled model stores a threshold calibrated on held-out training photos;
        0: off).

        Raises:
            TypeError: ``name_or_path`` is not a str or path.
            ValueError: unknown model or bad file; unknown device or one this machine lacks (e.g.
                ``"cuda"`` without CUDA); ``c4`` / ``c4_below`` of the wrong type or range.
        """
        device = check_device(device)
        if c4 is not None and not isinstance(c4, bool):
            raise ValueError(f"c4 must be True, False or None, got {c4!r}")
        if c4_below is not None and (isinstance(c4_below, bool) or not isinstance(c4_below, numbers.Real)):
            raise ValueError(f"c4_below must be a number in [0, 1] or None, got {c4_below!r}")
        model = load_pose_model(name_or_path)
        if c4 is not None:
            model.set_c4(c4)
            if not c4:
                model.set_c4_below(0.0)
        if c4_below is not None:
            model.set_c4_below(c4_below)
        return cls(fuse_batchnorm(model)).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, patches: torch.Tensor) -> torch.Tensor:
        """Validate ``(B, 1|3, P, P)`` float patches in ``[0, 1]`` (``P >= 1``, ``B`` may be 0) and
        return gray ``(B, 1, P0, P0)`` at the network's input size.

        Raises:
            ValueError: wrong type, shape or dtype; NaN/Inf; values outside ``[0, 1]`` by more
                than ``RANGE_TOLERANCE``.
        """
        if not isinstance(patches, torch.Tensor):
            raise ValueError(f"patches must be a torch.Tensor, got {type(patches).__name__}")
        shape = tuple(patches.shape)
        if patches.ndim != 4 or shape[1] not in (1, 3) or shape[2] != shape[3] or shape[2] < 1:
            raise ValueError(f"patches must have shape (B, 1 or 3, P, P) with P >= 1, got {shape}")
        if not patches.is_floating_point():
            raise ValueError(
                f"patches must be a floating-point tensor with values in [0, 1], got dtype {patches.dtype} "
                "(8-bit data: patches.float() / 255)"
            )
        if patches.numel():
            lo, hi = torch.stack(torch.aminmax(patches)).tolist()  # one pass; NaN propagates to both
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError("patches contain NaN or Inf values")
            if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
                raise ValueError(
                    f"patch values must be in [0, 1], found [{lo:g}, {hi:g}] "
                    "(divide 0..255 data by 255; undo any mean/std normalisation)"
                )
        x = patches.to(self.device, torch.float32)
        if x.shape[1] == 3:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        P = self.config.patch_size
        if x.shape[-1] != P and x.shape[0] > 0:
            x = F.interpolate(x, size=(P, P), mode="bilinear", align_corners=False, antialias=x.shape[-1] > P)
        return x

    @torch.inference_mode()
    def _logits(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(patches)
        if x.shape[0] == 0:
            c = self.config
            return x.new_zeros(0, c.n_ori_bins), x.new_zeros(0, c.n_scale_bins)
        outs = [self.model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def forward(self, patches: torch.Tensor) -> PoseOutput:
        """Poses of ``(B, 1|3, P, P)`` patches (any ``P``; resized internally)."""
        d = decode_pose(*self._logits(patches), self.config, k=1)
        return PoseOutput(d["orientation"][:, 0], d["log2_scale"][:, 0], d["ori_hist"], d["scale_hist"])

    def topk(self, patches: torch.Tensor, k: int) -> TopKPoses:
        """The ``k`` strongest orientation and scale modes per patch (multi-pose, paper Table 2).
        ``k`` is an int from 1 to the larger bin count (36); a ``k`` above the scale histogram's bin
        count (13) gives that many scale modes.

        Raises:
            ValueError: ``k`` not an int in that range, or bad patches (see :meth:`prepare`).
        """
        kmax = max(self.config.n_ori_bins, self.config.n_scale_bins)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= kmax:
            raise ValueError(f"k must be an int from 1 to {kmax} (the larger histogram's bin count), got {k!r}")
        k = int(k)
        d = decode_pose(*self._logits(patches), self.config, k=k)
        return TopKPoses(d["orientation"], d["log2_scale"], d["ori_score"], d["scale_score"])

    def extract(self, image, xy: np.ndarray, support: float = 32.0) -> torch.Tensor:
        """Axis-aligned patches ``(N, 1, P, P)`` of side ``support`` pixels centred at ``xy`` ``(N, 2)``
        (reflected at the image border)."""
        return self._extract(as_image(image), xy, support)

    def _extract(self, img: np.ndarray, xy, support: float) -> torch.Tensor:
        """:meth:`extract` from an image already read by :func:`_as_image`."""
        check_support(support)
        H, W = img.shape
        if min(H, W) < support:
            raise ValueError(f"the {W}x{H} image is smaller than the {support:g} px window read around keypoints")
        xy = image_points(xy, img.shape)
        P = self.config.patch_size
        A = np.eye(2) * (support / P)
        return sample_patches(img, xy, A, P)[:, None]

    def estimate(self, image, keypoints: list[cv2.KeyPoint], support: float = 32.0) -> list[cv2.KeyPoint]:
        """Set ``angle`` and ``size`` of OpenCV keypoints from the learned pose.

        Args:
            image: path, ``(H, W[, 3|4])`` array (uint8, uint16 or float in [0, 1]) or tensor.
            keypoints: ``cv2.KeyPoint`` list or tuple (may be empty: ``[]`` once the image is
                read); positions are kept.
            support: side in pixels of the window read around each keypoint.

        Raises:
            ValueError: ``keypoints`` not a list of ``cv2.KeyPoint``, bad image or ``support``, keypoint
                outside the image or window larger than it.

        Returns:
            new keypoints with ``angle`` (OpenCV degrees, see :func:`ssfeat.geometry.angle_to_cv2`) and
            ``size = support * 2**log2_scale``; ``response``, ``octave`` and ``class_id`` are copied.
        """
        numeric = isinstance(keypoints, np.ndarray) and keypoints.dtype != np.dtype(object)
        if numeric or not isinstance(keypoints, (list, tuple, np.ndarray)):
            raise ValueError(
                f"keypoints must be a list of cv2.KeyPoint, got {type(keypoints).__name__} "
                "(estimate_laf takes (N, 2) positions)"
            )
        img = as_image(image)  # read and checked even without keypoints
        check_support(support)
        if len(keypoints) == 0:
            return []
        if not all(isinstance(k, cv2.KeyPoint) for k in keypoints):
            raise ValueError("keypoints must be cv2.KeyPoint objects (estimate_laf takes (N, 2) positions)")
        xy = np.array([k.pt for k in keypoints])
        out = self(self._extract(img, xy, support))
        ang = angle_to_cv2(out.orientation.cpu().numpy())
        size = support * np.exp2(out.log2_scale.cpu().numpy())
        return [
            cv2.KeyPoint(float(k.pt[0]), float(k.pt[1]), float(s), float(a), k.response, k.octave, k.class_id)
            for k, s, a in zip(keypoints, size, ang)
        ]

    def estimate_laf(self, image, xy: torch.Tensor | np.ndarray, support: float = 32.0) -> torch.Tensor:
        """kornia LAFs ``(1, N, 2, 3)`` at centres ``xy`` ``(N, 2)`` with the learned orientation and
        scale (LAF scale = half the feature size, i.e. ``support / 2 * 2**log2_scale``)."""
        xy_np = xy.detach().cpu().numpy() if isinstance(xy, torch.Tensor) else xy
        xy_np = image_points(xy_np)
        out = self(self.extract(image, xy_np, support))
        size = 0.5 * support * torch.exp2(out.log2_scale.cpu())
        return laf_from_pose(torch.as_tensor(xy_np, dtype=torch.float32), size.float(), out.orientation.cpu().float())


def check_support(support) -> None:
    if isinstance(support, bool) or not isinstance(support, numbers.Real) or not 0 < support < math.inf:
        raise ValueError(f"support must be a positive window side in pixels, got {support!r}")


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (clear errors otherwise)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}, expected e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine; use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use device='cpu'")
    return dev


def image_points(xy, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``(N, 2)`` float64 keypoint positions ``(x, y)`` from an array-like whose last axis holds
    ``(x, y)`` (``(N, 2)``, kornia's ``(1, N, 2)``, OpenCV's ``(N, 1, 2)``; empty: none), checked to
    be finite and, given the image ``shape`` ``(H, W)``, inside the image (pixel centres at
    integers, so ``[-0.5, W - 0.5]``).

    Raises:
        ValueError: wrong shape, NaN/Inf, or points outside the image.
    """
    a = np.asarray(xy, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 2)
    if a.ndim < 2 or a.shape[-1] != 2:
        raise ValueError(f"keypoint positions must be an (N, 2) array of (x, y) (or (1, N, 2)), got shape {a.shape}")
    a = a.reshape(-1, 2)
    if not np.isfinite(a).all():
        raise ValueError("keypoint coordinates contain NaN or Inf")
    if shape is not None:
        outside = ~inside_image(a, shape, margin=-0.5)
        if outside.any():
            raise ValueError(f"{int(outside.sum())} keypoints lie outside the {shape[1]}x{shape[0]} image")
    return a


def detect_sift(image, n: int = 500) -> list[cv2.KeyPoint]:
    """OpenCV SIFT keypoints (positions only matter to ssfeat) on any supported image input."""
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"n must be between 1 and 1,000,000 keypoints, got {n}")
    img = as_image(image)
    u8 = to_uint8(img)
    return strongest_distinct(cv2.SIFT_create(nfeatures=n).detect(u8, None), n)


__all__ = ["PatchPoseEstimator", "PoseOutput", "TopKPoses", "check_device", "detect_sift", "image_points"]
