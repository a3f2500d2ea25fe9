"""ssfeat's patch pose as ``nn.Module`` s that kornia's local-feature classes take as they are.

* :class:`KorniaOrientation`: the ``angle_detector`` of ``kornia.feature.LAFOrienter`` (and so the
  ``ori_module`` of ``ScaleSpaceDetector`` / ``KeyNetDetector`` through ``LAFOrienter``): patches
  ``(B, 1, PS, PS)`` in, angles ``(B,)`` out, in radians counter-clockwise as displayed, the unit and
  sign of kornia's own ``PatchDominantGradientOrientation`` (``LAFOrienter`` adds them to the LAF's
  orientation in degrees).
* :class:`KorniaScale`: a LAF estimator ``(laf (B, N, 2, 3), img (B, 1, H, W)) -> laf`` like
  ``LAFAffineShapeEstimator`` and ``PassLAF`` (the ``aff_module`` of ``ScaleSpaceDetector``): sets
  each LAF's scale from ssfeat's scale network at its centre, keeping centre, orientation and shape.

Example:
    >>> from kornia.feature import LAFOrienter, ScaleSpaceDetector
    >>> orienter = LAFOrienter(32, angle_detector=KorniaOrientation())
    >>> detector = ScaleSpaceDetector(500, ori_module=orienter, aff_module=KorniaScale())
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .pose import PatchPoseEstimator


class KorniaOrientation(nn.Module):
    """Orientation of patches for ``kornia.feature.LAFOrienter(angle_detector=...)``.

    Args:
        estimator: the patch-pose estimator (default: the bundled ``patchpose`` model, without its
            scale network, which this module does not use).

    Shape:
        - Input: ``(B, 1, PS, PS)`` float patches with values in ``[0, 1]`` (any ``PS``; resized
          to the network's input size).
        - Output: ``(B,)`` radians in ``[-pi, pi)``, counter-clockwise as displayed (content turned
          counter-clockwise by ``theta`` adds ``theta``), in the input's dtype and on its device.

    Differentiable with respect to the patches unless run under ``torch.no_grad()``.
    """

    def __init__(self, estimator: PatchPoseEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator or PatchPoseEstimator.from_pretrained(scale_model=None)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        ori = self.estimator(patches).orientation
        return (torch.remainder(ori + math.pi, 2 * math.pi) - math.pi).to(patches.device, patches.dtype)


class KorniaScale(nn.Module):
    """LAF scale from ssfeat's scale network, in the form of kornia's LAF estimators.

    Each LAF is scaled about its centre so that its scale (kornia's ``get_laf_scale``, the square
    root of the 2x2 part's determinant) becomes ``mr_size * size / 2``, ``size`` being the feature
    size in pixels (``cv2.KeyPoint.size``'s meaning) that :meth:`PatchPoseEstimator.keypoint_poses`
    gives at its centre; orientation and affine shape are kept.

    Args:
        estimator: a patch-pose estimator with a scale network (default: the bundled models).
        mr_size: LAF scale as a multiple of half the feature size (kornia detectors' ``mr_size``).
        size_prior: refine each LAF's own size (``2 * scale / mr_size``) instead of estimating it
            from the centre alone.

    Shape:
        - Input: ``laf`` ``(B, N, 2, 3)``, ``img`` ``(B, 1, H, W)`` in ``[0, 1]``.
        - Output: ``(B, N, 2, 3)``, the input's dtype and device.

    The scale network reads log-polar samples of the image on the CPU side, so the output is not
    differentiable with respect to ``img``; it is with respect to ``laf`` (a per-LAF rescaling).
    Centres outside the image are estimated at the nearest pixel inside it.
    """

    def __init__(self, estimator: PatchPoseEstimator | None = None, mr_size: float = 1.0, size_prior: bool = False):
        super().__init__()
        self.estimator = estimator or PatchPoseEstimator.from_pretrained()
        if self.estimator.scale_model is None:
            raise ValueError("KorniaScale needs an estimator with a scale model")
        if not (isinstance(mr_size, (int, float)) and math.isfinite(mr_size) and mr_size > 0):
            raise ValueError(f"mr_size must be a positive number, got {mr_size!r}")
        self.mr_size, self.size_prior = float(mr_size), size_prior

    def forward(self, laf: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        if laf.ndim != 4 or laf.shape[2:] != (2, 3):
            raise ValueError(f"laf must have shape (B, N, 2, 3), got {tuple(laf.shape)}")
        if img.ndim != 4 or img.shape[1] != 1 or img.shape[0] != laf.shape[0]:
            raise ValueError(f"img must have shape (B, 1, H, W) with B = {laf.shape[0]}, got {tuple(img.shape)}")
        H, W = img.shape[-2:]
        scale = laf[..., :2].det().abs().sqrt()  # (B, N)
        target = torch.empty_like(scale)
        for b in range(laf.shape[0]):
            xy = laf[b, :, :, 2].detach().cpu().double().numpy()
            xy = np.clip(xy, 0, [W - 1, H - 1])
            prior = (2 * scale[b] / self.mr_size).detach().cpu().double().numpy() if self.size_prior else None
            image = img[b, 0].detach().cpu().float().numpy()
            size = self.estimator.keypoint_poses(image, xy, prior).size[:, 0]
            target[b] = (self.mr_size * size / 2).to(target)
        ratio = target / scale.clamp_min(1e-12)
        return torch.cat([laf[..., :2] * ratio[..., None, None], laf[..., 2:]], -1)


__all__ = ["KorniaOrientation", "KorniaScale"]
