"""Local descriptors at given features: OpenCV's SIFT / RootSIFT on each feature's patch and ssfeat's
learned descriptor network (:class:`LearnedDescriptor`, dense or per patch)."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import torch

from ..data.images import as_image, to_uint8
from ..features import Features, check_first_octave
from ..models.descriptor import sample_descriptors
from ..models.weights import load_descriptor_model
from ..patches import feature_affines, sample_patches
from .pose import image_points


class SIFTDescriptor:
    """OpenCV's SIFT descriptor computed on the patch each feature defines (its position, size and
    orientation, whoever set them); ``root=True`` gives RootSIFT (L1-normalise, square root).

    ``first_octave``: the first octave of the Gaussian pyramid the descriptors are read from.
    ``0`` (default) starts at the image's own resolution, as VLFeat's SIFT does: features smaller
    than octave 0's first layer (about half of OpenCV's SIFT keypoints) read the image blurred to
    sigma 1.6 instead of their layer of an upsampled octave, and ``compute`` runs about 4x faster,
    because the upsampled octave is three quarters of the pyramid. ``-1`` is OpenCV's own choice
    (its ``detectAndCompute`` descriptors). On the matching benchmark's 50 real pairs the two differ
    by 0.3 points of MMA@3 (see docs/benchmarks.md).
    """

    def __init__(self, root: bool = False, first_octave: int = 0) -> None:
        self.root, self.first_octave = root, check_first_octave(first_octave)
        self.sift = cv2.SIFT_create()

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return replace(feats, descriptors=np.zeros((0, 128), np.float32))
        kps = feats.to_cv2(self.first_octave)
        out_kps, desc = self.sift.compute(to_uint8(image), kps)
        if desc is None or len(out_kps) != len(kps):
            raise RuntimeError(f"OpenCV SIFT described {len(out_kps)} of {len(kps)} keypoints")
        desc = desc.astype(np.float32)
        if self.root:
            desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12))
        else:
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return replace(feats, descriptors=desc)


class LearnedDescriptor:
    """ssfeat's dense descriptor network (:class:`ssfeat.models.descriptor.DescriptorNet`, HNDesc).

    * ``mode="dense"``: one forward pass over the image, descriptors read bilinearly at the keypoint
      positions (the feature's orientation and size are ignored; the network is invariant only to
      what training varied: rotations up to about 25 degrees, zoom within about a factor 1.3,
      perspective, illumination);
    * ``mode="patch"``: each feature's canonical patch (side ``magnification * size`` pixels,
      turned by its orientation, resampled to ``patch_size``) is described on its own, so the
      descriptor follows the orienter's rotation and the detector's (or orienter's) scale.

    Images whose sides are not multiples of 8 are padded internally; an image smaller than 8 px is
    an error. Descriptors are ``(N, dim)`` float32, unit L2 norm.
    """

    def __init__(
        self,
        weights: str = "descriptor",
        mode: str = "dense",
        patch_size: int = 32,
        magnification: float = 10.0,
        batch_size: int = 512,
        net=None,
        device: str | torch.device | None = None,
    ) -> None:
        if mode not in ("dense", "patch"):
            raise ValueError(f"mode must be 'dense' or 'patch', not {mode!r}")
        self.net = net if net is not None else load_descriptor_model(weights)
        self.net.eval()
        if device is not None:
            self.net.to(device)
        self.mode, self.patch_size, self.magnification, self.batch_size = mode, patch_size, magnification, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        return self.describe_batch([image], [feats])[0]

    @torch.inference_mode()
    def describe_batch(self, images: list, feats: list[Features], image_batch: int = 8) -> list[Features]:
        """Descriptors of several images' features. Dense mode runs the network on batches of up to
        ``image_batch`` images of the same size (one forward pass each; on a GPU the time per image
        drops with the batch), patch mode on each image's patches in turn."""
        images = [as_image(im) for im in images]  # any supported input; NaN / Inf are refused clearly
        if len(images) != len(feats):
            raise ValueError(f"{len(images)} images but {len(feats)} feature sets")
        for im, f in zip(images, feats):
            if len(f) and min(im.shape) < 8:
                raise ValueError(f"the {im.shape[1]}x{im.shape[0]} image is too small to describe (< 8 px)")
            image_points(f.keypoints, im.shape)  # finite and inside the image, as the pose estimator checks
        out = [self._describe(im, f) if self.mode == "patch" or not len(f) else None for im, f in zip(images, feats)]
        todo: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(out):
            if r is None:
                todo.setdefault(images[i].shape, []).append(i)
        for shape, idx in todo.items():
            for j in range(0, len(idx), image_batch):
                group = idx[j : j + image_batch]
                x = torch.from_numpy(np.stack([images[i] for i in group]).astype(np.float32))[:, None]
                dense = self.net(x.to(self.device))
                for k, i in enumerate(group):
                    kp = torch.from_numpy(feats[i].keypoints.astype(np.float32))[None].to(self.device)
                    d = sample_descriptors(dense[k : k + 1], kp, shape)[0]
                    out[i] = replace(feats[i], descriptors=d.float().cpu().numpy())
        return out

    def _describe(self, image: np.ndarray, feats: Features) -> Features:
        """Patch-mode descriptors (or none) of one image's features."""
        dim = self.net.config.dim
        if len(feats) == 0:
            return replace(feats, descriptors=np.zeros((0, dim), np.float32))
        P = self.patch_size
        A = feature_affines(self.magnification * feats.scales, feats.orientations, P)
        patches = sample_patches(image, feats.keypoints, A, P)[:, None]
        d = torch.cat(
            [
                self.net.describe_patches(patches[i : i + self.batch_size].to(self.device))
                for i in range(0, len(patches), self.batch_size)
            ]
        )
        return replace(feats, descriptors=d.float().cpu().numpy())


__all__ = ["LearnedDescriptor", "SIFTDescriptor"]
