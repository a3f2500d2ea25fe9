"""``ssfeat show``, ``ssfeat match`` and ``ssfeat detect``: run a bundled (or given) model on your
images and draw what it finds."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..data.images import read_usable
from ..inference.detector import DetectConfig, KeypointDetector
from ..inference.pose import PatchPoseEstimator, check_device, detect_sift
from ..pipeline import PIPELINES, MatchResult, RansacHomography, build_pipeline, pipeline_estimator
from ..viz import draw_matches, draw_poses
from .args import device, fraction, positive, positive_float, sift_first_octave


def match(
    image0: str | Path,
    image1: str | Path,
    out: str | Path,
    pipeline: str = "ssfeat*",
    max_keypoints: int = 1000,
    weights: str | None = None,
    sift_first_octave: int = 0,
    ransac: RansacHomography | None = None,
    device: str = "cpu",
    compensate_rotation: bool | None = None,
) -> dict:
    """Match two images with a named pipeline, fit a RANSAC homography and draw the matches
    (inliers green). Returns counts, the homography ``H_0to1`` (None when the fit failed: too few
    inliers, see :meth:`RansacHomography.failure`) and ``failure``, the reason (else None)."""
    if weights is not None and "ssfeat" not in pipeline:
        raise ValueError(f"--weights sets the patch-pose model of the ssfeat pipelines; {pipeline!r} has none")
    est = pipeline_estimator(weights, device) if "ssfeat" in pipeline or compensate_rotation else None
    pipe = build_pipeline(
        pipeline,
        max_keypoints,
        est,
        sift_first_octave=sift_first_octave,
        compensate_rotation=compensate_rotation,
        device=device,
    )
    img0, img1 = (read_usable(p) for p in (image0, image1))
    try:
        f0, f1, rot = pipe.extract_pair(img0, img1)
    except ValueError as e:  # e.g. an image smaller than the pipeline's windows
        raise ValueError(f"{image0} / {image1}: {e}") from e
    for path, f in ((image0, f0), (image1, f1)):
        if len(f) == 0:
            raise ValueError(f"{path}: no keypoints found by the {pipeline} pipeline, nothing to match")
    res = MatchResult(f0, f1, pipe.match_features(f0, f1), rot)
    xy0 = res.features0.keypoints[res.matches.idx[:, 0]]
    xy1 = res.features1.keypoints[res.matches.idx[:, 1]]
    ransac = ransac or RansacHomography()
    H, inl = ransac.fit(xy0, xy1)
    failure = ransac.failure(H, inl)
    title = (
        f"{pipeline}: {len(res.features0)} / {len(res.features1)} features, {len(res.matches)} matches, "
        f"{int(inl.sum())} RANSAC inliers (green)"
    )
    if failure:
        title += f"; homography failed ({failure})"
    if rot is not None:
        title += f"; image 1 turned {np.degrees(rot.angle):.1f} deg (confidence {rot.confidence:.2f})"
    fig = draw_matches(img0, img1, xy0, xy1, inl, out, title)
    return {
        "figure": fig,
        "matches": len(res.matches),
        "inliers": int(inl.sum()),
        "H_0to1": None if failure else H,
        "failure": failure,
        "title": title,
    }


def show(
    image: str | Path,
    out: str | Path,
    weights: str | None = None,
    n: int = 60,
    support: float | None = None,
    histograms: bool = False,
    estimator=None,
    device: str = "cpu",
) -> Path:
    """Estimate poses at the ``n`` strongest SIFT keypoints of ``image`` from their positions and draw
    them: scale-covariant (:meth:`PatchPoseEstimator.keypoint_poses`), or, with ``support``, from
    fixed windows of that many pixels (the patch protocol)."""
    m = 0.0 if support is None else support / np.sqrt(2)
    img = read_usable(image, min_size=max(16, 2 * int(np.ceil(m)) + 1))
    est = estimator or PatchPoseEstimator.from_pretrained(weights or "patchpose", device=device)
    H, W = img.shape
    kps = [k for k in detect_sift(img, 4 * n) if m <= k.pt[0] <= W - 1 - m and m <= k.pt[1] <= H - 1 - m][:n]
    if not kps:
        where = f" at least {m:.0f} px from the border" if m else ""
        raise ValueError(f"{image}: no SIFT keypoint{where}, nothing to draw")
    xy = np.array([k.pt for k in kps]).reshape(-1, 2)
    if support is None and est.scale_model is not None:
        p = est.keypoint_poses(img, xy)
        ori, size, ori_hist, scale_hist = p.orientation[:, 0], p.size[:, 0], p.ori_hist, p.size_hist
        c = est.scale_model.config
        scale_bins = np.log2(c.size_factor * c.min_radius) + np.arange(c.n_rings) / c.rings_per_octave
        what, label = "ssfeat size (circle) and orientation (arrow)", "log2 size (px)"
    else:
        support = 32.0 if support is None else support
        with torch.inference_mode():
            o = est(est.extract(img, xy, support))
        o = {k: getattr(o, k).float().cpu() for k in ("orientation", "log2_scale", "ori_hist", "scale_hist")}
        ori, size, ori_hist, scale_hist = (
            o["orientation"],
            support * torch.exp2(o["log2_scale"]),
            o["ori_hist"],
            o["scale_hist"],
        )
        scale_bins, label = None, "log2 scale"
        what = f"ssfeat scale (circle) and orientation (arrow) of {support:g} px windows"
    return draw_poses(
        img,
        xy,
        ori.numpy(),
        size.numpy(),
        out,
        ori_hist.numpy() if histograms else None,
        scale_hist.numpy() if histograms else None,
        title=f"{Path(image).name}: {what} at {len(kps)} SIFT keypoints",
        scale_bins=scale_bins,
        scale_label=label,
    )


def detect(
    image: str | Path,
    out: str | Path,
    max_keypoints: int = 300,
    weights: str | None = None,
    detector=None,
    device: str = "cpu",
) -> tuple[Path, int]:
    """Detect oriented keypoints with the equivariant detector and draw them (circle = feature
    size, line = orientation). Returns the figure path and the number of keypoints."""
    img = read_usable(image)
    cfg = DetectConfig(max_keypoints=max_keypoints)
    det = detector or KeypointDetector.from_pretrained(weights or "detector", cfg, device=check_device(device))
    try:
        f = det(img)
    except ValueError as e:  # e.g. an image smaller than the detector's border
        raise ValueError(f"{image}: {e}") from e
    title = f"ssfeat detector: {len(f)} keypoints (circle: size, line: orientation; dot only: nested in a stronger one)"
    return draw_poses(img, f.keypoints, f.orientations, f.scales, out, title=title, scores=f.scores), len(f)


def run_show(args) -> int:
    fig = show(args.image, args.out, args.weights, args.n, args.support, args.histograms, device=args.device)
    print(f"figure: {fig}")
    return 0


def run_match(args) -> int:
    ransac = RansacHomography(min_inliers=args.min_inliers, min_inlier_ratio=args.min_inlier_ratio)
    r = match(
        args.image0,
        args.image1,
        args.out,
        args.pipeline,
        args.max_keypoints,
        args.weights,
        args.sift_first_octave,
        ransac,
        device=args.device,
        compensate_rotation=args.compensate_rotation,
    )
    print(r["title"])
    if r["H_0to1"] is not None:
        print("H_0to1 =\n" + "\n".join("  " + " ".join(f"{v: .6g}" for v in row) for row in r["H_0to1"]))
    print(f"figure: {r['figure']}")
    return 0


def run_detect(args) -> int:
    fig, n = detect(args.image, args.out, args.max_keypoints, args.weights, device=args.device)
    print(f"{n} keypoints\nfigure: {fig}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("show", help="draw learned scale and orientation at SIFT keypoints (paper Fig. 1)")
    p.set_defaults(command=run_show)
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--weights", default=None)
    p.add_argument("--n", type=positive, default=60, help="number of keypoints")
    p.add_argument(
        "--support",
        type=positive_float,
        default=None,
        help="fixed windows of this many pixels (default: the scale-covariant pose from the positions)",
    )
    p.add_argument("--histograms", action="store_true", help="also draw histograms (paper Fig. 4)")
    device(p)
    p = sub.add_parser("match", help="match two images with a pipeline and draw the matches")
    p.set_defaults(command=run_match)
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument(
        "--pipeline", default="ssfeat*", help=f"one of {', '.join(PIPELINES)}; '*' adds the orientation filter"
    )
    p.add_argument("--max-keypoints", type=positive, default=1000)
    sift_first_octave(p)
    p.add_argument(
        "--weights", default=None, help="patch-pose weights/run, one pass per patch (default: patchpose_tiny)"
    )
    p.add_argument(
        "--min-inliers",
        type=positive,
        default=RansacHomography().min_inliers,
        help="fewer RANSAC inliers: the homography failed",
    )
    p.add_argument(
        "--min-inlier-ratio",
        type=fraction,
        default=RansacHomography().min_inlier_ratio,
        help="a smaller share of the matches as inliers: the homography failed",
    )
    p.add_argument(
        "--compensate-rotation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="estimate the in-plane rotation of image 1 against image 0 from ssfeat's orientations and extract "
        "image 1 turned upright (for upright descriptors such as hndesc; default: as the pipeline says, on for *_rc)",
    )
    device(p)
    p.add_argument("--out", required=True, help="PNG path")
    p = sub.add_parser("detect", help="detect oriented keypoints with the equivariant detector and draw them")
    p.set_defaults(command=run_detect)
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--max-keypoints", type=positive, default=300)
    p.add_argument("--weights", default=None, help="detector weights/run (default: bundled)")
    device(p)


__all__ = ["add_parser", "detect", "match", "show"]
