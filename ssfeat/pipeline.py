"""Composable detect -> orient -> describe -> match -> filter pipelines.

Every stage is a small callable; stages exchange :class:`ssfeat.features.Features`:

* detector ``(image) -> Features`` (positions, sizes, scores, and the detector's own orientation);
* orienter ``(image, Features) -> Features`` (sets ``orientations`` and maybe ``scales``; a multi-pose
  orienter returns several features per keypoint, ``parents`` links them to the keypoint);
* descriptor ``(image, Features) -> Features`` (sets ``descriptors``);
* matcher ``(Features, Features) -> Matches``;
* filters ``(Features, Features, Matches) -> Matches`` (run in order).

``image`` is always a gray float32 ``(H, W)`` array in ``[0, 1]``; :meth:`Pipeline.extract` converts any
supported input (path, uint8/uint16/float array, tensor; gray, RGB or RGBA) once.

Named pipelines (:data:`PIPELINES`) all start from the same OpenCV SIFT keypoints, so that they
differ only in the stage being compared; a trailing ``*`` adds the orientation-consistency filter
(ReKD's '*' rows), e.g. ``"ssfeat*"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from .estimator import PatchPoseEstimator, _as_image
from .features import Features, check_first_octave, strongest_distinct
from .geometry import TWO_PI, angle_diff, inside_image, map_orientations, warp_points, wrap_angle
from .patches import sample_patches

# Bundled model the ssfeat orienters use by default, in a single pass (no adaptive C4): on SIFT
# keypoints it matches as well as the larger "patchpose_fast" model (BENCHMARKS.md) at about half the
# network time, and the matching time budget holds.
PIPELINE_MODEL = "patchpose_tiny"


def pipeline_estimator(weights: str | Path | None = None) -> PatchPoseEstimator:
    """The estimator of the ssfeat orienters: ``weights`` (bundled name, file or run; default
    :data:`PIPELINE_MODEL`) in a single pass, whatever rotation averaging the weights store (pass
    your own :class:`PatchPoseEstimator` to a pipeline for C4)."""
    return PatchPoseEstimator.from_pretrained(weights or PIPELINE_MODEL, c4=False)


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# affine view synthesis


class AffineViews:
    """Affine view synthesis (ASIFT-style): run a whole extractor on simulated tilted views of the
    image and map the features back, so that similarity-covariant features also match across strong
    viewpoint changes.

    A view of tilt ``t`` and longitude ``phi`` rotates the image by ``phi`` (about its centre, on a
    canvas that holds all of it), blurs it along x by ``0.8 sqrt(t^2 - 1)`` px (antialiasing) and
    shrinks x by ``t``. Tilts ``tilts`` (plus the original image) and, per tilt, ``phi`` in
    ``[0, 180)`` degrees in steps of ``base_step_deg / t`` (ASIFT's sampling). Descriptors are
    computed in the view; keypoints are mapped back to the image and those falling outside it are
    dropped; orientations map through the view's linear part (the direction of the orientation
    vector) and sizes by the square root of its area change, approximations used only by
    orientation-based filters. The ``max_keypoints`` features of largest score are kept.

    Args:
        tilts: tilts ``t > 1`` simulated in addition to the original view.
        base_step_deg: longitude step of tilt 1 (ASIFT: 72 degrees).
        max_keypoints: features kept over all views (``None``: all).
    """

    def __init__(self, tilts=(2.0, 4.0), base_step_deg: float = 72.0, max_keypoints: int | None = 4000) -> None:
        if any(t <= 1 for t in tilts):
            raise ValueError(f"tilts must be > 1, got {tilts}")
        if base_step_deg <= 0:
            raise ValueError(f"base_step_deg must be > 0, got {base_step_deg}")
        self.tilts = tuple(float(t) for t in tilts)
        self.base_step_deg = base_step_deg
        self.max_keypoints = max_keypoints

    def views(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(view, A)`` pairs: the float32 view images and the ``(3, 3)`` affine maps ``A`` taking
        image pixel coordinates to view pixel coordinates; the first is the image itself."""
        h, w = image.shape
        out = [(image, np.eye(3))]
        for t in self.tilts:
            for phi in np.arange(0.0, 180.0, self.base_step_deg / t):
                R = cv2.getRotationMatrix2D((w / 2, h / 2), float(phi), 1.0)  # CCW as displayed
                c, s = abs(R[0, 0]), abs(R[0, 1])
                W1, H1 = int(math.ceil(h * s + w * c)), int(math.ceil(h * c + w * s))
                R[0, 2] += W1 / 2 - w / 2
                R[1, 2] += H1 / 2 - h / 2
                v = cv2.warpAffine(image, R, (W1, H1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                v = cv2.GaussianBlur(v, (0, 0), sigmaX=0.8 * math.sqrt(t * t - 1), sigmaY=0.01)
                Wt = max(1, int(round(W1 / t)))
                v = cv2.resize(v, (Wt, H1), interpolation=cv2.INTER_LINEAR)
                A = np.diag([Wt / W1, 1.0, 1.0]) @ np.vstack([R, [0.0, 0.0, 1.0]])
                out.append((v.astype(np.float32), A))
        return out

    def __call__(self, extract, image: np.ndarray) -> Features:
        """Features of ``image`` from ``extract(view) -> Features`` run on every view."""
        parts = []
        for v, A in self.views(image):
            f = extract(v)
            if len(f) == 0:
                continue
            if np.array_equal(A, np.eye(3)):
                parts.append(replace(f, image_size=image.shape))
                continue
            Ainv = np.linalg.inv(A)
            xy = warp_points(torch.from_numpy(f.keypoints.astype(np.float64)), torch.from_numpy(Ainv)).numpy()
            inside = inside_image(xy, image.shape)
            if not inside.any():  # every keypoint of this view lies in its padding
                continue
            g = f.subset(inside)
            parts.append(
                replace(
                    g,
                    keypoints=xy[inside].astype(np.float32),
                    orientations=map_orientations(g.orientations, Ainv[:2, :2]).astype(np.float32),
                    scales=g.scales * math.sqrt(abs(np.linalg.det(Ainv[:2, :2]))),
                    image_size=image.shape,
                )
            )
        if not parts:
            return extract(image)
        offset = 0
        for i, f in enumerate(parts):  # keypoint ids stay distinct across views
            parts[i] = replace(f, parents=f.parents + offset)
            offset += int(f.parents.max()) + 1
        f = concat_features(parts)
        if self.max_keypoints is not None and len(f) > self.max_keypoints:
            f = f.subset(np.sort(np.argsort(-f.scores, kind="stable")[: self.max_keypoints]))
        return f


# ------------------------------------------------------------------------------------------------
# detectors


class SIFTDetector:
    """OpenCV SIFT keypoints: the ``max_keypoints`` strongest distinct locations, with SIFT's size,
    its dominant orientation and response. (SIFT repeats a location once per secondary orientation
    peak; only the strongest entry is kept so that every pipeline gets the same keypoint budget.)"""

    def __init__(self, max_keypoints: int = 1000, contrast_threshold: float = 0.04) -> None:
        if max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
        self.max_keypoints = max_keypoints
        self.sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=contrast_threshold)

    def __call__(self, image: np.ndarray) -> Features:
        keep = strongest_distinct(self.sift.detect(_u8(image), None), self.max_keypoints)
        return Features.from_cv2(keep, image.shape)


class LearnedDetector:
    """ssfeat's equivariant keypoint detector (:class:`ssfeat.detector.KeypointDetector`): keypoints
    with the network's own orientation and the pyramid level's size."""

    def __init__(self, max_keypoints: int = 1000, weights: str = "detector", detector=None) -> None:
        from .detector import DetectConfig, KeypointDetector

        if max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
        self.max_keypoints = max_keypoints
        self.detector = detector or KeypointDetector.from_pretrained(weights, DetectConfig(max_keypoints=max_keypoints))
        self.detector.config.max_keypoints = max_keypoints

    def __call__(self, image: np.ndarray) -> Features:
        return self.detector(image)


class KorniaHessianDetector:
    """kornia's ``ScaleSpaceDetector`` (Hessian blobs, scale-space NMS) with kornia's dominant
    gradient orientation (``LAFOrienter``); no learned weights."""

    def __init__(self, max_keypoints: int = 1000, mr_size: float = 6.0) -> None:
        from kornia.feature import BlobHessian, LAFOrienter, ScaleSpaceDetector

        self.max_keypoints, self.mr_size = max_keypoints, mr_size
        self.op = ScaleSpaceDetector(
            max_keypoints, mr_size=mr_size, resp_module=BlobHessian(), ori_module=LAFOrienter(32)
        ).eval()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Features:
        lafs, resp = self.op(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None])
        keep = resp[0] > 0
        f = Features.from_laf(lafs[:, keep], image.shape, self.mr_size)
        f.scores = resp[0, keep].float().numpy()
        return f


