"""``ssfeat demo``: the bundled models on the bundled photos (or yours): the patch-pose and keypoint
pose accuracy tables against the baselines, and figures of every model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.images import load_textured, read_image, samples_dir
from ..data.warp_pairs import WarpPairConfig, WarpPairSynthesizer, draw_pair
from ..evaluation.keypoints import KeypointBenchmarkConfig, format_keypoints, run_keypoints
from ..evaluation.patchpose import PoseBenchmarkConfig, build_pose_methods, format_pose_table, run_patchpose
from ..evaluation.report import write_json
from ..geometry import warp_points
from ..inference.pose import check_device
from ..models.weights import load_warp_model
from ..pipeline import build_pipeline
from ..viz import draw_matches
from .args import check_writable, device, positive
from .figures import detect, show


def _skip_note(path: Path, error: Exception, what: str = "") -> str:
    """``skipped [WHAT]PATH: REASON`` (the path said once, also when the error already names it)."""
    reason = str(error).removeprefix(f"{path}: ")
    return f"skipped {what}{path}: {reason}"


def demo(
    images: str | Path | None = None,
    out: str | Path = "ssfeat_demo",
    weights: str | None = None,
    n_pairs: int = 400,
    device: str = "cpu",
) -> dict:
    """The main job: poses with the bundled model on sample photos, the accuracy table against the
    baselines on pairs made from those photos, and figures: a Figure-1 style PNG per photo (at most 4),
    learned oriented keypoints (2 photos), learned-descriptor matches against a synthetic view and the
    homography regressor's shared region (1 photo each); the networks run on ``device``."""
    images = Path(images) if images else samples_dir()
    out = Path(out)
    check_writable(out, folder=True)
    methods = build_pose_methods(weights, device=device)
    paths, imgs = load_textured(images)  # readable, non-blank photos only (the others are named in a warning)
    print(f"ssfeat demo: {len(paths)} photos from {images}")
    result = run_patchpose(images, methods, PoseBenchmarkConfig(n_pairs=n_pairs), loaded=(paths, imgs))
    print(f"\nsynthetic pairs from these photos ({n_pairs} orientation + {n_pairs} scale pairs), accuracy in %:")
    print(format_pose_table(result))
    if methods[0].estimator.scale_model is not None:
        kp = run_keypoints([], images, methods[0].estimator, KeypointBenchmarkConfig())
        print("\nposes at SIFT keypoints of each photo and of a turned, zoomed view of it (zoom 2**U(-2, 2)), in %:")
        print(format_keypoints(kp))
        result["keypoints"] = kp
    write_json(result, out / "demo_benchmark.json")
    figs = []
    for p in paths[:4]:
        try:
            figs.append(show(p, out / f"{p.stem}_poses.png", histograms=True, estimator=methods[0].estimator))
        except ValueError as e:
            print(_skip_note(p, e))
    for p in paths[:2]:
        try:
            figs.append(detect(p, out / f"{p.stem}_keypoints.png", device=device)[0])
        except ValueError as e:
            print(_skip_note(p, e))
    try:
        figs.append(descriptor_demo(paths[0], out / f"{paths[0].stem}_descriptor_matches.png", device=device))
    except ValueError as e:
        print(_skip_note(paths[0], e, "the descriptor demo on "))
    try:
        figs.append(warp_demo(read_image(paths[0]), out / f"{paths[0].stem}_warp.png", device=device))
    except ValueError as e:
        print(_skip_note(paths[0], e, "the homography-regression demo on "))
    print("\nfigures: " + ", ".join(str(f) for f in figs))
    print(f"results: {out / 'demo_benchmark.json'}")
    return result


def descriptor_demo(path: str | Path, out: str | Path, max_keypoints: int = 500, device: str = "cpu") -> Path:
    """Match a photo to a synthetic view of it (rotated 20 degrees, zoomed 1.25x, in perspective,
    darker) with RootSIFT and with the learned descriptor at the same SIFT keypoints; print both
    match accuracies and draw the learned descriptor's matches (green: within 3 px of the truth)."""

    img = read_image(path)
    h, w = img.shape
    H = np.vstack([cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.25), [0, 0, 1]])
    H = np.array([[1, 0, 0], [0, 1, 0], [2e-4, 1e-4, 1]]) @ H
    view = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    view = np.clip(view**1.3 * 0.8 + 0.05, 0, 1).astype(np.float32)
    print(
        f"\n{Path(path).name} against a rotated, zoomed, perspective, darker view of itself ({max_keypoints} SIFT kps):"
    )
    fig = None
    for name in ("sift_rootsift", "hndesc"):
        res = build_pipeline(name, max_keypoints, device=device)(img, view)
        x0 = res.features0.keypoints[res.matches.idx[:, 0]].astype(np.float64)
        x1 = res.features1.keypoints[res.matches.idx[:, 1]].astype(np.float64)
        err = np.linalg.norm(warp_points(torch.from_numpy(x0), torch.from_numpy(H)).numpy() - x1, axis=1)
        ok = err <= 3.0
        print(
            f"  {name:14s} {len(ok)} matches, {int(ok.sum())} correct (MMA@3 {100 * ok.mean() if len(ok) else 0:.1f}%)"
        )
        if name == "hndesc":
            title = f"learned descriptor: {int(ok.sum())} of {len(ok)} matches within 3 px of the true position"
            fig = draw_matches(img, view, x0, x1, ok, out, title, labels=("correct", "wrong"))
    return fig


def warp_demo(
    image,
    out: str | Path,
    weights: str = "warp",
    k: float = 0.6,
    seed: int = 0,
    size: int | None = None,
    device: str = "cpu",
) -> Path:
    """GeoWarp's self-supervised pair made from ``image`` ``(H, W)`` with the warping regressor's
    prediction drawn over the truth; prints the mean corner error (normalised units). The views have
    the regressor's input size (``size``, if given, must equal it)."""

    dev = check_device(device)
    net = load_warp_model(weights).to(dev)
    if size is not None and size != net.config.size:
        raise ValueError(f"the regressor reads {net.config.size} px views; leave out --size or give {net.config.size}")
    sample = WarpPairSynthesizer([image], WarpPairConfig(size=net.config.size, k=k, seed=seed)).sample(0)
    a, b = (torch.as_tensor(sample[key])[None, None].to(dev) for key in ("image_a", "image_b"))
    with torch.inference_mode():
        pa, pb = (x[0].cpu().numpy() for x in net.shared_region(a, b))
    err = 0.5 * (np.linalg.norm(pa - sample["t_a"], axis=1).mean() + np.linalg.norm(pb - sample["t_b"], axis=1).mean())
    print(f"\nhomography regression on a self-supervised pair (k={k:g}): mean corner error {err:.3f} (frame spans 2)")
    return draw_pair(image, sample, out, pred=(pa, pb))


def run(args) -> int:
    demo(args.images, args.out, args.weights, args.n_pairs, device=args.device)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="bundled models on bundled photos: accuracy table vs baselines and figures")
    p.set_defaults(command=run)
    p.add_argument("--images", default=None, help="your own photo folder (default: bundled samples)")
    p.add_argument("--out", default="ssfeat_demo", help="output folder")
    p.add_argument("--weights", default=None)
    p.add_argument("--n-pairs", type=positive, default=400)
    device(p)


__all__ = ["add_parser", "demo", "descriptor_demo", "warp_demo"]
