"""Keypoint pose benchmark: orientation and size that each method gives every keypoint from its own
image, scored across image pairs with exact homographies.

Pairs are real sequences (Oxford, HPatches, EVD layouts) and similarity views synthesised from any
photo folder (rotation uniform in ``[0, 2pi)``, zoom ``2**u`` with ``u`` uniform in ``[-2, 2]``,
antialiased; :func:`ssfeat.data.view_pairs.similarity_view`). Keypoints are detected independently in
both images (OpenCV SIFT, or ssfeat's detector) and paired by the homography: mutual nearest
neighbours within ``match_px`` pixels. For a pair of keypoints the relative orientation
``ori1 - ori0`` is scored against the homography's local rotation at the keypoint and
``log2(size1 / size0)`` against its local log2 scale (:func:`ssfeat.geometry.local_rotation_scale`).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.images import ImageReadError, list_images, read_image, read_usable, to_uint8
from ..data.sequences import find_sequences
from ..data.view_pairs import similarity_view
from ..features import Features, strongest_distinct
from ..geometry import angle_diff, local_rotation_scale, warp_points
from ..inference.detector import DetectConfig, KeypointDetector
from ..inference.pose import PatchPoseEstimator
from ..logpolar import sample_logpolar
from ..patches import sample_patches
from .timing import interleaved_seconds

logger = logging.getLogger(__name__)

# the ``ssfeat`` pipeline's orienter reads this many times the detector's size (PatchPoseOrienter)
ORIENTER_WINDOW = 12.0
ZOOM_BINS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)
DETECTORS = ("sift", "rekd")


@dataclass
class KeypointBenchmarkConfig:
    detector: str = "sift"  # "sift" (OpenCV) or "rekd" (ssfeat's detector)
    max_keypoints: int = 1000  # per image
    match_px: float = 2.0  # mutual nearest neighbours within this many pixels are a keypoint pair
    max_log2_zoom: float = 2.0  # similarity views: zoom 2**U(-max, max)
    max_side: int = 640  # similarity views: photos reduced to this longer side
    limit: int | None = None  # photos used from --images (None: all)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.max_keypoints < 1 or not self.match_px > 0:
            raise ValueError("max_keypoints must be >= 1 and match_px > 0")


# ------------------------------------------------------------------------------------------------
# pairs and keypoints


def sequence_pairs(root: str | Path):
    """``(dataset, name, image0, image1, H_0to1)`` of every Oxford / HPatches / EVD pair under
    ``root`` (images as float arrays in [0, 1])."""
    for seq in find_sequences(root):
        try:
            im0 = read_usable(seq.reference)
        except ValueError as e:  # unreadable (ImageReadError is one), tiny or blank
            logger.warning("skipped sequence %s: %s", seq.name, e)
            continue
        for t, H in zip(seq.targets, seq.H):
            try:
                im1 = read_usable(t)
            except ValueError as e:
                logger.warning("skipped pair %s/%s: %s", seq.name, Path(t).name, e)
                continue
            yield Path(root).name, f"{seq.name}/{Path(t).stem}", im0, im1, H


def similarity_pairs(images: str | Path, cfg: KeypointBenchmarkConfig):
    """One photo / similarity-view pair per photo under ``images`` (see the module docstring)."""
    for idx, path in enumerate(list_images(images)[: cfg.limit]):
        try:
            photo = read_image(path)
            rng = np.random.default_rng([cfg.seed, idx])
            ref, view, H = similarity_view(photo, cfg.max_log2_zoom, 0.01, cfg.max_side, rng)
        except (ImageReadError, ValueError) as e:  # unreadable, tiny or blank photos make no pair
            logger.warning("skipped %s: %s", path.name, str(e).removeprefix(f"{path}: "))
            continue
        yield f"similarity:{Path(images).name}", path.name, ref / 255.0, view / 255.0, H


class KeypointSource:
    """Detected keypoints of an image as :class:`~ssfeat.features.Features` (positions, sizes in
    pixels, orientations in radians CCW)."""

    def __init__(self, cfg: KeypointBenchmarkConfig) -> None:
        self.cfg = cfg
        self._sift = cv2.SIFT_create(nfeatures=cfg.max_keypoints)
        self._rekd = None
        if cfg.detector == "rekd":
            self._rekd = KeypointDetector.from_pretrained(config=DetectConfig(max_keypoints=cfg.max_keypoints))

    def __call__(self, image: np.ndarray) -> Features:
        size = image.shape[::-1]
        if self._rekd is not None:
            return self._rekd(image)
        kps = strongest_distinct(self._sift.detect(to_uint8(image), None), self.cfg.max_keypoints)
        return Features.from_cv2(kps, size)


def pair_keypoints(xy0: np.ndarray, xy1: np.ndarray, H_0to1: np.ndarray, max_px: float) -> np.ndarray:
    """``(M, 2)`` indices of mutual nearest neighbours between ``xy0`` warped by ``H_0to1`` and
    ``xy1``, at most ``max_px`` apart."""
    if len(xy0) == 0 or len(xy1) == 0:
        return np.zeros((0, 2), int)
    w = warp_points(torch.from_numpy(xy0.astype(np.float64)), torch.from_numpy(H_0to1)).numpy()
    d = np.linalg.norm(w[:, None] - xy1[None].astype(np.float64), axis=-1)
    d[~np.isfinite(d)] = np.inf
    j = d.argmin(1)
    i = d.argmin(0)
    mutual = (i[j] == np.arange(len(xy0))) & (d[np.arange(len(xy0)), j] <= max_px)
    idx = np.flatnonzero(mutual)
    return np.stack([idx, j[idx]], 1)


# ------------------------------------------------------------------------------------------------
# methods: (image, Features) -> (orientations (N,) radians CCW or None, sizes (N,) px or None)


class LoGScaleSelection:
    """Multi-scale Laplacian-of-Gaussian scale selection at each keypoint: the ``sigma`` maximising
    ``|sigma^2 LoG_sigma * I|`` at the keypoint over ``sigma = 2**(l / levels_per_octave)`` from 1 to
    ``2**octaves`` pixels, refined by a parabola; size ``= 2 * sigma`` (relative sizes are what
    is scored). Each octave is read from an image pyramid."""

    def __init__(self, octaves: int = 6, levels_per_octave: int = 4) -> None:
        self.octaves, self.L = octaves, levels_per_octave

    def __call__(self, image: np.ndarray, feats: Features) -> tuple[None, np.ndarray]:
        xy = feats.keypoints.astype(np.float32)
        img = np.ascontiguousarray(image, np.float32)
        resp, levels = [], []
        for o in range(self.octaves):
            if min(img.shape) < 8:
                break
            for lev in range(self.L):
                s_rel = 2.0 ** (lev / self.L)  # sigma in this octave's pixels, in [1, 2)
                # the octave already carries a blur of about 0.5 px (camera) / 0.56 px (pyrDown)
                g = cv2.GaussianBlur(img, (0, 0), math.sqrt(s_rel**2 - 0.56**2))
                lap = cv2.Laplacian(g, cv2.CV_32F) * s_rel**2
                p = (xy / 2.0**o).reshape(-1, 1, 2)
                v = cv2.remap(lap, p[..., 0], p[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                resp.append(np.abs(v[:, 0]))
                levels.append(o + lev / self.L)
            img = cv2.pyrDown(img)
        r = np.stack(resp, 1)  # (N, S)
        i = r.argmax(1)
        n = np.arange(len(r))
        il, ir = np.clip(i - 1, 0, r.shape[1] - 1), np.clip(i + 1, 0, r.shape[1] - 1)
        den = r[n, il] - 2 * r[n, i] + r[n, ir]
        delta = np.where(den < -1e-12, 0.5 * (r[n, il] - r[n, ir]) / np.minimum(den, -1e-12), 0.0)
        delta = np.where((i == 0) | (i == r.shape[1] - 1), 0.0, np.clip(delta, -0.5, 0.5))
        log2_sigma = np.asarray(levels)[i] + delta / self.L
        return None, 2.0 * np.exp2(log2_sigma)


class KorniaOrientation:
    """kornia's ``LAFOrienter`` (dominant gradient) on a window of ``mr_size`` times the detector's
    size; the size is the detector's."""

    def __init__(self, mr_size: float = 6.0) -> None:
        from kornia.feature import LAFOrienter

        self.op, self.mr_size = LAFOrienter(32), mr_size

    @torch.inference_mode()
    def __call__(self, image: np.ndarray, feats: Features) -> tuple[np.ndarray, np.ndarray]:
        laf = self.op(feats.to_laf(self.mr_size), torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None])
        return Features.from_laf(laf, feats.image_size, self.mr_size).orientations, feats.scales