# ------------------------------------------------------------------------------------------------
# orienters


class DetectorPose:
    """Pass-through: keep the detector's own orientation and scale (for SIFT: SIFT's)."""

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        return feats


class Upright:
    """Orientation 0 for every feature (upright descriptors); scale unchanged."""

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        return replace(feats, orientations=np.zeros(len(feats), np.float32))


class LearnedDetectorOrienter:
    """Orientation from the equivariant detector's dense histogram map at any keypoints (read at
    the pyramid level matching each feature's size); scale unchanged."""

    def __init__(self, weights: str = "detector", detector=None) -> None:
        from .detector import KeypointDetector

        self.detector = detector or KeypointDetector.from_pretrained(weights)

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        ori = self.detector.orientations(image, feats.keypoints, feats.scales)
        return replace(feats, orientations=ori)


class KorniaOrienter:
    """kornia's ``LAFOrienter`` with ``PatchDominantGradientOrientation`` (SIFT-like gradient
    histogram) on a patch covering ``mr_size`` times the feature size; scale unchanged."""

    def __init__(self, patch_size: int = 32, mr_size: float = 4.5) -> None:
        from kornia.feature import LAFOrienter

        self.op = LAFOrienter(patch_size)
        self.mr_size = mr_size

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        laf = feats.to_laf(self.mr_size)
        out = self.op(laf, torch.from_numpy(np.ascontiguousarray(image))[None, None])
        f = Features.from_laf(out, feats.image_size, self.mr_size)
        return replace(feats, orientations=f.orientations)


