"""Keypoint-detector evaluation: validation metrics on synthetic pairs and the detector benchmark on
real sequences (repeatability, keypoint orientation accuracy, matching, equivariance, speed)."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.images import to_uint8
from ..geometry import angle_diff, visibility_masks, warp_points, warp_to_view0
from ..inference.detector import DetectConfig, KeypointDetector, decode_orientation, nms_candidates
from ..pipeline import LearnedDetector, LearnedDetectorOrienter, build_pipeline
from .matching import MatchingConfig, read_benchmark_image, run_matching
from .report import format_grouped_table
from .timing import interleaved_seconds


def _sym_repeatability(xy0: torch.Tensor, xy1: torch.Tensor, H_0to1: torch.Tensor, thr: float) -> float:
    """Symmetric repeatability (%) of point sets already restricted to the common region."""
    n = min(len(xy0), len(xy1))
    if n == 0:
        return 0.0
    p01 = warp_points(xy0.double(), H_0to1.double())
    d = torch.cdist(p01, xy1.double())
    rep0 = (d.amin(1) <= thr).sum().item()
    rep1 = (d.amin(0) <= thr).sum().item()
    return 100.0 * (rep0 + rep1) / (len(xy0) + len(xy1))


@torch.no_grad()
def pair_metrics(model, batch: dict, border: int = 8, top_k: int = 25, nms_radius: int = 4, thr: float = 3.0) -> dict:
    """Validation metrics of a detector on synthetic pairs (``HomographyPairSynthesizer.batch``).

    * ``rep@3px``: symmetric repeatability of the ``top_k`` strongest NMS keypoints of each view
      inside the common region (visibility-masked), averaged over pairs;
    * ``ori_acc@10deg`` / ``ori_acc@20deg``: at those keypoints of view 0, the orientation difference
      between the two views' histograms (view 1 read at the corresponding point) against the
      ground-truth rotation;
    * ``ori_dense@10deg``: the same over every visible pixel.
    """
    B = batch["image0"].shape[0]
    score, ori = model(torch.cat([batch["image0"], batch["image1"]]))
    m0, m1 = visibility_masks(batch["H_0to1"], batch["valid0"], batch["valid1"], border)
    ori1w, _ = warp_to_view0(ori[B:], batch["H_0to1"])
    reps, errs, dense = [], [], []
    for b in range(B):
        xy0, _ = nms_candidates(score[b, 0] * m0[b, 0], nms_radius, border, top_k)
        xy1, _ = nms_candidates(score[B + b, 0] * m1[b, 0], nms_radius, border, top_k)
        reps.append(_sym_repeatability(xy0.float(), xy1.float(), batch["H_0to1"][b], thr))
        a0, _ = decode_orientation(ori[b, :, xy0[:, 1], xy0[:, 0]].T)
        a1, _ = decode_orientation(ori1w[b, :, xy0[:, 1], xy0[:, 0]].T)
        errs.append(angle_diff(a1 - a0, batch["rotation"][b]).abs())
        sel = m0[b, 0] > 0.5
        if sel.any():
            d0, _ = decode_orientation(ori[b].permute(1, 2, 0)[sel])
            d1, _ = decode_orientation(ori1w[b].permute(1, 2, 0)[sel])
            dense.append(angle_diff(d1 - d0, batch["rotation"][b]).abs())
    e = torch.cat(errs) if errs else torch.zeros(0)
    de = torch.cat(dense) if dense else torch.zeros(0)

    def acc(x: torch.Tensor, deg: float) -> float:
        return 100.0 * (x <= math.radians(deg)).float().mean().item() if len(x) else 0.0

    return {
        "rep@3px": float(np.mean(reps)),
        "ori_acc@10deg": acc(e, 10),
        "ori_acc@20deg": acc(e, 20),
        "ori_dense@10deg": acc(de, 10),
    }


# ------------------------------------------------------------------------------------------------
# benchmark on real sequences

DETECTOR_PIPELINES = ("sift", "sift*", "hessian", "rekd", "rekd*")


@torch.no_grad()
def equivariance_error(net, image: np.ndarray, size: int = 256) -> dict[str, float]:
    """Largest absolute deviation from exact 90-degree equivariance on a centre crop of ``image``:
    score maps must rotate, orientation logits rotate and roll by ``N / 4`` bins. Also relative to the
    largest magnitude of each output."""
    H, W = image.shape
    s = min(size, H, W)
    y0, x0 = (H - s) // 2, (W - s) // 2
    x = torch.from_numpy(np.ascontiguousarray(image[y0 : y0 + s, x0 : x0 + s], dtype=np.float32))[None, None]
    score, ori = net(x)
    score_r, ori_r = net(torch.rot90(x, 1, (-2, -1)))
    N = ori.shape[1]
    es = (score_r - torch.rot90(score, 1, (-2, -1))).abs().max().item()
    eo = (ori_r - torch.roll(torch.rot90(ori, 1, (-2, -1)), N // 4, 1)).abs().max().item()
    return {
        "score_abs": es,
        "ori_logits_abs": eo,
        "score_rel": es / max(score.abs().max().item(), 1e-12),
        "ori_logits_rel": eo / max(ori.abs().max().item(), 1e-12),
    }


def time_detector(detector, image: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Seconds to detect in ``image`` for the learned detector (exported network) and OpenCV SIFT
    ``detect`` with the same keypoint budget: medians of ``repeats`` interleaved rounds after a
    warm-up (:func:`~ssfeat.evaluation.timing.interleaved_seconds`)."""
    import cv2

    u8 = to_uint8(image)
    sift = cv2.SIFT_create(nfeatures=detector.config.max_keypoints)
    fns = {"ssfeat_detector": lambda: detector(image), "opencv_sift_detect": lambda: sift.detect(u8, None)}
    return interleaved_seconds(fns, repeats)