def build_methods(estimator: PatchPoseEstimator, fixed: PatchPoseEstimator | None) -> dict:
    """The benchmark's methods by name (see :func:`run_keypoints`)."""

    def detector_pose(image, feats):
        return feats.orientations, feats.scales

    def ssfeat_positions(image, feats):
        p = estimator.keypoint_poses(image, feats.keypoints)
        return p.orientation[:, 0].numpy(), p.size[:, 0].numpy()

    def ssfeat_prior(image, feats):
        p = estimator.keypoint_poses(image, feats.keypoints, feats.scales)
        return p.orientation[:, 0].numpy(), p.size[:, 0].numpy()

    methods = {
        "detector": detector_pose,
        "kornia": KorniaOrientation(),
        "log": LoGScaleSelection(),
    }
    if fixed is not None:

        @torch.inference_mode()
        def fixed_window(image, feats):
            out = fixed(fixed.extract(image, feats.keypoints, 32.0))
            return out.orientation.cpu().numpy(), 32.0 * np.exp2(out.log2_scale.cpu().numpy())

        methods["ssfeat_fixed"] = fixed_window

        @torch.inference_mode()
        def at_detector_size(image, feats):
            P = fixed.config.patch_size
            A = (ORIENTER_WINDOW * feats.scales / P)[:, None, None] * np.eye(2)
            return fixed(sample_patches(image, feats.keypoints, A, P)[:, None]).orientation.cpu().numpy(), feats.scales

        methods["ssfeat_orienter"] = at_detector_size
    methods["ssfeat"] = ssfeat_positions
    methods["ssfeat_prior"] = ssfeat_prior
    return methods