class PatchPoseOrienter:
    """ssfeat patch pose at each keypoint.

    The network reads an axis-aligned window around every keypoint: by default ``support_factor``
    times the detector's feature size (so the window follows the detector's scale), or, with
    ``support`` set, a fixed ``support`` x ``support`` pixel window at the image's resolution.

    Args:
        estimator: the patch-pose estimator (default: the bundled model).
        support_factor: window side as a multiple of the feature size (default 12: about the region
            OpenCV's SIFT descriptor reads).
        support: fixed window side in pixels instead (``None``: use ``support_factor``).
        scale: also set the feature size from the learned scale, ``size = size_factor *
            2**log2_scale`` (needs a fixed ``support``; the learned log2 scale is absolute only then).
            Otherwise the detector's size is kept and only the orientation is set.
        size_factor: feature size in pixels of a patch with ``log2_scale == 0``; the default makes the
            median size on the training photos equal to OpenCV SIFT's median size at 1000 keypoints.
        k_ori, k_scale: multi-pose: one feature per combination of the ``k_ori`` strongest orientation
            modes and (with ``scale``) the ``k_scale`` strongest scale modes (paper Table 2).
        min_ratio: a secondary mode is emitted only if its histogram peak is at least this fraction of
            the strongest one (SIFT uses 0.8 for its secondary orientations).
    """

    def __init__(
        self,
        estimator: PatchPoseEstimator | None = None,
        support_factor: float = 12.0,
        support: float | None = None,
        scale: bool = False,
        size_factor: float = 6.8,
        k_ori: int = 1,
        k_scale: int = 1,
        min_ratio: float = 0.5,
    ) -> None:
        if scale and support is None:
            raise ValueError("scale=True needs a fixed support (the learned scale is relative to the window)")
        if k_ori < 1 or k_scale < 1:
            raise ValueError("k_ori and k_scale must be >= 1")
        self.estimator = estimator or pipeline_estimator()
        self.support_factor, self.support, self.scale, self.size_factor = support_factor, support, scale, size_factor
        self.k_ori, self.k_scale, self.min_ratio = k_ori, k_scale if scale else 1, min_ratio

    def patches(self, image: np.ndarray, feats: Features) -> torch.Tensor:
        """The ``(N, 1, P, P)`` network inputs."""
        if self.support is not None:
            if min(image.shape) < self.support:
                h, w = image.shape
                raise ValueError(f"the {w}x{h} image is smaller than the {self.support:g} px patch")
            return self.estimator.extract(image, feats.keypoints, self.support)
        P = self.estimator.config.patch_size
        A = (self.support_factor * feats.scales / P)[:, None, None] * np.eye(2)
        return sample_patches(image, feats.keypoints, A, P)[:, None]

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return feats
        t = self.estimator.topk(self.patches(image, feats), max(self.k_ori, self.k_scale))
        ori, ori_s = t.orientation.cpu().numpy(), t.ori_score.cpu().numpy()
        sca, sca_s = t.log2_scale.cpu().numpy(), t.scale_score.cpu().numpy()
        parts = []
        for i in range(self.k_ori):
            for j in range(self.k_scale):
                ok = (ori_s[:, i] >= self.min_ratio * ori_s[:, 0]) & (sca_s[:, j] >= self.min_ratio * sca_s[:, 0])
                idx = np.flatnonzero(ok) if i or j else np.arange(len(feats))
                f = feats.subset(idx)
                f.orientations = ori[idx, i].astype(np.float32)
                if self.scale:
                    f.scales = (self.size_factor * np.exp2(sca[idx, j])).astype(np.float32)
                parts.append(f)
        return concat_features(parts)