def run_detector_benchmark(
    roots: list,
    pipelines: tuple[str, ...] | list[str] = DETECTOR_PIPELINES,
    weights: str = "detector",
    progress: bool = True,
    cfg: MatchingConfig | None = None,
) -> dict:
    """Detectors side by side on every pair under ``roots`` (Oxford / HPatches / EVD layouts):
    repeatability (symmetric with visibility mask, and ReKD's one-directional), orientation
    accuracy of repeated keypoints against the homography's local rotation, and MMA / matches with
    the SIFT descriptor and mutual nearest neighbours, with and without the orientation filter
    ('*'). Adds the learned detector's 90-degree equivariance error and its time per 640x480 image,
    both on the reference image of the first scored pair (``result["timing_pair"]``). Pairs with an
    unreadable, too small or blank image are skipped as in :func:`~ssfeat.evaluation.matching.run_matching`."""
    import cv2

    cfg = cfg or MatchingConfig()
    det = KeypointDetector.from_pretrained(weights, DetectConfig(max_keypoints=cfg.max_keypoints), device=cfg.device)
    pipes = {}
    for name in pipelines:
        base = name.rstrip("*")
        if base not in pipes:
            p = build_pipeline(base, cfg.max_keypoints, sift_first_octave=cfg.sift_first_octave, device=cfg.device)
            for stage in (p.detector, p.orienter):  # the detector under test, not the bundled one
                if isinstance(stage, (LearnedDetector, LearnedDetectorOrienter)):
                    stage.detector = det
            pipes[base] = p
        pipes[name] = pipes[base]
    pipes = {k: pipes[k] for k in pipelines}
    result = run_matching(roots, pipes, cfg, progress=progress)
    result["benchmark"] = "detector"
    # on the reference image of the first pair that was scored (run_matching stops with an error if
    # none was): an unreadable, tiny or blank image elsewhere in the data was skipped, not timed
    img = cv2.resize(read_benchmark_image(result["timing_pair"][0]), (640, 480), interpolation=cv2.INTER_AREA)
    result["equivariance_error_rot90"] = equivariance_error(det.net, img)
    result["detector_time_640x480_s"] = time_detector(det, img)
    return result


def format_detector_table(result: dict, group: str = "all") -> str:
    """One row per pipeline: repeatability (symmetric / one-way), orientation accuracy of repeated
    keypoints at 5/10/20 degrees, MMA@3/5, matches, correct."""
    ts = list(result["config"]["mma_thresholds"])
    head = ["pipeline", "rep", "rep_1way", "ori@5", "ori@10", "ori@20", "MMA@3", "MMA@5", "matches", "correct"]

    def f(v) -> str:
        return "-" if v is None else f"{v:.1f}"

    def row(name: str, r: dict) -> list[str]:
        return (
            [name, f(r["repeatability"]), f(r.get("rep_oneway"))]
            + [f(v) for v in (r.get("ori_acc") or [None] * 3)]
            + [f"{100 * r['mma'][ts.index(t)]:.1f}" for t in (3, 5)]
            + [f"{r['matches']:.0f}", f"{r['correct']:.0f}"]
        )

    return format_grouped_table(result, group, head, row)