# ------------------------------------------------------------------------------------------------
# scoring


def _accuracies(dori: np.ndarray | None, dscale: np.ndarray | None) -> dict[str, float]:
    out = {}
    if dori is not None:
        e = np.degrees(np.abs(dori))
        out.update({"ori@5": 100.0 * float((e <= 5).mean()), "ori@10": 100.0 * float((e <= 10).mean())})
    if dscale is not None:
        e = np.abs(dscale)
        out.update({"size@1/6": 100.0 * float((e <= 1 / 6).mean()), "size@1/3": 100.0 * float((e <= 1 / 3).mean())})
    return out


def score_pairs(records: list[dict]) -> dict:
    """Accuracies over keypoint-pair ``records`` (``ori_err``/``scale_err`` per method, ``zoom``),
    overall and per zoom bin."""
    if not records:
        return {"n": 0, "methods": {}, "by_zoom": {}}
    zoom = np.concatenate([r["zoom"] for r in records])
    methods = {}
    by_zoom: dict[str, dict] = {}
    edges = np.asarray(ZOOM_BINS)
    for name in records[0]["methods"]:
        dori = [r["methods"][name][0] for r in records]
        dsc = [r["methods"][name][1] for r in records]
        dori = None if dori[0] is None else np.concatenate(dori)
        dsc = None if dsc[0] is None else np.concatenate(dsc)
        methods[name] = _accuracies(dori, dsc)
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (zoom >= lo) & ((zoom < hi) | ((hi == edges[-1]) & (zoom <= hi)))
            if m.any():
                key = f"{lo:+.1f}..{hi:+.1f}"
                by_zoom.setdefault(key, {"n": int(m.sum())})[name] = _accuracies(
                    None if dori is None else dori[m], None if dsc is None else dsc[m]
                )
    return {"n": int(len(zoom)), "methods": methods, "by_zoom": by_zoom}