def concat_features(parts: list[Features]) -> Features:
    """Concatenate features of the same image (descriptors must be all set or all ``None``)."""
    if len(parts) == 1:
        return parts[0]
    descs = [p.descriptors for p in parts]
    return Features(
        np.concatenate([p.keypoints for p in parts]),
        np.concatenate([p.scales for p in parts]),
        np.concatenate([p.orientations for p in parts]),
        np.concatenate([p.scores for p in parts]),
        parts[0].image_size,
        None if any(d is None for d in descs) else np.concatenate(descs),
        np.concatenate([p.parents for p in parts]),
    )


# ------------------------------------------------------------------------------------------------
# descriptors


class SIFTDescriptor:
    """OpenCV's SIFT descriptor computed on the patch each feature defines (its position, size and
    orientation, whoever set them); ``root=True`` gives RootSIFT (L1-normalise, square root).

    ``first_octave``: the first octave of the Gaussian pyramid the descriptors are read from.
    ``0`` (default) starts at the image's own resolution, as VLFeat's SIFT does: features smaller
    than octave 0's first layer (about half of OpenCV's SIFT keypoints) read the image blurred to
    sigma 1.6 instead of their layer of an upsampled octave, and ``compute`` runs about 4x faster,
    because the upsampled octave is three quarters of the pyramid. ``-1`` is OpenCV's own choice
    (its ``detectAndCompute`` descriptors). On the matching benchmark's 50 real pairs the two differ
    by 0.3 points of MMA@3 (see BENCHMARKS.md).
    """

    def __init__(self, root: bool = False, first_octave: int = 0) -> None:
        self.root, self.first_octave = root, check_first_octave(first_octave)
        self.sift = cv2.SIFT_create()

    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        if len(feats) == 0:
            return replace(feats, descriptors=np.zeros((0, 128), np.float32))
        kps = feats.to_cv2(self.first_octave)
        out_kps, desc = self.sift.compute(_u8(image), kps)
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
        from .hub import load_descriptor

        if mode not in ("dense", "patch"):
            raise ValueError(f"mode must be 'dense' or 'patch', not {mode!r}")
        self.net = net if net is not None else load_descriptor(weights)
        self.net.eval()
        if device is not None:
            self.net.to(device)
        self.mode, self.patch_size, self.magnification, self.batch_size = mode, patch_size, magnification, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, feats: Features) -> Features:
        from .models.descriptor import sample_descriptors
        from .patches import feature_affines

        dim = self.net.config.dim
        image = _as_image(image)  # any supported input; NaN / Inf are rejected with a clear error
        if len(feats) == 0:
            return replace(feats, descriptors=np.zeros((0, dim), np.float32))
        if min(image.shape) < 8:
            raise ValueError(f"the {image.shape[1]}x{image.shape[0]} image is too small to describe (< 8 px)")
        if self.mode == "dense":
            x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(self.device)
            kp = torch.from_numpy(feats.keypoints.astype(np.float32))[None].to(self.device)
            d = sample_descriptors(self.net(x), kp, image.shape)[0]
        else:
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


# ------------------------------------------------------------------------------------------------
# matching and filters


