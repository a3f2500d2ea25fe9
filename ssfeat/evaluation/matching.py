"""Matching benchmark on image pairs with ground-truth homographies (HPatches, Oxford, EVD layouts).

Every pipeline sees the same pairs and the same keypoint budget. Per pair:

* **repeatability** (detector): keypoints of each image that are visible in the other image (their
  projection by the true homography falls inside it) and have a keypoint of the other image within
  ``rep_threshold`` px, over all visible keypoints, both directions pooled;
* **MMA@t**, t = 1..10 px: share of matches whose reprojection error ``|H_0to1 x0 - x1|`` is <= t
  (a pair without matches scores 0); the number of matches and of correct matches (<= 3 px);
* **homography accuracy**: OpenCV RANSAC (3 px, 5000 iterations, confidence 0.9995) on the matches;
  the error is the mean distance between the four corners of image 0 mapped by the estimated and by
  the true homography; accuracy at 1/3/5/10 px (no model: failure), and the AUC of the
  corner-error curve up to each threshold (as LightGlue and hloc report it): the mean over pairs
  of ``max(0, 1 - error / t)``, which weighs how close each pair is instead of counting it in or out.
* **floor**: the corner error of the least-squares homography of the correct matches alone
  (:func:`floor_corner_error`; per pair in the JSON), and the share of pairs where it is within
  3 px (``floor_h3``): on pairs above it, keypoint localisation or ground-truth error, more than
  which matches were found, keeps the fit off.

The pipeline names ``oracle`` and ``oracle_scale`` (this benchmark only: they read the ground
truth) are the ``sift`` pipeline with ground-truth similarity poses: the same SIFT keypoints, SIFT
descriptor and matcher, with image-0 keypoints upright and image-1 keypoints turned by the true
homography's local rotation at their preimage, so that the orientations of corresponding keypoints
agree exactly (:func:`oracle_orientations`); ``oracle`` keeps SIFT's sizes, ``oracle_scale`` also
makes the sizes agree exactly (image 0: the median SIFT size of that image; image 1: that size times
the homography's local scale).

Pairs are grouped by dataset (the ``--root`` they come from), sequence and category: HPatches ``v_*``
and EVD are ``viewpoint``, HPatches ``i_*`` ``illumination``; the Oxford sequences are graf, wall
(viewpoint), bark, boat (zoom+rotation), leuven (illumination), bikes, trees (blur) and ubc (jpeg);
any other sequence is ``other``. The D2-Net style average is the mean of the viewpoint and
illumination means. Printed tables and plot panels that would repeat another (one dataset, one
category) are left out (:func:`~ssfeat.evaluation.report.distinct_groups`).

Bad input: a pair is skipped, with a warning naming the file and the reason, and listed under
``skipped`` in the JSON (``"image0 -> image1: reason"``), when one of its images is unreadable,
smaller than :data:`MIN_IMAGE_SIDE` px a side (no room for the keypoint window) or blank (under 2
gray levels from darkest to brightest, :func:`ssfeat.data.images.is_blank`, as in training), or when
a pipeline cannot process it; every pipeline then sees the same pairs and the averages are over the
scored pairs alone (:func:`read_benchmark_image`, shared by the detector and descriptor benchmarks).
If every pair is skipped the benchmark stops with an error.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..data.images import ImageReadError, check_usable, read_image, to_uint8
from ..data.sequences import find_sequences
from ..features import Features, check_first_octave
from ..geometry import warp_xy
from ..inference.pose import PatchPoseEstimator
from ..pipeline import OrientationFilter, Pipeline, RansacHomography, build_pipeline, pipeline_estimator
from ..viz import save_figure
from .metrics import (
    auc_share,
    corner_error,
    floor_corner_error,
    keypoint_metrics,
    repeatability,
    sign_test_p,
    standard_error,
)
from .oracle import ORACLES, OracleFeatures
from .patchpose import PoseBenchmarkConfig
from .report import distinct_groups, format_grouped_table, meta, render_rows
from .rotation import compensated_features, rotation_row
from .timing import interleaved_seconds

logger = logging.getLogger(__name__)

# the Oxford affine sequences by the change they show (Mikolajczyk et al., 2005); any other
# sequence in this layout is "other"
OXFORD_CATEGORIES = {
    "graf": "viewpoint",
    "wall": "viewpoint",
    "boat": "zoom+rotation",
    "bark": "zoom+rotation",
    "leuven": "illumination",
    "bikes": "blur",
    "trees": "blur",
    "ubc": "jpeg",
}
DEFAULT_PIPELINES = (
    "sift",
    "sift*",
    "upright",
    "kornia",
    "ssfeat",
    "ssfeat*",
    "ssfeat_multi",
    "ssfeat_scale",
    "asift",
    "ssfeat_asift",
)


# Smallest image side (px) the benchmarks score: the 32 px window the patch-pose pipelines read
# around each keypoint (PatchPoseEstimator.extract) fits in it, and so
# does everything else the pipelines need (the learned detector 19 px with its 8 px border, the
# learned descriptor 8 px). Smaller images are skipped rather than scored 0.
MIN_IMAGE_SIDE = 32


class BenchmarkImageError(ValueError):
    """A readable image the benchmarks cannot score (too small or blank); the message names the file."""


def read_benchmark_image(path: str | Path) -> np.ndarray:
    """Read ``path`` for a benchmark as a ``(H, W)`` float32 gray image in ``[0, 1]``.

    Raises:
        ImageReadError: the file is missing or not a readable image.
        BenchmarkImageError: the image is smaller than :data:`MIN_IMAGE_SIDE` px a side or blank
            (:func:`ssfeat.data.images.is_blank`): it has no keypoint for any pipeline, so scoring it 0
            would only drag the averages down.
    """
    image = read_image(path)
    try:
        return check_usable(image, path, MIN_IMAGE_SIDE)
    except ValueError as e:
        raise BenchmarkImageError(str(e)) from None


@dataclass
class MatchingConfig:
    """Settings of the matching benchmark (stored in the JSON output)."""

    max_keypoints: int = 1000
    mma_thresholds: tuple[int, ...] = tuple(range(1, 11))
    rep_threshold: float = 3.0
    correct_threshold: float = 3.0
    h_thresholds: tuple[int, ...] = (1, 3, 5, 10)
    ransac_threshold: float = 3.0
    ransac_iters: int = 5000
    ransac_confidence: float = 0.9995
    # OpenCV's RANSAC draws its samples from a fixed generator, so its answer depends on the order of
    # the matches alone; the homography metrics are averaged over this many orders (the given one,
    # then fixed shuffles). On the 50 real pairs of docs/benchmarks.md a single fit's H@3 spans 40-48%
    # over orders; the mean of 50 fits varies by under 0.3 points
    ransac_repeats: int = 50
    timing_repeats: int = 5
    sift_first_octave: int = 0  # SIFT descriptor pyramid (ssfeat.pipeline.SIFTDescriptor; -1: OpenCV's own)
    device: str = "cpu"  # torch device of the networks ("auto": CUDA, else MPS, else CPU)

    def __post_init__(self) -> None:
        # the tables and the paired comparison report MMA@1/3/5/10, H@1/3 and AUC@3
        if not {1, 3, 5, 10} <= set(self.mma_thresholds):
            raise ValueError(f"mma_thresholds must include 1, 3, 5 and 10 px, got {self.mma_thresholds}")
        if not {1, 3} <= set(self.h_thresholds):
            raise ValueError(f"h_thresholds must include 1 and 3 px, got {self.h_thresholds}")
        if min(self.mma_thresholds + self.h_thresholds) <= 0 or self.max_keypoints < 1:
            raise ValueError("thresholds must be positive and max_keypoints at least 1")
        if self.ransac_repeats < 1:
            raise ValueError(f"ransac_repeats must be at least 1, got {self.ransac_repeats}")
        check_first_octave(self.sift_first_octave, "sift_first_octave")


@dataclass
class ImagePair:
    dataset: str
    sequence: str
    category: str
    path0: Path
    path1: Path
    H_0to1: np.ndarray = field(repr=False)


def category_of(layout: str, sequence: str) -> str:
    """The change a sequence shows: HPatches ``v_*`` viewpoint, ``i_*`` illumination, EVD viewpoint,
    the Oxford sequences by :data:`OXFORD_CATEGORIES`; a sequence none of these name is "other"."""
    base = Path(sequence).name
    if layout == "hpatches":
        return {"v_": "viewpoint", "i_": "illumination"}.get(base[:2], "other")
    if layout == "evd":
        return "viewpoint"
    return OXFORD_CATEGORIES.get(base, "other")


def image_pairs(roots: list[str | Path]) -> list[ImagePair]:
    """All (reference, target) pairs of every sequence under each root."""
    out = []
    seen = set()
    for root in map(Path, roots):
        if root.resolve() in seen:  # a root given twice counts once
            continue
        seen.add(root.resolve())
        seqs = find_sequences(root)
        if not seqs:
            logger.warning("no Oxford, HPatches or EVD sequences under %s", root)
        for seq in seqs:
            cat = category_of(seq.layout, seq.name)
            for t, H in zip(seq.targets, seq.H):
                out.append(ImagePair(Path(root).name, seq.name, cat, seq.reference, t, H))
    if not out:
        raise ValueError(f"no image pairs (Oxford, HPatches or EVD layout) under {', '.join(map(str, roots))}")
    return out


def ransac_orders(n: int, repeats: int) -> list[np.ndarray]:
    """``repeats`` orders of ``n`` matches for repeated RANSAC: the given order, then fixed shuffles
    (seeds 1, 2, ...), so that every run of the benchmark draws the same samples."""
    return [np.arange(n)] + [np.random.default_rng(r).permutation(n) for r in range(1, repeats)]


def score_pair(f0: Features, f1: Features, idx: np.ndarray, H_gt: np.ndarray, cfg: MatchingConfig, ransac) -> dict:
    """Metrics of one pair's matches ``idx`` ``(M, 2)``.

    The homography is fitted ``cfg.ransac_repeats`` times on shuffled matches (:func:`ransac_orders`):
    ``h_acc`` and ``h_auc`` are means over those fits (a pair solved by 7 of 10 fits at 3 px counts
    0.7), ``corner_error`` is their median and ``corner_errors`` lists them.
    """
    x0, x1 = f0.keypoints[idx[:, 0]].astype(np.float64), f1.keypoints[idx[:, 1]].astype(np.float64)
    err = np.linalg.norm(warp_xy(x0, H_gt) - x1, axis=1) if len(idx) else np.zeros(0)
    orders = ransac_orders(len(idx), cfg.ransac_repeats)
    cerr = np.array([corner_error(ransac.fit(x0[o], x1[o])[0], H_gt, f0.image_size) for o in orders])
    correct = err <= cfg.correct_threshold
    return {
        "corner_error_floor": floor_corner_error(x0, x1, correct, H_gt, f0.image_size),
        "mma": [float((err <= t).mean()) if len(err) else 0.0 for t in cfg.mma_thresholds],
        "matches": int(len(idx)),
        "correct": int(correct.sum()),
        "h_acc": [float((cerr <= t).mean()) for t in cfg.h_thresholds],
        "h_auc": [float(np.mean([auc_share(c, t) for c in cerr])) for t in cfg.h_thresholds],
        "corner_error": float(np.median(cerr)),
        "corner_errors": [round(float(c), 3) for c in cerr],
    }


def _mean(rows: list[dict]) -> dict:
    """Average per-pair metric dicts (lists element-wise)."""
    out = {"pairs": len(rows)}
    for k in ("mma", "h_acc", "h_auc"):
        out[k] = np.mean([r[k] for r in rows], 0).round(4).tolist()
    for k in ("matches", "correct"):
        out[k] = round(float(np.mean([r[k] for r in rows])), 2)
    reps = [r["repeatability"] for r in rows if r["repeatability"] is not None]
    out["repeatability"] = round(float(np.mean(reps)), 2) if reps else None
    one = [r["rep_oneway"] for r in rows if r.get("rep_oneway") is not None]
    out["rep_oneway"] = round(float(np.mean(one)), 2) if one else None
    ori = [r["ori_acc"] for r in rows if r.get("ori_acc") is not None]
    out["ori_acc"] = np.mean(ori, 0).round(2).tolist() if ori else None
    rot = [r["rotation_error_deg"] for r in rows if "rotation_error_deg" in r]
    if rot:  # rotation-compensating pipelines: share of pairs whose rotation estimate is within 5 / 10 deg
        out["rotation_acc"] = [round(float(np.mean(np.array(rot) <= t)), 4) for t in (5, 10)]
        out["median_rotation_error_deg"] = round(float(np.median(rot)), 2)
    out["median_corner_error"] = round(float(np.median([r["corner_error"] for r in rows])), 3)
    floors = [r["corner_error_floor"] for r in rows if "corner_error_floor" in r]
    if floors:  # pairs whose correct matches alone fit within 3 px (the H@3 threshold)
        out["floor_h3"] = round(float(np.mean([f <= 3 for f in floors])), 4)
    return out


def summarize(per_pair: list[dict]) -> dict:
    """Averages overall, per dataset (with the viewpoint / illumination split), category and sequence."""
    groups: dict[str, dict[str, list[dict]]] = {"dataset": {}, "category": {}, "sequence": {}}
    for r in per_pair:
        groups["dataset"].setdefault(r["dataset"], []).append(r)
        groups["category"].setdefault(r["category"], []).append(r)
        groups["sequence"].setdefault(f"{r['dataset']}/{r['sequence']}", []).append(r)
    out = {"all": _mean(per_pair)}
    for g, d in groups.items():
        out[g] = {k: _mean(v) for k, v in sorted(d.items())}
    v, i = out["category"].get("viewpoint"), out["category"].get("illumination")
    if v and i:
        out["d2net_average"] = {k: (np.add(v[k], i[k]) / 2).round(4).tolist() for k in ("mma", "h_acc", "h_auc")}
    return out


def paired_comparison(per_pair: dict[str, list[dict]], baseline: str, cfg: MatchingConfig, by: str = "dataset") -> dict:
    """Every pipeline against ``baseline`` on the same pairs, overall and per ``by`` group.

    Homography accuracy at each of ``cfg.h_thresholds``: pairs the pipeline solves more often than
    the baseline over the repeated RANSAC fits (``h_wins``; with one fit, the pairs only the pipeline
    gets right), pairs the baseline solves more often (``h_losses``) and the exact sign-test p-value
    (lists in threshold order). H@3, MMA@3 and homography AUC@3: mean per-pair difference (points)
    and its standard error.
    A small p, or a difference of several standard errors, says the gap is more than the draw of
    pairs.
    """
    m3, h3 = cfg.mma_thresholds.index(3), cfg.h_thresholds.index(3)
    base = per_pair[baseline]
    groups = {"all": list(range(len(base)))}
    for i, r in enumerate(base):
        groups.setdefault(r[by], []).append(i)
    out = {}
    for g, idx in groups.items():
        out[g] = {}
        for name, rows in per_pair.items():
            if name == baseline:
                continue
            dh = np.array([rows[i]["h_acc"] for i in idx]) - np.array([base[i]["h_acc"] for i in idx])  # (pairs, thr)
            d = 100 * np.array([rows[i]["mma"][m3] - base[i]["mma"][m3] for i in idx])
            da = 100 * np.array([rows[i]["h_auc"][h3] - base[i]["h_auc"][h3] for i in idx])
            wins, losses = (dh > 1e-9).sum(0).tolist(), (dh < -1e-9).sum(0).tolist()
            out[g][name] = {
                "pairs": len(idx),
                "h_wins": wins,
                "h_losses": losses,
                "h_sign_test_p": [round(sign_test_p(w, v), 4) for w, v in zip(wins, losses)],
                "h3_diff": round(float(100 * dh[:, h3].mean()), 3),
                "h3_diff_se": standard_error(100 * dh[:, h3]),
                "mma3_diff": round(float(d.mean()), 3),
                "mma3_diff_se": standard_error(d),
                "h_auc3_diff": round(float(da.mean()), 3),
                "h_auc3_diff_se": standard_error(da),
            }
    return out


def format_paired_table(result: dict, thresholds: tuple[int, ...] = (1, 3)) -> str:
    """Text table of :func:`paired_comparison` (``result["paired"]``): wins/losses and sign-test p
    at the H thresholds ``thresholds`` and the MMA@3 and homography AUC@3 differences."""
    p, hs = result["paired"], list(result["config"]["h_thresholds"])
    head = ["group", "pipeline", "pairs"]
    for t in thresholds:
        head += [f"H@{t} wins/losses", "p"]
    rows = [head + ["H@3 diff", "s.e.", "MMA@3 diff", "s.e.", "H-AUC@3 diff", "s.e."]]
    for g, d in p["groups"].items():
        for name, r in d.items():
            row = [g, name, str(r["pairs"])]
            for t in thresholds:
                j = hs.index(t)
                row += [f"{r['h_wins'][j]}/{r['h_losses'][j]}", f"{r['h_sign_test_p'][j]:.3f}"]
            for k in ("h3_diff", "mma3_diff", "h_auc3_diff"):
                se = r.get(f"{k}_se")
                row += [f"{r[k]:+.2f}", "-" if se is None else f"{se:.2f}"]
            rows.append(row)
    title = (
        f"paired against {p['baseline']} on the same pairs (sign test p; H@3, MMA@3 and homography AUC@3 "
        "differences in points)"
    )
    return title + "\n" + render_rows(rows)


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def time_pair(pipelines: dict[str, Pipeline], image0: np.ndarray, image1: np.ndarray, repeats: int = 5) -> dict:
    """Seconds for extraction + matching of one pair, the median of ``repeats`` interleaved rounds
    (each round times every method once, so load changes on a shared machine hit all of them alike):
    OpenCV SIFT with one ``detectAndCompute`` call per image (``opencv_sift``, the reference), OpenCV
    SIFT with separate ``detect`` and ``compute`` calls (``opencv_sift_detect_compute``), both with
    brute-force mutual matching, and each pipeline."""
    u0, u1 = (to_uint8(x) for x in (image0, image1))
    n = next(iter(pipelines.values())).detector.max_keypoints if pipelines else 1000
    sift = cv2.SIFT_create(nfeatures=n)
    bf = cv2.BFMatcher(cv2.NORM_L2, crossCheck=True)

    def match(d0, d1):
        return [] if d0 is None or d1 is None else bf.match(d0, d1)  # None: no keypoints

    def opencv():
        _, d0 = sift.detectAndCompute(u0, None)
        _, d1 = sift.detectAndCompute(u1, None)
        return match(d0, d1)

    def opencv_detect_compute():
        _, d0 = sift.compute(u0, sift.detect(u0, None))
        _, d1 = sift.compute(u1, sift.detect(u1, None))
        return match(d0, d1)

    def pipeline(p: Pipeline):
        return lambda: p.match_features(*p.extract_pair(image0, image1)[:2])

    methods = {"opencv_sift": opencv, "opencv_sift_detect_compute": opencv_detect_compute}
    methods.update({name: pipeline(p) for name, p in pipelines.items()})
    return interleaved_seconds(methods, max(1, repeats))


def _stages(
    pipelines: list[str] | dict[str, Pipeline], cfg: MatchingConfig, est: PatchPoseEstimator
) -> tuple[list[str], dict[str, Pipeline], dict[str, OracleFeatures]]:
    """The row names, the pipelines by base name (no ``*``) and the ground-truth rows wanted."""
    if isinstance(pipelines, dict):  # custom Pipeline objects by name
        clash = [k for k in pipelines if k.rstrip("*") in ORACLES]
        if clash:
            raise ValueError(f"{', '.join(clash)}: reserved for the ground-truth rows, rename the pipeline")
        bases, pipelines = {k.rstrip("*"): v for k, v in pipelines.items()}, list(pipelines)
    else:
        names = dict.fromkeys(n.rstrip("*") for n in pipelines if n.rstrip("*") not in ORACLES)  # ordered, no '*'
        bases = {
            b: build_pipeline(b, cfg.max_keypoints, est, sift_first_octave=cfg.sift_first_octave, device=cfg.device)
            for b in names
        }
    wanted = [b for b in ORACLES if any(n.rstrip("*") == b for n in pipelines)]
    oracles = {}
    if wanted:
        sift = (
            bases["sift"]
            if "sift" in bases
            else build_pipeline("sift", cfg.max_keypoints, sift_first_octave=cfg.sift_first_octave)
        )
        detections: dict[Path, Features] = {}  # shared by the oracle rows
        oracles = {b: OracleFeatures(sift, b == "oracle_scale", detections) for b in wanted}
    return list(pipelines), bases, oracles


class _Images:
    """Benchmark images read once; an unusable one is ``None``, with the reason kept in ``bad``."""

    def __init__(self) -> None:
        self.images: dict[Path, np.ndarray | None] = {}
        self.bad: dict[Path, str] = {}

    def __call__(self, path: Path) -> np.ndarray | None:
        if path not in self.images:
            try:
                self.images[path] = read_benchmark_image(path)
            except (ImageReadError, BenchmarkImageError) as e:
                logger.warning("%s; skipped with every pair it belongs to", e)
                self.images[path], self.bad[path] = None, str(e)
        return self.images[path]


def _score_rows(pair: ImagePair, names: list[str], bases: dict, oracles: dict, feats: dict, cfg, ransac) -> dict:
    """The metrics of every row on one pair whose features are in ``feats``."""
    ofilter = OrientationFilter()
    out = {}
    for name in names:
        b = name.rstrip("*")
        f0, f1 = feats[b, pair.path0], feats[b, pair.path1]
        m = (oracles[b] if b in oracles else bases[b]).matcher(f0, f1)
        if name.endswith("*"):
            m = ofilter(f0, f1, m)
        r = score_pair(f0, f1, m.idx, pair.H_0to1, cfg, ransac)
        r.update(
            dataset=pair.dataset,
            sequence=pair.sequence,
            category=pair.category,
            target=pair.path1.name,
            repeatability=repeatability(f0, f1, pair.H_0to1, cfg.rep_threshold),
            **keypoint_metrics(f0, f1, pair.H_0to1, cfg.rep_threshold),
        )
        out[name] = r
    return out


def _matching_result(roots, cfg: MatchingConfig, per_pair: dict, skipped: list, timing: dict, first, extract_s) -> dict:
    """The benchmark's JSON: settings, timing, per-pipeline summaries, paired comparison, per-pair rows."""
    out = meta(PoseBenchmarkConfig(), "matching", roots=[str(r) for r in roots], skipped=skipped)
    out["config"] = dataclasses.asdict(cfg)
    out["n_pairs"] = len(next(iter(per_pair.values())))
    out["timing_pair"] = [str(first.path0), str(first.path1)]  # the first scored pair
    out["timing_640x480_s"] = timing
    out["timing_ratio_vs_opencv"] = {k: round(v / timing["opencv_sift"], 2) for k, v in timing.items()}
    ref = timing["opencv_sift_detect_compute"]
    out["timing_ratio_vs_opencv_detect_compute"] = {k: round(v / ref, 2) for k, v in timing.items()}
    out["extract_s_per_image"] = {b: round(float(np.mean(v)), 4) for b, v in extract_s.items() if v}
    out["pipelines"] = {name: summarize(rows) for name, rows in per_pair.items()}
    if "sift" in per_pair:
        out["paired"] = {"baseline": "sift", "groups": paired_comparison(per_pair, "sift", cfg)}
    out["per_pair"] = per_pair
    return out


