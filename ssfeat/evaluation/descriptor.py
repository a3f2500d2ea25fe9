"""Descriptor benchmark: learned descriptors against SIFT and RootSIFT at the same keypoints.

Every pipeline detects the same OpenCV SIFT keypoints (equal budget) and matches by mutual nearest
neighbours; only the descriptor differs (and, for ``ssfeat_hndesc_patch``, the orientation of the
described patch). Metrics are those of :mod:`ssfeat.evaluation.matching` (MMA at 1..10 px, homography
accuracy at 1/3/5/10 px after RANSAC) per dataset and category, plus the D2-Net average (mean of the
viewpoint and illumination means) and the time to describe 2000 keypoints of a 640x480 image (an
image of the first scored pair; ``null`` with the reason under ``describe_2000_640x480_unavailable``
if it has no SIFT keypoint). Pairs with an unreadable, too small or blank image are skipped as in
:func:`~ssfeat.evaluation.matching.run_matching`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import cv2
import numpy as np

from ..pipeline import SIFTDetector, build_pipeline, pipeline_estimator
from .matching import MatchingConfig, read_benchmark_image, run_matching
from .report import render_rows
from .timing import interleaved_seconds

logger = logging.getLogger(__name__)

DESCRIPTOR_PIPELINES = ("sift", "sift_rootsift", "hndesc", "hndesc_patch", "ssfeat_hndesc_patch")


def time_descriptors(pipelines: dict, image: np.ndarray, n_keypoints: int = 2000, repeats: int = 5) -> dict:
    """Seconds (median of ``repeats`` interleaved rounds, after a warm-up:
    :func:`~ssfeat.evaluation.timing.interleaved_seconds`) each pipeline's descriptor stage takes for
    ``n_keypoints`` SIFT keypoints of ``image`` (resized to 640x480); ``n_keypoints`` is the number
    actually described.

    Raises:
        ValueError: ``image`` has no SIFT keypoint (e.g. blank): there is nothing to time.
    """
    img = cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA)
    feats = SIFTDetector(n_keypoints, contrast_threshold=0.01)(img)
    if len(feats) == 0:
        raise ValueError("no SIFT keypoint in the image, nothing to describe")
    oriented = {name: p.orienter(img, feats) for name, p in pipelines.items()}  # not part of the time
    fns = {name: functools.partial(p.descriptor, img, oriented[name]) for name, p in pipelines.items()}
    return {"n_keypoints": len(feats), **interleaved_seconds(fns, repeats)}


def run_descriptor_benchmark(
    roots: list[str | Path],
    names: list[str] | tuple[str, ...] = DESCRIPTOR_PIPELINES,
    weights: str = "descriptor",
    progress: bool = True,
    cfg: MatchingConfig | None = None,
) -> dict:
    """The descriptor pipelines ``names`` (see :data:`ssfeat.pipeline.PIPELINES`) on every pair under
    ``roots``; ``weights`` is the learned descriptor's (bundled name, file or run)."""

    cfg = cfg or MatchingConfig()
    est = pipeline_estimator(device=cfg.device) if any("ssfeat" in n or "_rc" in n for n in names) else None
    n_kp, octave, dev = cfg.max_keypoints, cfg.sift_first_octave, cfg.device
    pipes = {
        n: build_pipeline(n, n_kp, est, descriptor_weights=weights, sift_first_octave=octave, device=dev) for n in names
    }
    result = run_matching(roots, pipes, cfg, est, progress)
    result["benchmark"] = "descriptor"
    result["descriptor_weights"] = str(weights)
    bases = {n.rstrip("*"): p for n, p in pipes.items()}
    timing, why = None, []
    for path in result["timing_pair"]:  # the first scored pair (run_matching stops if there is none)
        try:
            timing = time_descriptors(bases, read_benchmark_image(path))
            break
        except ValueError as e:  # ImageReadError, BenchmarkImageError, or no keypoint to describe
            why.append(f"{path}: {e}" if str(path) not in str(e) else str(e))
    result["describe_2000_640x480_s"] = timing
    if timing is None:
        result["describe_2000_640x480_unavailable"] = "; ".join(why)
        logger.warning("descriptor timing unavailable: %s", "; ".join(why))
    return result


def format_d2net_table(result: dict) -> str:
    """D2-Net average (mean of the viewpoint and illumination means) per pipeline, if both exist."""
    cfg = result["config"]
    ts = list(cfg["mma_thresholds"])
    rows = [["pipeline"] + [f"MMA@{t}" for t in (1, 3, 5, 10)] + [f"H@{t}px" for t in cfg["h_thresholds"]]]
    for name, s in result["pipelines"].items():
        a = s.get("d2net_average")
        if a is None:
            return "D2-Net average: needs both viewpoint and illumination pairs"
        rows.append(
            [name]
            + [f"{100 * a['mma'][ts.index(t)]:.1f}" for t in (1, 3, 5, 10)]
            + [f"{100 * v:.1f}" for v in a["h_acc"]]
        )
    return "D2-Net average (viewpoint and illumination means)\n" + render_rows(rows)