@dataclass
class Matches:
    """``idx`` ``(M, 2)`` int64 pairs (index into features0, index into features1); ``distances``
    ``(M,)`` descriptor distances; ``H_0to1`` the homography a RANSAC filter fitted (else ``None``)."""

    idx: np.ndarray
    distances: np.ndarray
    H_0to1: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.idx)

    def subset(self, keep: np.ndarray) -> Matches:
        return Matches(self.idx[keep], self.distances[keep], self.H_0to1)

    @classmethod
    def empty(cls) -> Matches:
        return cls(np.zeros((0, 2), np.int64), np.zeros(0, np.float32))


def _descs(f0: Features, f1: Features) -> tuple[torch.Tensor, torch.Tensor] | None:
    if f0.descriptors is None or f1.descriptors is None:
        raise ValueError("matching needs descriptors: the pipeline has no descriptor stage")
    if len(f0) == 0 or len(f1) == 0:
        return None
    return torch.from_numpy(f0.descriptors), torch.from_numpy(f1.descriptors)


class MutualNearestNeighbor:
    """Mutual nearest neighbours in L2 descriptor distance (kornia ``match_mnn``)."""

    def __call__(self, f0: Features, f1: Features) -> Matches:
        from kornia.feature import match_mnn

        d = _descs(f0, f1)
        if d is None:
            return Matches.empty()
        dist, idx = match_mnn(*d)
        return Matches(idx.numpy().astype(np.int64), dist[:, 0].numpy())


class RatioTest:
    """Lowe's ratio test (nearest / second nearest < ``ratio``), mutual by default (kornia
    ``match_smnn`` / ``match_snn``)."""

    def __init__(self, ratio: float = 0.8, mutual: bool = True) -> None:
        self.ratio, self.mutual = ratio, mutual

    def __call__(self, f0: Features, f1: Features) -> Matches:
        from kornia.feature import match_smnn, match_snn

        d = _descs(f0, f1)
        if d is None or min(len(f0), len(f1)) < 2:
            return Matches.empty()
        dist, idx = (match_smnn if self.mutual else match_snn)(*d, self.ratio)
        return Matches(idx.numpy().astype(np.int64), dist[:, 0].numpy())


class OrientationFilter:
    """Keep matches whose relative orientation ``o1 - o0`` lies within ``tolerance_deg`` of the
    dominant one (the peak of a smoothed circular histogram of all relative orientations, refined by
    a circular mean). For a homography the relative rotation is nearly constant over the image, so
    this removes matches whose poses disagree (ReKD's '*' filter, with continuous angles)."""

    def __init__(self, tolerance_deg: float = 30.0, bins: int = 36) -> None:
        self.tol = math.radians(tolerance_deg)
        self.bins = bins

    def dominant(self, delta: np.ndarray) -> float:
        """The dominant angle (radians) of ``delta`` ``(M,)``."""
        b = self.bins
        h = np.bincount(np.floor(wrap_angle(delta) / TWO_PI * b).astype(int) % b, minlength=b).astype(float)
        h = h + 0.5 * (np.roll(h, 1) + np.roll(h, -1))
        centre = (np.argmax(h) + 0.5) * TWO_PI / b
        near = np.abs(angle_diff(delta, centre)) <= self.tol
        return float(wrap_angle(centre + np.angle(np.exp(1j * angle_diff(delta[near], centre)).mean())))

    def __call__(self, f0: Features, f1: Features, m: Matches) -> Matches:
        if len(m) == 0:
            return m
        delta = f1.orientations[m.idx[:, 1]].astype(np.float64) - f0.orientations[m.idx[:, 0]]
        return m.subset(np.abs(angle_diff(delta, self.dominant(delta))) <= self.tol)


