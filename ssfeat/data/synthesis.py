"""On-the-fly PatchPose pair synthesis from any folder of unlabeled photos.

A pair is a reference patch and a target patch showing the same content rotated
counter-clockwise by ``rotation`` (radians) and magnified by ``2**log2_scale``. Ground truth is
continuous. Every sample is a pure function of ``(seed, kind, index)``, so training is reproducible
and resumable, whatever the number of workers or processes.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..geometry import TWO_PI, inside_image, linear_rotation_scale, tilt_matrix
from ..patches import extract_patches
from .images import load_textured, to_uint8
from .validate import check_fields

logger = logging.getLogger(__name__)

KINDS = ("ori", "scale")
SCALE_SAMPLINGS = ("log_uniform", "paper")


@dataclass
class PairConfig:
    """How patch pairs are synthesised."""

    patch_size: int = 32  # output patch size P
    support: float = 32.0  # side of the reference window in image pixels (log2 scale 0)
    max_log2_scale: float = 2.0  # scale pairs: log2 magnification uniform in [-max, max]
    # scale pairs: "log_uniform" (log2 magnification uniform in [-max, max]) or "paper", the mix of the
    # paper's PatchPoseA + B test pairs (max 2 only): half the 13 grid values 2**(i/3), i = -6..6, half
    # PatchPoseB's magnifications (1 with probability 1/13, else uniform in *linear* [1/4, 4], so 80%
    # of them magnify)
    scale_sampling: str = "log_uniform"
    ori_log2_jitter: float = 0.25  # orientation pairs: log2 magnification uniform in [-j, j]
    ref_random_pose: bool = True  # reference patch gets a random rotation and a small scale jitter
    ref_log2_jitter: float = 0.5  # uniform jitter of the reference scale when ref_random_pose
    photometric: bool = True  # independent brightness/contrast/gamma/noise on both patches
    # with photometric: the fraction of pairs that get those changes; the others are clean crops, which
    # keep the photo's own pixel-level texture (that a shrink averages away; docs/benchmarks.md)
    photometric_fraction: float = 1.0
    # scale pairs: this fraction of them has both views zoomed out (downsampled from the photo, so both
    # as sharp as a native patch) instead of a reference near the photo's resolution; upsampled
    # (magnified) views are blurry, a cue that tells magnification but not shrinking apart
    zoom_out_pairs: float = 0.0
    blur: float = 0.0  # with photometric: blur half of the patches by a Gaussian of sigma in [0.3, blur] px
    # viewpoint: each view of a pair is, with probability 1/2, tilted by t in [1, max_tilt] (log-uniform,
    # random direction: a plane seen at acos(1/t) from its normal; capped for strongly zoomed-out views
    # so that windows stay within the margin); the labels are then the rotation and scale of the polar
    # decomposition of the relative map (geometry.linear_rotation_scale), the convention of the
    # sequence benchmark. 1: off
    max_tilt: float = 1.0
    n_sift: int = 150  # keypoint candidates per image: SIFT,
    n_harris: int = 150  # Harris corners,
    n_random: int = 100  # and uniformly random points
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1.0 <= self.max_tilt < 100.0:
            raise ValueError(f"max_tilt must be in [1, 100) (1: no tilt), got {self.max_tilt}")
        check_fields(
            self,
            ("max_log2_scale", "ori_log2_jitter", "ref_log2_jitter", "blur"),
            ("support",),
            ("zoom_out_pairs", "photometric_fraction"),
            maxima={"max_log2_scale": 4.0, "ori_log2_jitter": 2.0, "ref_log2_jitter": 2.0, "blur": 8.0},
        )
        if self.scale_sampling not in SCALE_SAMPLINGS:
            raise ValueError(f"scale_sampling must be one of {SCALE_SAMPLINGS}, got {self.scale_sampling!r}")
        if self.scale_sampling == "paper" and self.max_log2_scale != 2.0:
            raise ValueError(f"scale_sampling 'paper' spans log2 scales [-2, 2], not [-{self.max_log2_scale:g}, ...]")

    def margin(self) -> int:
        """Distance from the image border a keypoint needs so that no patch leaves the image."""
        return int(math.ceil(self.support / 2 * math.sqrt(2) * self.max_zoom_out())) + 2

    def max_zoom_out(self) -> float:
        """Largest factor by which a view's window exceeds ``support`` (sets the margin; tilts are
        capped per view so that they stay within it)."""
        return 2.0 ** (self.max_log2_scale + (self.ref_log2_jitter if self.ref_random_pose else 0.0))


def split_by_image(paths: list[Path], val_fraction: float, root: Path | None = None) -> tuple[list[int], list[int]]:
    """Deterministic image-level split from a hash of each file's path relative to ``root``.

    Returns:
        ``(train_indices, val_indices)``.
    """
    train, val = [], []
    for i, p in enumerate(paths):
        name = str(p.relative_to(root)) if root is not None else p.name
        h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (val if h < val_fraction else train).append(i)
    return train, val


def candidate_keypoints(image: np.ndarray, margin: int, cfg: PairConfig, rng: np.random.Generator) -> np.ndarray:
    """SIFT, Harris and random candidate centres ``(N, 2)`` at least ``margin`` px from the border."""
    H, W = image.shape
    if H <= 2 * margin or W <= 2 * margin:
        return np.zeros((0, 2), np.float32)
    u8 = image if image.dtype == np.uint8 else to_uint8(image)
    pts = [np.zeros((0, 2), np.float32)]
    if cfg.n_sift > 0:
        kps = cv2.SIFT_create(nfeatures=cfg.n_sift).detect(u8, None)
        if kps:
            pts.append(np.array([k.pt for k in kps], np.float32))
    if cfg.n_harris > 0:
        c = cv2.goodFeaturesToTrack(u8, cfg.n_harris, 0.01, 5, useHarrisDetector=True)
        if c is not None:
            pts.append(c.reshape(-1, 2).astype(np.float32))
    if cfg.n_random > 0:
        pts.append(
            rng.uniform([margin, margin], [W - 1 - margin, H - 1 - margin], (cfg.n_random, 2)).astype(np.float32)
        )
    pts = np.concatenate(pts)
    return pts[inside_image(pts, image.shape, margin)]


class PairSynthesizer:
    """Synthesise PatchPose pairs from a list of images.

    Args:
        images: list of ``(H, W)`` gray images (uint8 or float in ``[0, 1]``).
        cfg: synthesis settings.
        names: optional names used in messages.
    """

    def __init__(self, images: list[np.ndarray], cfg: PairConfig | None = None, names: list[str] | None = None):
        self.cfg = cfg = cfg or PairConfig()
        if not images:
            raise ValueError("no readable images to make patch pairs from")
        margin = cfg.margin()
        self.images, self.keypoints, self.skipped = [], [], []
        for i, img in enumerate(images):
            kps = candidate_keypoints(img, margin, cfg, np.random.default_rng([cfg.seed, i]))
            if len(kps) == 0:
                self.skipped.append(names[i] if names else str(i))
                continue
            self.images.append(img)
            self.keypoints.append(kps)
        reason = f"smaller than {2 * margin + 1} px in some dimension, or without any keypoint inside the margins"
        if self.skipped:
            logger.warning("%d images are %s, skipped: %s", len(self.skipped), reason, ", ".join(self.skipped[:5]))
        if not self.images:
            raise ValueError(f"no usable images: every image is {reason} (blank?)")

    @classmethod
    def from_folder(cls, root: str | Path, cfg: PairConfig | None = None, indices: list[int] | None = None):
        """Build from the readable, non-blank images under ``root`` (:func:`~ssfeat.data.images.load_textured`:
        blank ones are skipped with a warning naming them, as in training; optionally only ``indices``
        of that sorted list)."""
        paths, images = load_textured(root)
        if indices is not None:
            paths, images = [paths[i] for i in indices], [images[i] for i in indices]
        return cls(images, cfg, [str(p) for p in paths])

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, kind: str, index: int) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One pair: ``(patch0 (P, P), patch1 (P, P), rotation, log2_scale)`` with float32 patches."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, KINDS.index(kind), index])
        i = int(rng.integers(len(self.images)))
        img, kps = self.images[i], self.keypoints[i]
        center = kps[int(rng.integers(len(kps)))]
        if kind == "ori":
            rot = float(rng.uniform(0.0, TWO_PI))
            lsc = float(rng.uniform(-cfg.ori_log2_jitter, cfg.ori_log2_jitter))
        else:
            rot = float(rng.uniform(0.0, TWO_PI)) if cfg.ref_random_pose else 0.0
            lsc = (
                _paper_log2_scale(rng)
                if cfg.scale_sampling == "paper"
                else float(rng.uniform(-cfg.max_log2_scale, cfg.max_log2_scale))
            )
        if cfg.ref_random_pose:
            rot0 = float(rng.uniform(0.0, TWO_PI))
            lsc0 = float(rng.uniform(-cfg.ref_log2_jitter, cfg.ref_log2_jitter))
        else:
            rot0, lsc0 = 0.0, 0.0
        if kind == "scale" and cfg.zoom_out_pairs > 0 and rng.random() < cfg.zoom_out_pairs:
            lsc0 = _zoomed_out_reference(lsc, cfg.max_zoom_out(), rng)
        if kind == "scale" and not cfg.ref_random_pose:
            rot = 0.0
        a = cfg.support / cfg.patch_size
        A = np.stack([_inverse_similarity(rot0, lsc0) * a, _inverse_similarity(rot0 + rot, lsc0 + lsc) * a])
        if cfg.max_tilt > 1.0:
            rot, lsc = _tilt_views(A, cfg.max_tilt, a * cfg.max_zoom_out(), rng, rot, lsc)
        src = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img
        patches = extract_patches(src, np.stack([center, center]), A, cfg.patch_size)
        if cfg.photometric and (cfg.photometric_fraction >= 1.0 or rng.random() < cfg.photometric_fraction):
            patches = np.stack([photometric_jitter(p, rng, cfg.blur) for p in patches])
        return patches[0], patches[1], rot, lsc

    def batch(self, kind: str, indices) -> dict[str, torch.Tensor]:
        """Stack pairs ``indices`` of ``kind`` into ``patch0, patch1`` ``(B, 1, P, P)`` and
        ``rotation, log2_scale`` ``(B,)`` tensors."""
        items = [self.sample(kind, int(i)) for i in indices]
        return {
            "patch0": torch.from_numpy(np.stack([t[0] for t in items]))[:, None],
            "patch1": torch.from_numpy(np.stack([t[1] for t in items]))[:, None],
            "rotation": torch.tensor([t[2] for t in items], dtype=torch.float32),
            "log2_scale": torch.tensor([t[3] for t in items], dtype=torch.float32),
        }


def _paper_log2_scale(rng: np.random.Generator) -> float:
    """One log2 scale change from the paper's test mix (see ``PairConfig.scale_sampling``)."""
    if rng.random() < 0.5:  # PatchPoseA: the 13-value log2 grid
        return float(rng.integers(-6, 7)) / 3.0
    if rng.random() < 1.0 / 13.0:  # PatchPoseB: the unchanged patch is one of its 13 scales
        return 0.0
    return float(np.log2(rng.uniform(0.25, 4.0)))