def run_matching(
    roots: list[str | Path],
    pipelines: list[str] | dict[str, Pipeline] = DEFAULT_PIPELINES,
    cfg: MatchingConfig | None = None,
    estimator: PatchPoseEstimator | None = None,
    progress: bool = True,
) -> dict:
    """Every pipeline on every pair under ``roots``; features are computed once per image and
    pipeline (``name*`` variants reuse the features of ``name``), except the image-1 features of
    the ground-truth rows ``oracle`` / ``oracle_scale``, which depend on the pair's homography
    (:class:`OracleFeatures`; names reserved for them, not timed)."""

    cfg = cfg or MatchingConfig()
    pairs = image_pairs(roots)
    names, bases, oracles = _stages(pipelines, cfg, estimator or pipeline_estimator(device=cfg.device))
    ransac = RansacHomography(cfg.ransac_threshold, cfg.ransac_iters, cfg.ransac_confidence)
    image = _Images()
    feats: dict[tuple[str, Path], Features] = {}
    rot_feats: dict[Path, Features] = {}  # the rotation estimator's, shared by the compensating pipelines
    extract_s = {b: [] for b in bases}
    per_pair: dict[str, list[dict]] = {name: [] for name in names}
    skipped, scored = [], []
    it = pairs
    if progress:
        from tqdm import tqdm

        it = tqdm(pairs, desc="matching", unit="pair", leave=False)
    for pair in it:
        im0, im1 = image(pair.path0), image(pair.path1)
        if im0 is None or im1 is None:
            why = "; ".join(image.bad[p] for p in (pair.path0, pair.path1) if p in image.bad)
            skipped.append(f"{pair.path0} -> {pair.path1}: {why}")
            continue
        try:
            rotation = {}
            for b, pipe in bases.items():
                for path, im in ((pair.path0, im0), (pair.path1, im1)):
                    if (b, path) not in feats and not (pipe.rotation is not None and path == pair.path1):
                        feats[b, path], dt = _timed(pipe.extract, im)
                        extract_s[b].append(dt)
                if pipe.rotation is not None:  # image 1's features depend on the pair
                    rotation[b], feats[b, pair.path1] = compensated_features(pipe, pair, im0, im1, rot_feats)
            for b, oracle in oracles.items():  # per pair: they read its homography
                feats[b, pair.path0], feats[b, pair.path1] = oracle(pair, im0, im1)
        except ValueError as e:  # e.g. an image too small for a pipeline: every pipeline skips the pair
            logger.warning("skipped %s -> %s: %s", pair.path0, pair.path1, e)
            skipped.append(f"{pair.path0} -> {pair.path1}: {e}")
            continue
        scored.append(pair)
        for name, r in _score_rows(pair, names, bases, oracles, feats, cfg, ransac).items():
            if name.rstrip("*") in rotation:
                r.update(rotation_row(rotation[name.rstrip("*")], pair, im0.shape))
            per_pair[name].append(r)
        for b in rotation:  # computed for this pair only
            feats.pop((b, pair.path1), None)
    if not any(per_pair.values()):
        raise ValueError("every image pair was skipped (unreadable, too small or blank images, see the warnings)")
    first = scored[0]  # timed on the first pair every pipeline processed
    im0, im1 = (cv2.resize(image(p), (640, 480), interpolation=cv2.INTER_AREA) for p in (first.path0, first.path1))
    timing = time_pair(bases, im0, im1, cfg.timing_repeats)
    return _matching_result(roots, cfg, per_pair, skipped, timing, first, extract_s)


