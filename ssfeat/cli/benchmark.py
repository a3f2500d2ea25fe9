"""``ssfeat benchmark NAME``: one row of :data:`BENCHMARKS` per benchmark (its options and its run),
each running one module of :mod:`ssfeat.evaluation` and printing its tables next to a JSON file.
Adding a benchmark = its evaluation module + one row here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..data.synthesis import SCALE_SAMPLINGS
from ..evaluation.descriptor import DESCRIPTOR_PIPELINES, format_d2net_table, run_descriptor_benchmark
from ..evaluation.detector import DETECTOR_PIPELINES, format_detector_table, run_detector_benchmark
from ..evaluation.geoloc import format_geoloc_table, run_geoloc
from ..evaluation.keypoints import DETECTORS, KeypointBenchmarkConfig, format_keypoints, run_keypoints
from ..evaluation.matching import (
    DEFAULT_PIPELINES,
    MatchingConfig,
    format_matching_table,
    format_paired_table,
    plot_mma,
    run_matching,
)
from ..evaluation.patchpose import (
    PoseBenchmarkConfig,
    build_pose_methods,
    format_orientation_defined,
    format_pose_table,
    run_patchpose,
)
from ..evaluation.report import distinct_groups, write_json
from ..evaluation.sequences import run_sequences
from ..evaluation.warp import format_warp_table, run_warp_pairs
from ..inference.pose import PatchPoseEstimator
from ..pipeline import pipeline_estimator
from .args import (
    add_field,
    check_writable,
    config_from_args,
    device,
    fraction,
    non_negative,
    positive,
    positive_float,
    sift_first_octave,
)


@dataclass(frozen=True)
class Benchmark:
    """A ``benchmark`` subcommand: ``add_arguments(parser)`` adds its options (beyond ``--json``,
    ``--threads`` and, with ``plot``, ``--plot``), ``run(args)`` runs it and returns the exit status."""

    name: str
    help: str
    add_arguments: Callable
    run: Callable
    plot: bool = False
    progress: bool = True  # has --no-progress


def _extra(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--extra expects NAME=PATH, got {it!r}")
        k, v = it.split("=", 1)
        if k in out:
            raise ValueError(f"--extra name {k!r} given twice")
        out[k] = v
    return out


def _pose_args(p) -> None:
    """Options of the patch-pose benchmarks (``patchpose``, ``sequences``) after their own."""
    p.add_argument("--weights", default=None, help="ssfeat weights/run (default: bundled model)")
    device(p)
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another learned model to compare, e.g. resnet18=runs/r18 (repeatable)",
    )
    add_field(p, PoseBenchmarkConfig, "support", type=positive_float)
    add_field(p, PoseBenchmarkConfig, "seed", type=non_negative)


def _patchpose_args(p) -> None:
    p.add_argument("--images", required=True, help="image-disjoint test photos")
    add_field(p, PoseBenchmarkConfig, "n_pairs", "pairs of each kind", type=positive)
    add_field(p, PoseBenchmarkConfig, "max_tilt", "also tilt the views (viewpoint change; 1: off)")
    add_field(
        p,
        PoseBenchmarkConfig,
        "scale_sampling",
        "scale changes of the scale pairs: log2 uniform in [-2, 2], or the paper's PatchPoseA+B test mix",
        choices=SCALE_SAMPLINGS,
    )
    p.add_argument(
        "--scale-model",
        default="none",
        help="also the keypoint pose with these scale weights (e.g. scalepose, the bundled model) at each "
        "patch centre, one patch at a time (slow: about 30 patches/s)",
    )
    _pose_args(p)


def _sequences_args(p) -> None:
    p.add_argument("--root", required=True, help="folder holding Oxford / HPatches / EVD sequences")
    add_field(p, PoseBenchmarkConfig, "max_keypoints", "per image pair", type=positive)
    _pose_args(p)


def _print_pose_result(name: str, result: dict, json_path: str) -> int:
    print(f"{name}: {result['n_pairs']} pairs")
    print(format_pose_table(result))
    if "orientation_defined" in result:
        print(format_orientation_defined(result))
    print(f"results: {write_json(result, json_path)}")
    return 0


def cmd_patchpose(args) -> int:
    scale_model = None if args.scale_model.lower() == "none" else args.scale_model
    methods = build_pose_methods(args.weights, _extra(args.extra), scale_model=scale_model, device=args.device)
    fields = ("n_pairs", "support", "seed", "max_tilt", "scale_sampling")
    cfg = PoseBenchmarkConfig(**{f: getattr(args, f) for f in fields})
    return _print_pose_result("patchpose", run_patchpose(args.images, methods, cfg), args.json)


def cmd_sequences(args) -> int:
    methods = build_pose_methods(args.weights, _extra(args.extra), device=args.device)
    cfg = PoseBenchmarkConfig(max_keypoints=args.max_keypoints, support=args.support, seed=args.seed)
    return _print_pose_result("sequences", run_sequences(args.root, methods, cfg), args.json)


def _pipeline_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--pipelines is empty")
    return names


def _matching_config(args) -> MatchingConfig:
    """The :class:`MatchingConfig` of the ``matching / detector / descriptor`` options."""
    return MatchingConfig(
        max_keypoints=args.max_keypoints,
        sift_first_octave=args.sift_first_octave,
        ransac_repeats=args.ransac_repeats,
        device=args.device,
    )


def _pairs_args(p, pipelines: tuple[str, ...], pipelines_help: str, max_keypoints: int) -> None:
    """Options of the benchmarks on real pairs (``matching``, ``detector``, ``descriptor``)."""
    p.add_argument(
        "--root", required=True, action="append", help="folder of HPatches / Oxford / EVD sequences (repeatable)"
    )
    p.add_argument("--pipelines", default=",".join(pipelines), help=pipelines_help)
    p.add_argument("--max-keypoints", type=positive, default=max_keypoints, help="per image")
    sift_first_octave(p)
    device(p)
    add_field(
        p,
        MatchingConfig,
        "ransac_repeats",
        "RANSAC fits per pair on shuffled matches; homography accuracy is their mean (1: a single fit)",
        type=positive,
    )


def _matching_args(p) -> None:
    _pairs_args(
        p,
        DEFAULT_PIPELINES,
        "comma-separated pipeline names (see ssfeat.pipeline.PIPELINES; '*' adds the orientation filter); "
        "'oracle' and 'oracle_scale': the sift pipeline with ground-truth orientations (and sizes), "
        "what a perfect pose estimator would give",
        MatchingConfig.max_keypoints,
    )
    p.add_argument(
        "--weights", default=None, help="patch-pose weights/run, one pass per patch (default: patchpose_tiny)"
    )


def _print_timing(result: dict) -> None:
    for key, ref in (("", "detectAndCompute"), ("_detect_compute", "separate detect and compute calls")):
        ratio = result["timing_ratio_vs_opencv" + key]
        print(f"\n640x480 pair, extraction + matching, relative to OpenCV SIFT {ref} + match:")
        print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))


def _write_with_plot(result: dict, args) -> int:
    out = write_json(result, args.json)
    plot = plot_mma(result, args.plot or out.with_suffix(".png"))
    print(f"results: {out}\nplot: {plot}")
    return 0


def cmd_matching(args) -> int:
    names = _pipeline_names(args.pipelines)
    est = pipeline_estimator(args.weights, args.device)
    cfg = _matching_config(args)
    result = run_matching(args.root, names, cfg, est, progress=not args.no_progress)
    print(
        f"matching: {result['n_pairs']} image pairs, {cfg.max_keypoints} keypoints per image, "
        f"homography accuracy over {cfg.ransac_repeats} RANSAC fits per pair"
    )
    print("\n\n".join(format_matching_table(result, g) for g in distinct_groups(result)))
    floor = {k: v["all"]["floor_h3"] for k, v in result["pipelines"].items() if "floor_h3" in v["all"]}
    if floor:
        print("\nfloor: pairs whose correct matches (<= 3 px) alone, fitted by least squares, are within 3 px:")
        print("  " + ", ".join(f"{k} {100 * v:.1f}" for k, v in floor.items()))
    rot = {k: v["all"] for k, v in result["pipelines"].items() if "rotation_acc" in v["all"]}
    if rot:
        print("\nrotation compensation: pairs whose estimated rotation is within 5 / 10 degrees (median error):")
        for k, v in rot.items():
            acc, med = v["rotation_acc"], v["median_rotation_error_deg"]
            print(f"  {k} {100 * acc[0]:.1f} / {100 * acc[1]:.1f} ({med:.2f} deg)")
    if "paired" in result:
        print()
        print(format_paired_table(result))
    _print_timing(result)
    return _write_with_plot(result, args)


def _detector_args(p) -> None:
    help = "comma-separated pipelines: sift, hessian (kornia), rekd (ssfeat detector), rekd_upright; '*' filter"
    _pairs_args(p, DETECTOR_PIPELINES, help, 1000)
    p.add_argument("--weights", default="detector", help="ssfeat detector weights/run (default: bundled)")


def cmd_detector(args) -> int:
    names = _pipeline_names(args.pipelines)
    result = run_detector_benchmark(args.root, names, args.weights, not args.no_progress, _matching_config(args))
    print(f"detector benchmark: {result['n_pairs']} image pairs, {args.max_keypoints} keypoints per image")
    for g in distinct_groups(result):
        print(format_detector_table(result, g))
        print()
    e, t = result["equivariance_error_rot90"], result["detector_time_640x480_s"]
    eq = f"score {e['score_abs']:.2e}, orientation logits {e['ori_logits_abs']:.2e}"
    print(f"90-degree equivariance error (max abs): {eq}")
    tt = f"ssfeat detector {t['ssfeat_detector']:.3f} s, OpenCV SIFT detect {t['opencv_sift_detect']:.3f} s"
    print(f"640x480 image: {tt}")
    print(f"results: {write_json(result, args.json)}")
    return 0


def _descriptor_args(p) -> None:
    help = "comma-separated pipelines: sift, sift_rootsift, hndesc (dense), hndesc_patch, ssfeat_hndesc_patch"
    _pairs_args(p, DESCRIPTOR_PIPELINES, help, 1000)
    p.add_argument("--weights", default="descriptor", help="ssfeat descriptor weights/run (default: bundled)")


def cmd_descriptor(args) -> int:
    names = _pipeline_names(args.pipelines)
    result = run_descriptor_benchmark(args.root, names, args.weights, not args.no_progress, _matching_config(args))
    print(f"descriptor benchmark: {result['n_pairs']} image pairs, {args.max_keypoints} SIFT keypoints per image")
    for g in distinct_groups(result):
        print(format_matching_table(result, g, with_repeatability=False))
        print()
    print(format_d2net_table(result))
    t = result["describe_2000_640x480_s"]
    if t:
        n = t["n_keypoints"]
        print(
            f"\ndescribing {n} keypoints of a 640x480 image (s): "
            + ", ".join(f"{k} {v:.3f}" for k, v in t.items() if k != "n_keypoints")
        )
    elif "describe_2000_640x480_unavailable" in result:
        print("\ndescriptor timing unavailable: " + result["describe_2000_640x480_unavailable"])
    return _write_with_plot(result, args)


def _geoloc_args(p) -> None:
    p.add_argument("--root", required=True, help="dataset root (ROOT/images/{train,val,test}/{gallery,queries})")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--weights", default="descriptor", help="ssfeat descriptor weights/run (default: bundled)")
    p.add_argument("--warp-weights", default="warp", help="warping regressor weights/run (default: bundled)")
    p.add_argument("--rerank-n", type=positive, default=5, help="candidates re-ranked per query")
    p.add_argument("--no-rerank", action="store_true", help="plain retrieval only")
    p.add_argument("--flips", action="store_true", help="average the regressor over flipped inputs (4x cost)")
    device(p)


def cmd_geoloc(args) -> int:
    warp = None if args.no_rerank else args.warp_weights
    r = run_geoloc(
        args.root,
        args.split,
        args.weights,
        warp,
        args.rerank_n,
        progress=not args.no_progress,
        flips=args.flips,
        device=args.device,
    )
    print(f"geolocalization ({args.split}): {r['n_queries']} queries, {r['n_gallery']} gallery images, 25 m")
    print(format_geoloc_table(r))
    print(f"results: {write_json(r, args.json)}")
    return 0


def _warp_args(p) -> None:
    p.add_argument("--images", required=True, help="photos the model was not trained on")
    p.add_argument("--warp-weights", default="warp", help="warping regressor weights/run (default: bundled)")
    p.add_argument("--pairs", type=positive, default=512, help="number of synthetic pairs")
    p.add_argument(
        "--k", type=fraction, default=None, help="trapezoid distortion in [0, 1] (default: the model's training k)"
    )
    device(p)


def cmd_warp(args) -> int:
    r = run_warp_pairs(args.images, args.warp_weights, args.pairs, args.k, device=args.device)
    print(f"warping regressor on {r['n_pairs']} synthetic pairs from {r['n_images']} images (k={r['pairs']['k']:g})")
    print(format_warp_table(r))
    print(f"results: {write_json(r, args.json)}")
    return 0


KEYPOINT_FIELDS = {
    "detector": ("keypoints: OpenCV SIFT or ssfeat's detector", {"choices": DETECTORS}),
    "max_keypoints": ("per image", {"type": positive}),
    "match_px": ("keypoint pairing distance (px)", {"type": positive_float}),
    "limit": ("use the first N photos of --images", {"type": positive}),
    "seed": (None, {"type": non_negative}),
}


def _keypoints_args(p) -> None:
    p.add_argument(
        "--root", action="append", default=[], help="folder of HPatches / Oxford / EVD sequences (repeatable)"
    )
    p.add_argument("--images", default=None, help="photos: one similarity view (turn, zoom 2**U(-2, 2)) of each")
    for path, (help, kw) in KEYPOINT_FIELDS.items():
        add_field(p, KeypointBenchmarkConfig, path, help, **kw)
    p.add_argument("--weights", default=None, help="orientation weights/run (default: bundled model)")
    p.add_argument("--scale-model", default="scalepose", help="scale weights/run (default: bundled model)")
    device(p)


def cmd_keypoints(args) -> int:
    if not args.root and not args.images:
        raise ValueError("give --root folders of sequences and/or --images")
    cfg = config_from_args(KeypointBenchmarkConfig, args, KEYPOINT_FIELDS)
    name, dev = args.weights or "patchpose", args.device
    est = PatchPoseEstimator.from_pretrained(name, device=dev, scale_model=args.scale_model)
    fixed = PatchPoseEstimator.from_pretrained(name, device=dev, scale_model=None)
    result = run_keypoints(args.root, args.images, est, cfg, fixed=fixed, progress=not args.no_progress)
    print(format_keypoints(result))
    print(f"results: {write_json(result, args.json)}")
    return 0


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "geoloc",
        "visual geolocalization: recall@1/5/10/20 (25 m), with and without GeoWarp re-ranking",
        _geoloc_args,
        cmd_geoloc,
    ),
    Benchmark("warp", "corner accuracy of the warping regressor on held-out synthetic pairs", _warp_args, cmd_warp),
    Benchmark("patchpose", "synthetic pairs from a photo folder", _patchpose_args, cmd_patchpose, progress=False),
    Benchmark("sequences", "real pairs with homographies", _sequences_args, cmd_sequences, progress=False),
    Benchmark(
        "keypoints",
        "orientation and size at independently detected keypoints of real and zoomed, turned pairs",
        _keypoints_args,
        cmd_keypoints,
    ),
    Benchmark(
        "matching",
        "detect -> orient -> describe -> match pipelines on real pairs",
        _matching_args,
        cmd_matching,
        plot=True,
    ),
    Benchmark(
        "detector",
        "keypoint detectors on real pairs: repeatability, orientation, matching",
        _detector_args,
        cmd_detector,
    ),
    Benchmark(
        "descriptor",
        "learned descriptors vs SIFT / RootSIFT at the same SIFT keypoints",
        _descriptor_args,
        cmd_descriptor,
        plot=True,
    ),
)


def _run(bench: Benchmark):
    def run(args) -> int:
        for out in (args.json, getattr(args, "plot", None)):
            if out:
                check_writable(out)
        return bench.run(args)

    return run


def add_parser(sub) -> None:
    bm = sub.add_parser("benchmark", help="benchmarks (JSON + table), baselines measured in the same run")
    bsub = bm.add_subparsers(dest="bench", required=True)
    for b in BENCHMARKS:
        p = bsub.add_parser(b.name, help=b.help)
        p.set_defaults(command=_run(b))
        b.add_arguments(p)
        p.add_argument("--json", required=True, help="output JSON path")
        if b.plot:
            p.add_argument("--plot", default=None, help="MMA-vs-threshold PNG (default: next to the JSON)")
        p.add_argument("--threads", type=non_negative, default=0)
        if b.progress:
            p.add_argument("--no-progress", action="store_true")


__all__ = ["BENCHMARKS", "Benchmark", "add_parser"]
