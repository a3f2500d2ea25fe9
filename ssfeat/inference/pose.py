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
from ..geometry import angle_to_cv2, laf_from_pose
from ..logpolar import sample_logpolar
from ..models.layers import check_positions, check_unit_images, fuse_batchnorm, gray_channels
from ..models.patch_pose import PatchPoseConfig, PatchPoseNet, decode_pose
from ..models.scale_pose import NORM_RINGS, LogPolarScaleNet
from ..models.weights import load_pose_model, load_scale_model
from ..patches import sample_patches


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


@dataclass
class KeypointPoses:
    """The ``k`` strongest poses of each keypoint, strongest first, from its own image:
    ``orientation`` ``(N, k)`` radians CCW in ``[0, 2pi)``, ``size`` ``(N, k)`` pixels
    (``cv2.KeyPoint.size``'s meaning), ``ori_score`` and ``size_score`` ``(N, k)`` histogram mass;
    the histograms ``ori_hist`` ``(N, n_ori_bins)`` (at the strongest size) and ``size_hist``
    ``(N, n_rings)`` (over the scale network's ring radii); ``ori_at_size`` ``(N, k)``: the
    strongest orientation read at each of the ``k`` sizes (column 0 is ``orientation[:, 0]``)."""

    orientation: torch.Tensor
    size: torch.Tensor
    ori_score: torch.Tensor
    size_score: torch.Tensor
    ori_hist: torch.Tensor
    size_hist: torch.Tensor
    ori_at_size: torch.Tensor


# width (octaves) of the Gaussian prior that ``size_prior`` puts on the log2 size around the given size:
# on SIFT keypoints of similarity views, 0.5 / 0.25 / 0.15 / 0.1 gave size within 1/3 octave for
# 80.8 / 87.8 / 93.6 / 94.1 % of keypoint pairs and orientation within 10 degrees for 78.7 / 84.3 / 87.6 / 88.1 %
SIZE_PRIOR_OCTAVES = 0.15
# with a size prior only the histogram rings within this many of the prior's are computed: 1 octave
# at 4 rings per octave, where the prior's weight has fallen to exp(-22)
PRIOR_WINDOW_RINGS = 4