def _zoomed_out_reference(lsc: float, max_zoom_out: float, rng: np.random.Generator) -> float:
    """A reference log2 scale ``l0`` for a scale pair of change ``lsc`` such that both views, ``l0``
    and ``l0 + lsc``, are zoomed out (<= 0) by at most ``max_zoom_out`` (the synthesis margin)."""
    lo = -math.log2(max_zoom_out)
    return float(rng.uniform(max(lo, lo - lsc), min(0.0, -lsc)))


def _inverse_similarity(rot: float, log2_scale: float) -> np.ndarray:
    """Patch-to-image map of a view whose content is rotated CCW by ``rot`` and magnified by
    ``2**log2_scale``: the inverse of :func:`ssfeat.geometry.similarity_matrix`."""
    c, s = math.cos(rot), math.sin(rot)
    return np.array([[c, -s], [s, c]]) * 2.0 ** (-log2_scale)


def _tilt_views(
    A: np.ndarray, max_tilt: float, max_norm: float, rng: np.random.Generator, rot: float, lsc: float
) -> tuple[float, float]:
    """Tilt each of the two ``(2, 2, 2)`` patch-to-image maps ``A`` in place with probability 1/2
    (tilt log-uniform in ``[1, max_tilt]``, random direction) and return the relative rotation and
    log2 scale from view 0 to view 1 (unchanged ``rot, lsc`` when neither view is tilted). A view's
    tilt is capped so that its map's spectral norm stays below ``max_norm`` (the window then stays
    within the synthesis margin: strongly zoomed-out views get smaller tilts)."""
    tilted = False
    for v in range(2):
        if rng.random() < 0.5:
            cap = min(max_tilt, (max_norm / np.linalg.norm(A[v], 2)) ** 2)
            t = torch.tensor(max(cap, 1.0) ** rng.uniform(0.0, 1.0), dtype=torch.float64)
            A[v] = tilt_matrix(t, torch.tensor(rng.uniform(0.0, math.pi), dtype=torch.float64)).numpy() @ A[v]
            tilted = True
    if not tilted:
        return rot, lsc
    J = np.linalg.solve(A[1], A[0])  # patch-0 offsets -> patch-1 offsets
    theta, l2s = linear_rotation_scale(torch.from_numpy(J))
    return float(theta), float(l2s)


def photometric_jitter(p: np.ndarray, rng: np.random.Generator, blur: float = 0.0) -> np.ndarray:
    """Random gamma, contrast, brightness and noise; and, if ``blur > 0``, a Gaussian blur of sigma
    in ``[0.3, blur]`` for half of the patches, so that sharpness alone does not reveal
    magnification (upsampled content is blurry)."""
    if blur > 0 and rng.random() < 0.5:
        p = cv2.GaussianBlur(p, (0, 0), rng.uniform(0.3, blur), borderType=cv2.BORDER_REFLECT_101)
    gamma = math.exp(rng.uniform(-0.4, 0.4))
    p = np.clip(p, 0, 1) ** gamma
    p = p * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2)
    p = p + rng.normal(0, rng.uniform(0, 0.03), p.shape)
    return np.clip(p, 0, 1).astype(np.float32)