def evaluate_pair(
    im0: np.ndarray, im1: np.ndarray, H: np.ndarray, source: KeypointSource, methods: dict, match_px: float
) -> dict | None:
    """Keypoint pairs of one image pair and each method's orientation and log2 size errors."""
    f0, f1 = source(im0), source(im1)
    idx = pair_keypoints(f0.keypoints, f1.keypoints, H, match_px)
    if len(idx) == 0:
        return None
    f0, f1 = f0.subset(idx[:, 0]), f1.subset(idx[:, 1])
    theta, log2s = local_rotation_scale(torch.from_numpy(f0.keypoints.astype(np.float64)), torch.from_numpy(H))
    theta, log2s = theta.numpy(), log2s.numpy()
    errs = {}
    for name, m in methods.items():
        o0, s0 = m(im0, f0)
        o1, s1 = m(im1, f1)
        dori = None if o0 is None else angle_diff(np.asarray(o1, np.float64) - np.asarray(o0, np.float64), theta)
        dsc = None if s0 is None else np.log2(np.asarray(s1, np.float64) / np.asarray(s0, np.float64)) - log2s
        errs[name] = (dori, dsc)
    return {"zoom": log2s, "methods": errs}


def timing(methods: dict, source: KeypointSource, image: np.ndarray, rounds: int = 5) -> dict:
    """Seconds for the pose of 1000 keypoints of ``image`` (``(H, W)`` float) per method, and
    OpenCV SIFT ``detectAndCompute`` on it: the best of ``rounds`` interleaved repeats."""
    u8 = to_uint8(image)
    sift = cv2.SIFT_create(nfeatures=1000)
    detected = source(image)
    feats = detected.subset(np.arange(min(1000, len(detected))))
    fns = {"sift_detect_and_compute": lambda: sift.detectAndCompute(u8, None)}
    fns.update({name: functools.partial(m, image, feats) for name, m in methods.items()})
    best = interleaved_seconds(fns, rounds, reduce="best")
    n = len(feats)
    return {"n_keypoints": n, "seconds": best, "keypoints_per_s": {k: n / v for k, v in best.items() if v > 0}}


def run_keypoints(
    roots: list[str | Path],
    images: str | Path | None,
    estimator: PatchPoseEstimator,
    cfg: KeypointBenchmarkConfig | None = None,
    fixed: PatchPoseEstimator | None = None,
    progress: bool = False,
) -> dict:
    """The keypoint pose benchmark on sequences under ``roots`` (each root is one dataset) and on
    similarity views of the photos under ``images``.

    Methods: ``detector`` (the detector's own orientation and size: SIFT's, or ssfeat's detector's),
    ``kornia`` (dominant gradient on 6x the detector's size; its size), ``log`` (LoG scale selection,
    size only), ``ssfeat_fixed`` (``fixed``, the patch estimator on 32 px windows),
    ``ssfeat_orienter`` (``fixed``'s orientation on 12x the detector's size, the size the detector's,
    the window of the ``ssfeat`` pipeline), ``ssfeat``
    (scale-covariant pose from the positions alone), ``ssfeat_prior`` (refining the detector's size).

    Returns:
        ``{"config", "datasets": {name: {"pairs", "n", "methods", "by_zoom"}}, "timing"}``.
    """
    cfg = cfg or KeypointBenchmarkConfig()
    source = KeypointSource(cfg)
    methods = build_methods(estimator, fixed)
    sources = [sequence_pairs(r) for r in roots]
    if images is not None:
        sources.append(similarity_pairs(images, cfg))
    records: dict[str, list] = {}
    pairs: dict[str, int] = {}
    last_image = None
    for src in sources:
        for dataset, _name, im0, im1, H in src:
            r = evaluate_pair(im0, im1, H, source, methods, cfg.match_px)
            pairs[dataset] = pairs.get(dataset, 0) + 1
            records.setdefault(dataset, [])
            if r is not None:
                records[dataset].append(r)
            last_image = im0
            if progress:
                print(f"\r{dataset}: {pairs[dataset]} pairs", end="", flush=True)
    if progress:
        print()
    if not pairs:
        raise ValueError("no image pairs: give --root folders of sequences and/or --images")
    datasets = {d: {"pairs": pairs[d], **score_pairs(records[d])} for d in pairs}
    if len(datasets) > 1:
        datasets["all"] = {"pairs": sum(pairs.values()), **score_pairs([r for v in records.values() for r in v])}
    img = cv2.resize(last_image, (640, 480), interpolation=cv2.INTER_AREA)
    return {"config": asdict(cfg), "datasets": datasets, "timing": timing(methods, source, img)}