class RansacHomography:
    """OpenCV RANSAC homography; keeps the inliers and stores the fitted ``H_0to1`` (fewer than 4
    matches or no model found: no matches, ``H_0to1 = None``)."""

    def __init__(self, threshold: float = 3.0, max_iters: int = 5000, confidence: float = 0.9995) -> None:
        self.threshold, self.max_iters, self.confidence = threshold, max_iters, confidence

    def fit(self, pts0: np.ndarray, pts1: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """``(H_0to1 or None, inlier mask (M,))`` for ``(M, 2)`` point arrays."""
        if len(pts0) < 4:
            return None, np.zeros(len(pts0), bool)
        H, mask = cv2.findHomography(
            pts0.astype(np.float64),
            pts1.astype(np.float64),
            cv2.RANSAC,
            self.threshold,
            maxIters=self.max_iters,
            confidence=self.confidence,
        )
        if H is None or not np.isfinite(H).all():
            return None, np.zeros(len(pts0), bool)
        return H / H[2, 2], mask.ravel().astype(bool)

    def __call__(self, f0: Features, f1: Features, m: Matches) -> Matches:
        H, inl = self.fit(f0.keypoints[m.idx[:, 0]], f1.keypoints[m.idx[:, 1]])
        out = m.subset(inl)
        out.H_0to1 = H
        return out


# ------------------------------------------------------------------------------------------------
# pipelines


@dataclass
class MatchResult:
    """Output of :meth:`Pipeline.__call__`."""

    features0: Features
    features1: Features
    matches: Matches


class Pipeline:
    """detector -> orienter -> descriptor -> matcher -> filters, each replaceable.

    Example:
        >>> pipe = build_pipeline("ssfeat")
        >>> res = pipe("img1.png", "img2.png")
        >>> res.matches.idx.shape   # (M, 2)
    """

    def __init__(
        self, detector, orienter=None, descriptor=None, matcher=None, filters=(), name: str = "", views=None
    ) -> None:
        self.detector = detector
        self.orienter = orienter or DetectorPose()
        self.descriptor = descriptor or SIFTDescriptor()
        self.matcher = matcher or MutualNearestNeighbor()
        self.filters = list(filters)
        self.name = name
        self.views = views

    def extract(self, image) -> Features:
        """Features of one image (path, array or tensor; any channel layout and bit depth); with
        ``views`` (:class:`AffineViews`), of all its simulated views."""
        img = _as_image(image)
        if self.views is not None:
            return self.views(self._extract_view, img)
        return self._extract_view(img)

    def _extract_view(self, img: np.ndarray) -> Features:
        return self.descriptor(img, self.orienter(img, self.detector(img)))

    def match_features(self, f0: Features, f1: Features) -> Matches:
        m = self.matcher(f0, f1)
        for f in self.filters:
            m = f(f0, f1, m)
        return m

    def __call__(self, image0, image1) -> MatchResult:
        f0, f1 = self.extract(image0), self.extract(image1)
        return MatchResult(f0, f1, self.match_features(f0, f1))


# Named pipelines use SIFT keypoints (unless "detector" says otherwise), the SIFT descriptor on the
# oriented, scaled patch and mutual nearest neighbours; most differ only in the orienter.
PIPELINES: dict[str, dict] = {
    "sift": {"orienter": "sift"},  # SIFT's own orientation and scale
    "upright": {"orienter": "upright"},
    "kornia": {"orienter": "kornia"},  # kornia dominant gradient orientation, SIFT's scale
    "ssfeat": {"orienter": "ssfeat"},  # ssfeat orientation, SIFT's scale
    "ssfeat_multi": {"orienter": "ssfeat_multi"},  # + a second orientation where the histogram has one
    "ssfeat_scale": {"orienter": "ssfeat_scale"},  # ssfeat orientation and scale (32 px windows)
    "sift_rootsift": {"orienter": "sift", "descriptor": "rootsift"},
    "ssfeat_rootsift": {"orienter": "ssfeat", "descriptor": "rootsift"},
    "sift_ratio": {"orienter": "sift", "matcher": "ratio"},
    "ssfeat_ratio": {"orienter": "ssfeat", "matcher": "ratio"},
    # other detectors, each with its own orientation
    "rekd": {"detector": "learned", "orienter": "sift"},  # ssfeat's equivariant detector (issue 4)
    "rekd_upright": {"detector": "learned", "orienter": "upright"},
    "hessian": {"detector": "kornia", "orienter": "sift"},  # kornia Hessian blobs + dominant gradient
    "sift_rekdori": {"orienter": "rekd"},  # SIFT keypoints, orientation from the detector's histogram map
    # descriptors (issue 5): same SIFT keypoints, ssfeat's learned descriptor
    "hndesc": {"orienter": "sift", "descriptor": "hndesc"},  # dense map sampled at the keypoints
    "hndesc_patch": {"orienter": "sift", "descriptor": "hndesc_patch"},  # SIFT-oriented patches
    "ssfeat_hndesc_patch": {"orienter": "ssfeat", "descriptor": "hndesc_patch"},  # ssfeat-oriented patches
    "rekd_hndesc": {"detector": "learned", "orienter": "sift", "descriptor": "hndesc"},
    # affine view synthesis (ASIFT-style, 16 views, 4x the keypoint budget over all views)
    "asift": {"orienter": "sift", "views": True},  # SIFT keypoints and orientation in every view
    "ssfeat_asift": {"orienter": "ssfeat", "views": True},  # same keypoints, ssfeat orientation
}


def _orienter(name: str, estimator: PatchPoseEstimator | None):
    if name == "sift":
        return DetectorPose()
    if name == "upright":
        return Upright()
    if name == "kornia":
        return KorniaOrienter()
    if name == "rekd":
        return LearnedDetectorOrienter()
    est = estimator or pipeline_estimator()
    if name == "ssfeat":
        return PatchPoseOrienter(est)
    if name == "ssfeat_multi":
        return PatchPoseOrienter(est, k_ori=2)
    if name == "ssfeat_scale":
        return PatchPoseOrienter(est, support=32.0, scale=True)
    raise ValueError(f"unknown orienter {name!r}")


def _descriptor(name: str, weights: str, sift_first_octave: int):
    if name in ("sift", "rootsift"):
        return SIFTDescriptor(root=name == "rootsift", first_octave=sift_first_octave)
    if name in ("hndesc", "hndesc_patch"):
        return LearnedDescriptor(weights, mode="patch" if name == "hndesc_patch" else "dense")
    raise ValueError(f"unknown descriptor {name!r}")


def check_pipeline_name(name: str) -> str:
    """The base name (``*`` stripped) of a named pipeline.

    Raises:
        ValueError: not a name of :data:`PIPELINES`, optionally with a trailing ``*``.
    """
    base = name.rstrip("*") if isinstance(name, str) else None
    if base not in PIPELINES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(PIPELINES)} (optionally with a '*')")
    return base


