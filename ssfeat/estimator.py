"""PatchPoseEstimator: the user-facing patch-pose API (tensors in, poses out; OpenCV and kornia
adapters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.images import read_image, to_gray_float, to_uint8
from .features import strongest_distinct
from .geometry import angle_to_cv2, inside_image, laf_from_pose
from .models.layers import fuse_batchnorm
from .models.patch_pose import PatchPoseNet, decode_pose
from .patches import sample_patches


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


def _as_image(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()  # uint8 / uint16 keep their dtype so to_gray_float scales them
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        a = t.numpy() if t.dtype in (torch.uint8, torch.uint16) else t.float().numpy()
        if a.ndim == 3 and a.shape[2] >= 3:  # tensors are RGB; to_gray_float expects OpenCV's BGR order
            a = a[:, :, [2, 1, 0]]
        return to_gray_float(a)
    return to_gray_float(np.asarray(image))


class PatchPoseEstimator(nn.Module):
    """Estimate the orientation and log2 scale of image patches.

    Conventions (see :mod:`ssfeat.geometry`): if patch B shows patch A's content rotated
    counter-clockwise on screen by ``theta``, ``orientation(B) - orientation(A) == theta (mod 2pi)``;
    if B shows A's content magnified by ``s``, ``log2_scale(B) - log2_scale(A) == log2(s)``.

    Args:
        model: a trained :class:`PatchPoseNet`.
        batch_size: patches per forward pass (memory / cache bound only).

    Example:
        >>> est = PatchPoseEstimator.from_pretrained()
        >>> out = est(torch.rand(4, 1, 32, 32))
        >>> out.orientation.shape, out.ori_hist.shape
        (torch.Size([4]), torch.Size([4, 36]))
    """

    def __init__(self, model: PatchPoseNet, batch_size: int = 256) -> None:
        super().__init__()
        self.model = model.eval()
        self.config = model.config
        self.batch_size = batch_size

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
        90-degree equivariant and more accurate, about 5x slower; ``c4=False`` switches every rotation
        averaging off (``None``: as stored). ``c4_below`` sets the adaptive C4 threshold: patches whose
        orientation histogram peak probability is below it get the four-rotation average, the others
        a single pass (the bundled model stores a threshold calibrated on held-out training photos;
        0: off)."""
        from .hub import load_model

        model = load_model(name_or_path)
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
        """Validate ``(B, 1|3, P, P)`` patches in ``[0, 1]`` and return gray ``(B, 1, P0, P0)``
        at the network's input size.

        Raises:
            ValueError: wrong type, shape or non-finite values.
        """
        if not isinstance(patches, torch.Tensor):
            raise ValueError(f"patches must be a torch.Tensor, got {type(patches).__name__}")
        if patches.ndim != 4 or patches.shape[1] not in (1, 3) or patches.shape[2] != patches.shape[3]:
            raise ValueError(f"patches must have shape (B, 1 or 3, P, P), got {tuple(patches.shape)}")
        if not patches.is_floating_point():
            raise ValueError(f"patches must be a float tensor with values in [0, 1], got {patches.dtype}")
        if not torch.isfinite(patches.sum(dtype=torch.float64)):  # one reduction; float64 cannot overflow
            raise ValueError("patches contain NaN or Inf values")
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
        """The ``k`` strongest orientation and scale modes per patch (multi-pose, paper Table 2); a
        ``k`` above a histogram's bin count (36 / 13) gives that many modes."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        d = decode_pose(*self._logits(patches), self.config, k=k)
        return TopKPoses(d["orientation"], d["log2_scale"], d["ori_score"], d["scale_score"])

    def extract(self, image, xy: np.ndarray, support: float = 32.0) -> torch.Tensor:
        """Axis-aligned patches ``(N, 1, P, P)`` of side ``support`` pixels centred at ``xy`` ``(N, 2)``
        (reflected at the image border)."""
        img = _as_image(image)
        if not (math.isfinite(support) and support > 0):
            raise ValueError(f"support must be a positive window side in pixels, got {support}")
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
            keypoints: ``cv2.KeyPoint`` list (may be empty); positions are kept.
            support: side in pixels of the window read around each keypoint.

        Returns:
            new keypoints with ``angle`` (OpenCV degrees, see :func:`ssfeat.geometry.angle_to_cv2`) and
            ``size = support * 2**log2_scale``; ``response``, ``octave`` and ``class_id`` are copied.
        """
        if len(keypoints) == 0:
            return []
        if not all(isinstance(k, cv2.KeyPoint) for k in keypoints):
            raise ValueError("keypoints must be cv2.KeyPoint objects (estimate_laf takes (N, 2) positions)")
        xy = np.array([k.pt for k in keypoints])
        out = self(self.extract(image, xy, support))
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
    img = _as_image(image)
    u8 = to_uint8(img)
    return strongest_distinct(cv2.SIFT_create(nfeatures=n).detect(u8, None), n)


__all__ = ["PatchPoseEstimator", "PoseOutput", "TopKPoses", "detect_sift"]
