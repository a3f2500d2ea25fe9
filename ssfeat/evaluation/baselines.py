"""Hand-made patch-pose baselines with the same interface as the learned estimator.

Every method maps gray patches ``(B, 1, P, P)`` to a dict with ``orientation`` and/or ``log2_scale``
``(B, k)`` tensors (``k = 1`` for methods without multiple candidates).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..inference.pose import PatchPoseEstimator


class PoseMethod:
    """Interface: ``name``, ``predicts`` (subset of {"orientation", "log2_scale"}), ``max_k``."""

    name: str = ""
    predicts: tuple[str, ...] = ()
    max_k: int = 1

    def __call__(self, patches: torch.Tensor, k: int = 1) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class LearnedPose(PoseMethod):
    """A :class:`PatchPoseEstimator` (ssfeat or a baseline architecture trained by ssfeat)."""

    predicts = ("orientation", "log2_scale")
    max_k = 4

    def __init__(self, estimator: PatchPoseEstimator, name: str) -> None:
        self.estimator, self.name = estimator, name

    @torch.inference_mode()
    def __call__(self, patches, k=1):
        t = self.estimator.topk(patches, k)
        return {"orientation": t.orientation.float().cpu(), "log2_scale": t.log2_scale.float().cpu()}


class KeypointPoseOnPatches(PoseMethod):
    """The scale-covariant keypoint pose (:meth:`PatchPoseEstimator.keypoint_poses`) at the centre of
    each patch, the patch taken as the whole image: sizes and orientations from the log-polar scale
    network and the orientation network at the size found (``log2_scale = log2(size)``). Samples of
    the log-polar patch beyond the patch's border take their ring's mean, so it sees far less context
    than at a keypoint of a photo."""

    predicts = ("orientation", "log2_scale")
    max_k = 4

    def __init__(self, estimator: PatchPoseEstimator, name: str = "ssfeat_keypoint") -> None:
        if estimator.scale_model is None:
            raise ValueError("KeypointPoseOnPatches needs an estimator with a scale model")
        self.estimator, self.name = estimator, name

    def __call__(self, patches, k=1):
        P = patches.shape[-1]
        centre = np.full((1, 2), (P - 1) / 2)
        ori, size = [], []
        for patch in patches.float().mean(1).cpu().numpy():  # (P, P) gray
            p = self.estimator.keypoint_poses(patch, centre, k=k)
            ori.append(p.orientation)
            size.append(p.size)
        return {"orientation": torch.cat(ori), "log2_scale": torch.log2(torch.cat(size))}


class KorniaGradientOrientation(PoseMethod):
    """kornia's ``PatchDominantGradientOrientation`` (SIFT-like gradient histogram); radians CCW."""

    name = "kornia_gradient"
    predicts = ("orientation",)

    def __init__(self, patch_size: int = 32) -> None:
        from kornia.feature import PatchDominantGradientOrientation

        self.op = PatchDominantGradientOrientation(patch_size)

    @torch.inference_mode()
    def __call__(self, patches, k=1):
        ang = self.op(patches.float())
        return {"orientation": torch.remainder(ang, 2 * math.pi)[:, None]}


class LoGScale(PoseMethod):
    """Laplacian-of-Gaussian scale selection at the patch centre: the ``sigma`` maximising the
    scale-normalised response ``|sigma^2 LoG_sigma * I|`` over ``sigma = 2**(l / 12)``,
    ``l = 0..36`` (1 to 8 px), refined by a parabola; ``log2_scale = log2(sigma)``."""

    name = "log_scale"
    predicts = ("log2_scale",)

    def __init__(self, patch_size: int = 32, steps_per_octave: int = 12, octaves: int = 3) -> None:
        self.log2_sigmas = torch.arange(steps_per_octave * octaves + 1) / steps_per_octave
        sig = torch.exp2(self.log2_sigmas)[:, None, None]
        c = (patch_size - 1) / 2
        y, x = torch.meshgrid(torch.arange(patch_size) - c, torch.arange(patch_size) - c, indexing="ij")
        r2 = (x**2 + y**2)[None]
        # sigma^2 * Laplacian of a unit-mass Gaussian
        k = (r2 - 2 * sig**2) / (2 * math.pi * sig**4) * torch.exp(-r2 / (2 * sig**2))
        k = k - k.mean((1, 2), keepdim=True)  # zero DC on the truncated support
        self.kernels = k.flatten(1).T  # (P*P, S)
        self.step = 1.0 / steps_per_octave

    @torch.inference_mode()
    def __call__(self, patches, k=1):
        r = (patches.flatten(1).float() @ self.kernels.to(patches.device)).abs()  # (B, S)
        i = r.argmax(-1)
        S = r.shape[1]
        il, ir = (i - 1).clamp(0, S - 1), (i + 1).clamp(0, S - 1)
        rl, rc, rr = r.gather(1, il[:, None]), r.gather(1, i[:, None]), r.gather(1, ir[:, None])
        den = rl - 2 * rc + rr
        delta = torch.where(den < -1e-12, 0.5 * (rl - rr) / den.clamp(max=-1e-12), torch.zeros_like(rc))
        delta = torch.where(((i == 0) | (i == S - 1))[:, None], torch.zeros_like(delta), delta.clamp(-0.5, 0.5))
        return {"log2_scale": self.log2_sigmas.to(patches.device)[i][:, None] + delta * self.step}