def build_pipeline(
    name: str = "ssfeat",
    max_keypoints: int = 1000,
    estimator: PatchPoseEstimator | None = None,
    ransac: bool = False,
    descriptor_weights: str = "descriptor",
    sift_first_octave: int = 0,
) -> Pipeline:
    """A named pipeline (see :data:`PIPELINES`; a trailing ``*`` adds :class:`OrientationFilter`).

    Args:
        name: pipeline name.
        max_keypoints: keypoint budget per image (the same for every pipeline).
        estimator: patch-pose estimator for the ssfeat orienters (default: the bundled model).
        ransac: append a :class:`RansacHomography` filter.
        descriptor_weights: weights of the learned descriptor (``hndesc*`` pipelines): bundled
            name, ``.safetensors`` file or descriptor run folder.
        sift_first_octave: ``first_octave`` of the SIFT descriptor (see :class:`SIFTDescriptor`;
            ``-1``: OpenCV's own descriptors, slower).
    """
    base = check_pipeline_name(name)
    conf = PIPELINES[base]
    filters = [OrientationFilter()] if name.endswith("*") else []
    if ransac:
        filters.append(RansacHomography())
    det = conf.get("detector", "sift")
    if det == "learned":
        detector = LearnedDetector(max_keypoints)
    elif det == "kornia":
        detector = KorniaHessianDetector(max_keypoints)
    else:
        detector = SIFTDetector(max_keypoints)
    return Pipeline(
        detector,
        _orienter(conf["orienter"], estimator),
        _descriptor(conf.get("descriptor", "sift"), descriptor_weights, sift_first_octave),
        RatioTest() if conf.get("matcher") == "ratio" else MutualNearestNeighbor(),
        filters,
        name=name,
        views=AffineViews(max_keypoints=4 * max_keypoints) if conf.get("views") else None,
    )


__all__ = [
    "PIPELINES",
    "PIPELINE_MODEL",
    "AffineViews",
    "DetectorPose",
    "KorniaHessianDetector",
    "KorniaOrienter",
    "LearnedDescriptor",
    "LearnedDetector",
    "LearnedDetectorOrienter",
    "MatchResult",
    "Matches",
    "MutualNearestNeighbor",
    "OrientationFilter",
    "PatchPoseOrienter",
    "Pipeline",
    "RansacHomography",
    "RatioTest",
    "SIFTDescriptor",
    "SIFTDetector",
    "Upright",
    "build_pipeline",
    "concat_features",
    "pipeline_estimator",
]