def format_keypoints(result: dict) -> str:
    """Plain-text tables of a :func:`run_keypoints` result."""
    lines = []
    for name, d in result["datasets"].items():
        lines.append(f"{name}: {d['pairs']} image pairs, {d['n']} keypoint pairs")
        lines.append(f"  {'method':14s} {'ori@5':>7s} {'ori@10':>7s} {'size@1/6':>9s} {'size@1/3':>9s}")
        for m, acc in d["methods"].items():
            cells = [f"{acc[k]:7.1f}" if k in acc else "      -" for k in ("ori@5", "ori@10")]
            cells += [f"{acc[k]:9.1f}" if k in acc else "        -" for k in ("size@1/6", "size@1/3")]
            lines.append(f"  {m:14s} " + " ".join(cells))
    t = result["timing"]
    lines.append(f"time for {t['n_keypoints']} keypoints of a 640x480 image (best of interleaved repeats):")
    for m, s in t["seconds"].items():
        lines.append(f"  {m:24s} {1000 * s:8.1f} ms")
    return "\n".join(lines)


__all__ = [
    "KeypointBenchmarkConfig",
    "LoGScaleSelection",
    "calibrate_size_factor",
    "format_keypoints",
    "pair_keypoints",
    "run_keypoints",
    "score_pairs",
    "SMALLEST_SIZE",
    "calibrate_size_range",
]


# the smallest size the scale histogram covers after calibration (pixels, cv2.KeyPoint.size meaning);
# with 33 rings at 4 per octave it spans 0.35 to 90 px
SMALLEST_SIZE = 0.35


def calibrate_size_factor(scale_model, images: list[np.ndarray], max_keypoints: int = 500) -> float:
    """The ``size_factor`` that makes the scale network's sizes match OpenCV SIFT's sizes in the
    median (log2) at SIFT keypoints of ``images`` (``(H, W)`` float photos in [0, 1]): the factor
    multiplies every size, so it changes no relative size."""
    c = scale_model.config
    ratios = []
    sift = cv2.SIFT_create(nfeatures=max_keypoints)
    for im in images:
        kps = strongest_distinct(sift.detect(to_uint8(im), None), max_keypoints)
        if not kps:
            continue
        xy = np.array([k.pt for k in kps])
        with torch.inference_mode():
            size, _ = scale_model.sizes(scale_model(sample_logpolar(im, xy, c.grid)))
        r = size[:, 0].numpy() / c.size_factor
        ratios.append(np.log2(np.array([k.size for k in kps]) / r))
    if not ratios:
        raise ValueError("no SIFT keypoints in the calibration photos")
    return float(2.0 ** np.median(np.concatenate(ratios)))


def calibrate_size_range(scale_model, images: list[np.ndarray], rounds: int = 2) -> tuple[float, float]:
    """Set the scale network's ``size_factor`` (:func:`calibrate_size_factor`) and place its rings
    so that the histogram's smallest size is :data:`SMALLEST_SIZE`: ``min_radius = SMALLEST_SIZE /
    size_factor``. The network is convolutional along the rings, so moving the ring range changes
    which sizes it can report, not what it computes at a given radius; training leaves the offset
    between a feature's size and its histogram ring free, and a range left where training put it can
    cut off the large sizes of zoomed-in views. Repeated ``rounds`` times (a cut-off range biases
    the first calibration). Returns ``(size_factor, min_radius)``."""
    c = scale_model.config
    for _ in range(rounds):
        c.size_factor = calibrate_size_factor(scale_model, images)
        c.min_radius = SMALLEST_SIZE / c.size_factor
    return c.size_factor, c.min_radius