def format_matching_table(result: dict, group: str = "all", with_repeatability: bool = True) -> str:
    """One row per pipeline: repeatability (optional), MMA@1/3/5/10, matches, correct, H-acc@1/3/5/10
    and homography AUC@3 (``group``: "all", "dataset" or "category")."""
    cfg = result["config"]
    ts, hs = list(cfg["mma_thresholds"]), list(cfg["h_thresholds"])
    head = ["pipeline"] + ["rep"] * with_repeatability + [f"MMA@{t}" for t in (1, 3, 5, 10)] + ["matches", "correct"]
    head += [f"H@{t}px" for t in hs] + ["AUC@3px"]

    def row(name: str, r: dict) -> list[str]:
        rep = "-" if r["repeatability"] is None else f"{r['repeatability']:.1f}"
        return (
            [name]
            + [rep] * with_repeatability
            + [f"{100 * r['mma'][ts.index(t)]:.1f}" for t in (1, 3, 5, 10)]
            + [f"{r['matches']:.0f}", f"{r['correct']:.0f}"]
            + [f"{100 * a:.1f}" for a in r["h_acc"]]
            + [f"{100 * r['h_auc'][hs.index(3)]:.1f}"]
        )

    return format_grouped_table(result, group, head, row)


def mma_panels(result: dict) -> list[tuple[str, str | None]]:
    """The panels of :func:`plot_mma`: ``("all", None)``, then one per category (or, when the
    categories repeat "all", per dataset); none that repeats another (:func:`distinct_groups`)."""
    first = next(iter(result["pipelines"].values()))
    extra = [g for g in distinct_groups(result, ("all", "category", "dataset")) if g != "all"][:1]
    return [("all", None)] + [(g, k) for g in extra for k in first[g]]


def plot_mma(result: dict, out: str | Path) -> Path:
    """Write :func:`mma_figure` of ``result`` to the PNG ``out``; returns the path written."""
    return save_figure(mma_figure(result), out, dpi=120)


def mma_figure(result: dict):
    """MMA-vs-threshold curves (mean matching accuracy against the pixel threshold), one panel for
    all pairs and one per category (:func:`mma_panels`); the legend sits right of the panels.
    Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ts = result["config"]["mma_thresholds"]
    first = next(iter(result["pipelines"].values()))
    panels = mma_panels(result)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 1.8, 3.4), squeeze=False, sharey=True)
    for ax, (g, k) in zip(axes[0], panels):
        for name, s in result["pipelines"].items():
            r = s[g] if k is None else s[g][k]
            ax.plot(ts, r["mma"], marker="o", ms=3, label=name, ls="--" if name.endswith("*") else "-")
        n = first[g]["pairs"] if k is None else first[g][k]["pairs"]
        ax.set_title(f"{'all pairs' if k is None else f'{g} {k}'} ({n} pairs)", fontsize=9)
        ax.set_xlabel("match error threshold (px)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean matching accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1 - 1.55 / fig.get_figwidth(), 0.5), fontsize=8)
    return fig