class PatchPoseEstimator(nn.Module):
    """Estimate the orientation and log2 scale of image patches.

    Conventions (see :mod:`ssfeat.geometry`): if patch B shows patch A's content rotated
    counter-clockwise on screen by ``theta``, ``orientation(B) - orientation(A) == theta (mod 2pi)``;
    if B shows A's content magnified by ``s``, ``log2_scale(B) - log2_scale(A) == log2(s)``.

    At keypoints of an image (:meth:`estimate`, :meth:`estimate_laf`, :meth:`keypoint_poses`) the
    pose is scale-covariant: ``scale_model`` (:class:`~ssfeat.models.scale_pose.LogPolarScaleNet`)
    reads a log-polar patch around each position and gives its size, then ``model`` reads the
    orientation from a window of ``scale_model.config.ori_window`` times that size, so a zoom of the
    image changes neither what the orientation network sees nor the size relative to the content.

    Args:
        model: a trained :class:`PatchPoseNet` (orientation, and the pose of fixed windows).
        batch_size: patches per forward pass (memory / cache bound only), an int >= 1.
        scale_model: a trained :class:`~ssfeat.models.scale_pose.LogPolarScaleNet`, or ``None``
            (keypoint methods then read fixed windows of ``support`` pixels, as for patches).

    Patches are float tensors with values in ``[0, 1]`` (values more than ``RANGE_TOLERANCE`` = 0.5
    outside, NaN, Inf and integer dtypes are refused with a ``ValueError``: divide 8-bit data by 255;
    resampling overshoot, as from bicubic upsampling, is accepted).

    Example:
        >>> est = PatchPoseEstimator.from_pretrained()
        >>> out = est(torch.rand(4, 1, 32, 32))
        >>> out.orientation.shape, out.ori_hist.shape
        (torch.Size([4]), torch.Size([4, 36]))
    """

    def __init__(self, model: PatchPoseNet, batch_size: int = 256, scale_model: LogPolarScaleNet | None = None) -> None:
        super().__init__()
        if scale_model is not None and not isinstance(scale_model, LogPolarScaleNet):
            raise TypeError(f"scale_model must be a LogPolarScaleNet or None, got {type(scale_model).__name__}")
        self.scale_model = scale_model.eval() if scale_model is not None else None
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
        scale_model: str | Path | None = "scalepose",
    ) -> PatchPoseEstimator:
        """The bundled model (default; no network access), a ``.safetensors`` file written by
        ``ssfeat export``, or a training run folder / checkpoint.

        ``c4=True`` averages the network over the four 90-degree rotations of each patch: exactly
        90-degree equivariant and more accurate, about 4x the time of one pass; ``c4=False`` switches every rotation
        averaging off (``None``: as stored). ``c4_below`` sets the adaptive C4 threshold: patches whose
        orientation histogram peak probability is below it get the four-rotation average, the others
        a single pass (the bundled model stores a threshold calibrated on held-out training photos;
        0: off). ``scale_model``: the keypoint scale network (bundled name, weights file or run; ``None``:
        none, keypoint methods then read fixed windows).

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
        scale = load_scale_model(scale_model).fused() if scale_model is not None else None
        # frozen: outputs need no autograd graph unless the patches require grad (est.requires_grad_()
        # makes the weights trainable again)
        return cls(fuse_batchnorm(model), scale_model=scale).to(device).requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the networks (``.half()``, ``.double()``, ``.to(dtype)`` change it);
        inputs are cast to it, histograms and poses come out in it (float16 networks: in float32)."""
        return next(self.model.parameters()).dtype

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
        check_unit_images(patches, "patches", "patch")
        # resampled in at least float32 (float16 resizing is not implemented on every device)
        x = gray_channels(patches.to(self.device, torch.promote_types(self.dtype, torch.float32)))
        P = self.config.patch_size
        if x.shape[-1] != P and x.shape[0] > 0:
            x = F.interpolate(x, size=(P, P), mode="bilinear", align_corners=False, antialias=x.shape[-1] > P)
        return x.to(self.dtype)

    def _logits(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prepare(patches)
        out_dtype = torch.promote_types(x.dtype, torch.float32)  # histograms of float16 networks in float32
        if x.shape[0] == 0:
            c = self.config
            return x.new_zeros(0, c.n_ori_bins, dtype=out_dtype), x.new_zeros(0, c.n_scale_bins, dtype=out_dtype)
        outs = [self.model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return torch.cat([o[0] for o in outs]).to(out_dtype), torch.cat([o[1] for o in outs]).to(out_dtype)

    def forward(self, patches: torch.Tensor) -> PoseOutput:
        """Poses of ``(B, 1|3, P, P)`` patches (any ``P``; resized internally).

        Differentiable: gradients reach patches that require grad (and the weights, once
        ``requires_grad_()`` is called: :meth:`from_pretrained` returns them frozen) unless the caller
        runs it under ``torch.no_grad()`` / ``torch.inference_mode()``, as the image-level methods
        (:meth:`estimate`, :meth:`estimate_laf`, :meth:`keypoint_poses`) and the pipelines do.
        The orientation is the sub-bin peak of the histogram: its gradient flows through the
        histogram values around the peak, not through the choice of peak bin."""
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

    @torch.inference_mode()
    def keypoint_poses(self, image, xy, sizes=None, k: int = 1) -> KeypointPoses:
        """Scale-covariant poses at keypoint positions, each from its own image.

        The scale network reads a log-polar patch around each position (rings from
        ``min_radius`` to ``max_radius`` pixels) and gives a histogram over sizes; the orientation
        network then reads a window of ``ori_window`` times the chosen size.

        Args:
            image: path, ``(H, W[, 3|4])`` array (uint8, uint16 or float in [0, 1]) or tensor.
            xy: ``(N, 2)`` positions ``(x, y)`` in pixels (also ``(1, N, 2)``; empty: none).
            sizes: optional ``(N,)`` sizes in pixels (e.g. a detector's) that the estimate refines:
                a Gaussian prior of ``SIZE_PRIOR_OCTAVES`` octaves around each; ``None``: from the
                positions alone.
            k: the ``k`` strongest sizes; orientations ``1..k`` are the strongest orientation
                modes at the strongest size, and ``ori_at_size`` the strongest orientation at
                each size (``k - 1`` more orientation passes).

        Returns:
            :class:`KeypointPoses` with ``(N, k)`` tensors on the CPU.

        Raises:
            ValueError: no scale model, bad image, positions or sizes.
        """
        if self.scale_model is None:
            raise ValueError("this estimator has no scale model (from_pretrained(scale_model='scalepose') loads one)")
        kmax = self.config.n_ori_bins
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= kmax:
            raise ValueError(f"k must be an int from 1 to {kmax}, got {k!r}")
        img = as_image(image)
        pts = image_points(xy.detach().cpu().numpy() if isinstance(xy, torch.Tensor) else xy, img.shape)
        n = len(pts)
        if sizes is not None:
            sizes = np.asarray(sizes.detach().cpu() if isinstance(sizes, torch.Tensor) else sizes, np.float64)
            if sizes.shape != (n,) or not (np.isfinite(sizes).all() and (sizes > 0).all()):
                raise ValueError(f"sizes must be {n} finite positive sizes in pixels, got shape {sizes.shape}")
        c = self.scale_model.config
        if n == 0:
            z = torch.zeros(0, k)
            return KeypointPoses(z, z, z, z, torch.zeros(0, self.config.n_ori_bins), torch.zeros(0, c.n_rings), z)
        size, size_score, size_hist = self._sizes(img, pts, sizes, k)
        if size.shape[1] < k:  # fewer scale modes than asked: repeat the strongest
            pad = k - size.shape[1]
            size = torch.cat([size, size[:, :1].expand(-1, pad)], 1)
            size_score = torch.cat([size_score, size_score[:, :1].expand(-1, pad)], 1)
        d = decode_pose(*self._logits(self._ori_patches(img, pts, size[:, 0])), self.config, k=k)
        ori_at_size = [d["orientation"][:, 0]]
        for j in range(1, k):  # the orientation that goes with each further size mode
            ori_at_size.append(self(self._ori_patches(img, pts, size[:, j])).orientation)
        return KeypointPoses(
            d["orientation"].cpu(),
            size.cpu(),
            d["ori_score"].cpu(),
            size_score.cpu(),
            d["ori_hist"].cpu(),
            size_hist.cpu(),
            torch.stack(ori_at_size, 1).cpu(),
        )

    def _sizes(
        self, img: np.ndarray, pts: np.ndarray, sizes: np.ndarray | None, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``k`` strongest sizes ``(N, k)`` px, their mass ``(N, k)`` and the scale histograms
        ``(N, n_rings)`` at ``pts`` (with the prior around ``sizes``, if given: then only the
        histogram rings within ``PRIOR_WINDOW_RINGS`` of each prior are computed)."""
        sm, c = self.scale_model, self.scale_model.config
        n = len(pts)
        first, n_hist, first_in, n_in = None, c.n_rings, None, c.grid.n_rings
        if sizes is not None:  # only the rings the prior leaves any weight need be read
            prior = np.log2(sizes / (c.size_factor * c.min_radius))  # octaves above the first ring
            n_hist = min(c.n_rings, 2 * PRIOR_WINDOW_RINGS + 1)
            centre = np.round(prior * c.rings_per_octave).astype(np.int64)
            first = np.clip(centre - PRIOR_WINDOW_RINGS, 0, c.n_rings - n_hist)
            # the patch window: the rings these histogram rings read, and the NORM_RINGS more either
            # side that their standardisation reads (fewer at the ends of the patch, as there)
            n_in = min(c.grid.n_rings, n_hist + 2 * (c.context_rings + NORM_RINGS))
            first_in = np.clip(first - NORM_RINGS, 0, c.grid.n_rings - n_in)
        lp = sample_logpolar(img, pts, c.grid, first_in, n_in).to(self.device, next(sm.parameters()).dtype)
        chunks = range(0, n, 4 * self.batch_size)
        logits = torch.cat([sm.raw_logits(lp[i : i + 4 * self.batch_size]) for i in chunks])
        if first is not None:  # (N, n_in - 2 m) outputs from histogram ring first_in: keep the window's
            logits = sm.normalize_logits(logits, c.n_rings)
            at = torch.from_numpy(first - first_in)[:, None] + torch.arange(n_hist)
            logits = logits.gather(1, at.to(logits.device))
        else:
            logits = sm.normalize_logits(logits)
        logp = logits.float()
        if sizes is not None:  # log-Gaussian prior around the given sizes, in octaves
            ring = (torch.from_numpy(first)[:, None] + torch.arange(n_hist)).to(logp) / c.rings_per_octave
            logp = logp - 0.5 * ((ring - torch.from_numpy(prior).to(logp)[:, None]) / SIZE_PRIOR_OCTAVES) ** 2
            first = torch.from_numpy(first).to(logp.device)
        logp = F.log_softmax(logp, -1)  # the histogram (with the prior, if any)
        size, size_score = sm.sizes(logp, k, first)
        size_hist = logp.exp()
        if first is not None:  # the window's rings in the whole histogram
            full = size_hist.new_zeros(n, c.n_rings)
            size_hist = full.scatter_(1, first[:, None] + torch.arange(n_hist, device=full.device), size_hist)
        return size, size_score, size_hist

    def _ori_patches(self, img: np.ndarray, pts: np.ndarray, size: torch.Tensor) -> torch.Tensor:
        """``(N, 1, P, P)`` orientation-network windows of ``ori_window`` times ``size`` ``(N,)`` px."""
        P = self.config.patch_size
        side = (self.scale_model.config.ori_window * size).cpu().numpy()
        return sample_patches(img, pts, (side / P)[:, None, None] * np.eye(2), P)[:, None]

    @torch.inference_mode()
    def estimate(
        self,
        image,
        keypoints: list[cv2.KeyPoint],
        size_prior: bool = False,
        support: float | None = None,
    ) -> list[cv2.KeyPoint]:
        """Set ``angle`` and ``size`` of OpenCV keypoints from the learned pose.

        Args:
            image: path, ``(H, W[, 3|4])`` array (uint8, uint16 or float in [0, 1]) or tensor.
            keypoints: ``cv2.KeyPoint`` list or tuple (may be empty: ``[]`` once the image is
                read); positions are kept.
            size_prior: start from each keypoint's ``size`` and refine it (default: the keypoints'
                own size and angle are ignored, the pose comes from the positions alone).
            support: read a fixed axis-aligned window of this many pixels around every keypoint
                instead (the patch protocol; ``size = support * 2**log2_scale``). Default: the
                scale-covariant estimate (:meth:`keypoint_poses`), or 32 px windows for an
                estimator without a scale model.

        Raises:
            ValueError: ``keypoints`` not a list of ``cv2.KeyPoint``, bad image or ``support``, keypoint
                outside the image, or (with ``support``) a window larger than the image.

        Returns:
            new keypoints with ``angle`` (OpenCV degrees, see :func:`ssfeat.geometry.angle_to_cv2`) and
            ``size`` in pixels; ``response``, ``octave`` and ``class_id`` are copied.
        """
        numeric = isinstance(keypoints, np.ndarray) and keypoints.dtype != np.dtype(object)
        if numeric or not isinstance(keypoints, (list, tuple, np.ndarray)):
            raise ValueError(
                f"keypoints must be a list of cv2.KeyPoint, got {type(keypoints).__name__} "
                "(estimate_laf takes (N, 2) positions)"
            )
        img = as_image(image)  # read and checked even without keypoints
        if support is not None or self.scale_model is None:
            support = 32.0 if support is None else support
            check_support(support)
        if len(keypoints) == 0:
            return []
        if not all(isinstance(k, cv2.KeyPoint) for k in keypoints):
            raise ValueError("keypoints must be cv2.KeyPoint objects (estimate_laf takes (N, 2) positions)")
        xy = np.array([k.pt for k in keypoints])
        if support is not None:
            out = self(self._extract(img, xy, support))
            ori, size = out.orientation.cpu().numpy(), support * np.exp2(out.log2_scale.cpu().numpy())
        else:
            prior = np.array([k.size for k in keypoints]) if size_prior else None
            poses = self.keypoint_poses(img, xy, prior)
            ori, size = poses.orientation[:, 0].numpy(), poses.size[:, 0].numpy()
        ang = angle_to_cv2(ori)
        return [
            cv2.KeyPoint(float(k.pt[0]), float(k.pt[1]), float(s), float(a), k.response, k.octave, k.class_id)
            for k, s, a in zip(keypoints, size, ang)
        ]

    @torch.inference_mode()
    def estimate_laf(
        self, image, xy: torch.Tensor | np.ndarray, sizes=None, support: float | None = None
    ) -> torch.Tensor:
        """kornia LAFs ``(1, N, 2, 3)`` at centres ``xy`` ``(N, 2)`` with the learned orientation and
        size (LAF scale = half the feature size). ``sizes`` ``(N,)``: sizes in pixels to refine (see
        :meth:`keypoint_poses`); ``support``: fixed windows instead, as in :meth:`estimate`."""
        xy_np = xy.detach().cpu().numpy() if isinstance(xy, torch.Tensor) else xy
        xy_np = image_points(xy_np)
        if support is not None or self.scale_model is None:
            support = 32.0 if support is None else support
            out = self(self.extract(image, xy_np, support))
            size, ori = support * torch.exp2(out.log2_scale.cpu()), out.orientation.cpu()
        else:
            poses = self.keypoint_poses(image, xy_np, sizes)
            size, ori = poses.size[:, 0], poses.orientation[:, 0]
        return laf_from_pose(torch.as_tensor(xy_np, dtype=torch.float32), 0.5 * size.float(), ori.float())


def check_support(support) -> None:
    if isinstance(support, bool) or not isinstance(support, numbers.Real) or not 0 < support < math.inf:
        raise ValueError(f"support must be a positive window side in pixels, got {support!r}")


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (clear errors otherwise);
    ``"auto"``: CUDA if available, else Apple's MPS if available, else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}, expected e.g. 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto'") from None
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
    check_positions(torch.from_numpy(a), shape)
    return a


def detect_sift(image, n: int = 500) -> list[cv2.KeyPoint]:
    """OpenCV SIFT keypoints (positions only matter to ssfeat) on any supported image input."""
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"n must be between 1 and 1,000,000 keypoints, got {n}")
    img = as_image(image)
    u8 = to_uint8(img)
    return strongest_distinct(cv2.SIFT_create(nfeatures=n).detect(u8, None), n)


__all__ = [
    "KeypointPoses",
    "PatchPoseEstimator",
    "PoseOutput",
    "TopKPoses",
    "check_device",
    "detect_sift",
    "image_points",
]
