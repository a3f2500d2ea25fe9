"""Command-line interface: ``ssfeat {demo,train,export,benchmark,show,detect,match,extract,data}``.

Each subcommand is a thin wrapper around an importable function. Bad input ends with a one-line
``ssfeat: error: ...`` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

logger = logging.getLogger("ssfeat")


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _add_loop_args(p, d, batch_help: str) -> None:
    """Arguments every ``ssfeat train`` command shares (``d``: the task's default config)."""
    p.add_argument("--images", required=True, help="folder of training photos (recursive)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    p.add_argument("--val-images", default=None, help="image-disjoint validation folder (default: hold out images)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=_positive, default=None, help=f"optimisation steps (default {d.steps})")
    g.add_argument(
        "--time-budget", type=_positive_float, default=None, metavar="MIN", help="fit the schedule into MIN minutes"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue RUN/last.pt with its stored config (--steps changes the length)"
    )
    p.add_argument("--batch-size", type=_positive, default=d.batch_size, help=batch_help)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--init", default=None, help="start from these weights / run (fine-tuning)")
    p.add_argument("--val-every", type=_positive, default=d.val_every)
    p.add_argument("--seed", type=_non_negative, default=d.seed)
    p.add_argument(
        "--ema", type=float, default=d.ema_decay, metavar="DECAY", help="keep a weight average (e.g. 0.999; 0: off)"
    )
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")


def _add_ransac_repeats(p) -> None:
    from .evaluation.matching import MatchingConfig

    p.add_argument(
        "--ransac-repeats",
        type=_positive,
        default=MatchingConfig.ransac_repeats,
        help="RANSAC fits per pair on shuffled matches; homography accuracy is their mean (1: a single fit)",
    )


def _add_sift_first_octave(p) -> None:
    p.add_argument(
        "--sift-first-octave",
        type=int,
        choices=(-1, 0),
        default=0,
        help="SIFT descriptor pyramid: 0 starts at the image (faster), -1 upsamples it first (OpenCV's own)",
    )


def _add_train(sub) -> None:
    from .data.homography_pairs import HomographyPairConfig
    from .data.synthesis import PairConfig
    from .models.detector import DetectorConfig
    from .models.patch_pose import PatchPoseConfig
    from .training import DetectorTrainConfig, TrainConfig

    d, m, pc = TrainConfig(), PatchPoseConfig(), PairConfig()
    tr = sub.add_parser("train", help="self-supervised training").add_subparsers(dest="model", required=True)
    p = tr.add_parser("pose", help="train PatchPoseNet on a folder of unlabeled photos")
    _add_loop_args(p, d, "pairs of each kind per step, all processes")
    p.add_argument("--backbone", default=m.backbone, help="tiny | fast | small | resnet18")
    p.add_argument("--c4", action="store_true", help="exactly 90-degree-equivariant model (4x slower)")
    p.add_argument(
        "--separate-backbones", action="store_true", help="one backbone per head, as the paper (2x the cost)"
    )
    p.add_argument("--support", type=_positive_float, default=pc.support, help="reference window side in pixels")
    p.add_argument("--blur", type=float, default=pc.blur, help="max sigma of the random blur augmentation (0: off)")
    p.add_argument(
        "--photometric",
        action=argparse.BooleanOptionalAction,
        default=pc.photometric,
        help="random gamma, contrast, brightness and noise on patches (--no-photometric: clean crops, as the paper's)",
    )
    p.add_argument(
        "--photometric-fraction",
        type=float,
        default=pc.photometric_fraction,
        help="with --photometric: the fraction of pairs that get those changes (the others are clean crops)",
    )
    p.add_argument(
        "--reference-pose",
        choices=["random", "native"],
        default="random" if pc.ref_random_pose else "native",
        help=f"reference patch of a pair: random rotation and log2 zoom in [-{pc.ref_log2_jitter:g}, "
        f"{pc.ref_log2_jitter:g}], or native (unrotated and unzoomed, and scale pairs unrotated, as `benchmark "
        "patchpose` draws them; --zoom-out-pairs still zooms those references out, --max-tilt still tilts)",
    )
    p.add_argument(
        "--ori-scale-jitter",
        type=float,
        default=pc.ori_log2_jitter,
        help="orientation pairs: log2 scale change uniform in [-J, J] between the two views",
    )
    p.add_argument(
        "--max-tilt", type=float, default=pc.max_tilt, help="viewpoint augmentation: tilt views up to this (1: off)"
    )
    p.add_argument(
        "--zoom-out-pairs",
        type=float,
        default=pc.zoom_out_pairs,
        help="fraction of scale pairs with both views downsampled (no blur cue to magnification)",
    )
    p.add_argument(
        "--window", type=float, default=m.window, help="circular input window, radius in half patch sides (0: off)"
    )
    p.add_argument(
        "--scale-range",
        type=float,
        default=m.scale_range,
        help="scale histogram spans log2 scales [-R, R] (wider than the pairs' scale range leaves room)",
    )
    p.add_argument("--scale-bins", type=int, default=m.n_scale_bins, help="number of scale histogram bins")
    p.add_argument("--scale-loss", default=d.scale_loss, choices=["full", "shared"], help="see ssfeat.losses")
    p.add_argument("--warmup-steps", type=_non_negative, default=d.warmup_steps)
    p.add_argument(
        "--distill",
        default=None,
        metavar="WEIGHTS",
        help="also match the scale histograms of this trained model (e.g. a ResNet-18 run's export)",
    )
    p.add_argument("--distill-weight", type=float, default=d.distill_weight, help="weight of the --distill term")

    d, m, pc = DetectorTrainConfig(), DetectorConfig(), HomographyPairConfig()
    p = tr.add_parser("detector", help="train the equivariant keypoint detector on unlabeled photos")
    _add_loop_args(p, d, "image pairs per step, all processes")
    p.add_argument("--group-order", type=_positive, default=m.group_order, help="N of C_N (orientation bins; x4)")
    p.add_argument("--fields", default=",".join(map(str, m.fields)), help="regular fields per trunk layer")
    p.add_argument("--size", type=_positive, default=pc.size, help="side of the training views (px)")
    p.add_argument("--max-scale", type=float, default=pc.max_log2_scale, help="log2 scale change range")
    p.add_argument("--max-shear", type=float, default=pc.max_shear)
    p.add_argument("--kp-weight", type=float, default=d.kp_weight, help="weight of the MSIP keypoint loss")

    from .data.descriptor_pairs import DescriptorPairConfig
    from .models.descriptor import DescriptorConfig
    from .training import DescriptorTrainConfig

    d, m, pc = DescriptorTrainConfig(), DescriptorConfig(), DescriptorPairConfig()
    p = tr.add_parser("descriptor", help="train the dense descriptor network (HNDesc) on unlabeled photos")
    _add_loop_args(p, d, "image pairs per step, all processes")
    p.add_argument("--loss", default=d.loss, choices=["ap", "triplet"], help="listwise AP or hardest-negative triplet")
    p.add_argument("--negatives", type=_positive, default=d.negatives, help="hardest in-batch negatives per anchor")
    p.add_argument(
        "--same-image-negatives",
        action="store_true",
        help=f"also draw negatives from the same pair (> {d.negative_radius:g} px from the match)",
    )
    p.add_argument("--keypoints", default=pc.keypoints, choices=["sift", "detector", "random"])
    p.add_argument("--size", type=_positive, default=pc.size, help="side of the training views (px)")
    p.add_argument("--max-rotation", type=float, default=pc.max_rotation_deg, help="per-view rotation range (deg)")
    p.add_argument("--dim", type=_positive, default=m.dim, help="descriptor length")

    from .training import WarpTrainConfig

    d = WarpTrainConfig()
    p = tr.add_parser("warp", help="train the homography regressor (GeoWarp) on self-supervised trapezoid pairs")
    _add_loop_args(p, d, "image pairs per step, all processes")
    p.add_argument("--k", type=_fraction, default=d.pairs.k, help="trapezoid distortion in [0, 1] (a float)")
    p.add_argument("--size", type=_positive, default=d.model.size, help="side of the views (px, multiple of 8)")
    p.add_argument(
        "--qp-root",
        default=None,
        help="geolocalization dataset whose train split gives weakly supervised (query, positive) pairs "
        "for the consistency and features-wise losses (default: self-supervised pairs only)",
    )
    p.add_argument("--qp-batch-size", type=_positive, default=d.qp_batch_size, help="(query, positive) pairs per step")
    p.add_argument("--qp-every", type=_positive, default=d.qp_every, help="(query, positive) losses every N steps")
    p.add_argument("--consistency-weight", type=float, default=d.consistency_weight, help="consistency loss")
    p.add_argument("--features-weight", type=float, default=d.features_weight, help="features-wise loss")
    p.add_argument("--backbone", default=d.backbone_weights, help="frozen descriptor weights/run (default: bundled)")


def _add_benchmark(sub) -> None:
    from .data.synthesis import SCALE_SAMPLINGS
    from .evaluation.benchmarks import BenchmarkConfig

    d = BenchmarkConfig()
    bm = sub.add_parser("benchmark", help="benchmarks (JSON + table), baselines measured in the same run")
    bsub = bm.add_subparsers(dest="bench", required=True)
    _add_geoloc_benchmark(bsub)
    for name, helptext in (
        ("patchpose", "synthetic pairs from a photo folder"),
        ("sequences", "real pairs with homographies"),
    ):
        p = bsub.add_parser(name, help=helptext)
        if name == "patchpose":
            p.add_argument("--images", required=True, help="image-disjoint test photos")
            p.add_argument("--n-pairs", type=_positive, default=d.n_pairs, help="pairs of each kind")
            p.add_argument(
                "--max-tilt", type=float, default=d.max_tilt, help="also tilt the views (viewpoint change; 1: off)"
            )
            p.add_argument(
                "--scale-sampling",
                choices=SCALE_SAMPLINGS,
                default=d.scale_sampling,
                help="scale changes of the scale pairs: log2 uniform in [-2, 2], or the paper's PatchPoseA+B test mix",
            )
        else:
            p.add_argument("--root", required=True, help="folder holding Oxford / HPatches / EVD sequences")
            p.add_argument("--max-keypoints", type=_positive, default=d.max_keypoints, help="per image pair")
        p.add_argument("--weights", default=None, help="ssfeat weights/run (default: bundled model)")
        p.add_argument(
            "--extra",
            action="append",
            default=[],
            metavar="NAME=PATH",
            help="another learned model to compare, e.g. resnet18=runs/r18 (repeatable)",
        )
        p.add_argument("--support", type=_positive_float, default=d.support)
        p.add_argument("--seed", type=_non_negative, default=d.seed)
        p.add_argument("--json", required=True, help="output JSON path")
        p.add_argument("--threads", type=_non_negative, default=0)
    from .evaluation.matching import DEFAULT_PIPELINES, MatchingConfig

    p = bsub.add_parser("matching", help="detect -> orient -> describe -> match pipelines on real pairs")
    p.add_argument(
        "--root", required=True, action="append", help="folder of HPatches / Oxford / EVD sequences (repeatable)"
    )
    p.add_argument(
        "--pipelines",
        default=",".join(DEFAULT_PIPELINES),
        help="comma-separated pipeline names (see ssfeat.pipeline.PIPELINES; '*' adds the orientation filter); "
        "'oracle' and 'oracle_scale': the sift pipeline with ground-truth orientations (and sizes), "
        "what a perfect pose estimator would give",
    )
    p.add_argument("--max-keypoints", type=_positive, default=MatchingConfig.max_keypoints, help="per image")
    _add_sift_first_octave(p)
    _add_ransac_repeats(p)
    p.add_argument(
        "--weights", default=None, help="patch-pose weights/run, one pass per patch (default: patchpose_tiny)"
    )
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--plot", default=None, help="MMA-vs-threshold PNG (default: next to the JSON)")
    p.add_argument("--threads", type=_non_negative, default=0)
    p.add_argument("--no-progress", action="store_true")
    from .evaluation.descriptor import DESCRIPTOR_PIPELINES
    from .evaluation.detector import DETECTOR_PIPELINES

    for name, helptext, pipes, pipes_help, weights, plot in (
        (
            "detector",
            "keypoint detectors on real pairs: repeatability, orientation, matching",
            DETECTOR_PIPELINES,
            "sift, hessian (kornia), rekd (ssfeat detector), rekd_upright; '*' filter",
            "detector",
            False,
        ),
        (
            "descriptor",
            "learned descriptors vs SIFT / RootSIFT at the same SIFT keypoints",
            DESCRIPTOR_PIPELINES,
            "sift, sift_rootsift, hndesc (dense), hndesc_patch, ssfeat_hndesc_patch",
            "descriptor",
            True,
        ),
    ):
        p = bsub.add_parser(name, help=helptext)
        p.add_argument(
            "--root", required=True, action="append", help="folder of HPatches / Oxford / EVD sequences (repeatable)"
        )
        p.add_argument("--pipelines", default=",".join(pipes), help=f"comma-separated pipelines: {pipes_help}")
        p.add_argument("--max-keypoints", type=_positive, default=1000, help="per image")
        p.add_argument("--weights", default=weights, help=f"ssfeat {weights} weights/run (default: bundled)")
        _add_sift_first_octave(p)
        _add_ransac_repeats(p)
        p.add_argument("--json", required=True, help="output JSON path")
        if plot:
            p.add_argument("--plot", default=None, help="MMA-vs-threshold PNG (default: next to the JSON)")
        p.add_argument("--threads", type=_non_negative, default=0)
        p.add_argument("--no-progress", action="store_true")


def _add_geoloc_benchmark(bsub) -> None:
    p = bsub.add_parser(
        "geoloc", help="visual geolocalization: recall@1/5/10/20 (25 m), with and without GeoWarp re-ranking"
    )
    p.add_argument("--root", required=True, help="dataset root (ROOT/images/{train,val,test}/{gallery,queries})")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--weights", default="descriptor", help="ssfeat descriptor weights/run (default: bundled)")
    p.add_argument("--warp-weights", default="warp", help="warping regressor weights/run (default: bundled)")
    p.add_argument("--rerank-n", type=_positive, default=5, help="candidates re-ranked per query")
    p.add_argument("--no-rerank", action="store_true", help="plain retrieval only")
    p.add_argument("--flips", action="store_true", help="average the regressor over flipped inputs (4x cost)")
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--threads", type=_non_negative, default=0)
    p.add_argument("--no-progress", action="store_true")
    p = bsub.add_parser("warp", help="corner accuracy of the warping regressor on held-out synthetic pairs")
    p.add_argument("--images", required=True, help="photos the model was not trained on")
    p.add_argument("--warp-weights", default="warp", help="warping regressor weights/run (default: bundled)")
    p.add_argument("--pairs", type=_positive, default=512, help="number of synthetic pairs")
    p.add_argument(
        "--k", type=_fraction, default=None, help="trapezoid distortion in [0, 1] (default: the model's training k)"
    )
    p.add_argument("--json", required=True, help="output JSON path")
    p.add_argument("--threads", type=_non_negative, default=0)
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssfeat", description="Self-supervised local feature geometry.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_train(sub)
    p = sub.add_parser("export", help="export a training run to a .safetensors weights file")
    p.add_argument("run", help="run folder or checkpoint (.pt)")
    p.add_argument("--out", required=True)
    c4 = p.add_mutually_exclusive_group()
    c4.add_argument("--c4", dest="c4", action="store_const", const=True, help="average over 90-degree rotations")
    c4.add_argument("--no-c4", dest="c4", action="store_const", const=False, help="no rotation averaging")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument(
        "--no-average",
        dest="average",
        action="store_false",
        help="a run trained with --ema: export its trained weights, not the weight average",
    )
    p.add_argument(
        "--c4-below",
        type=_c4_below,
        default=None,
        help="adaptive C4 threshold on the orientation peak probability (0: off), or 'auto': the cheapest one "
        "that recovers 90%% of full C4's accuracy gain on the run's validation photos",
    )
    _add_benchmark(sub)
    p = sub.add_parser("show", help="draw learned scale and orientation at SIFT keypoints (paper Fig. 1)")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--weights", default=None)
    p.add_argument("--n", type=_positive, default=60, help="number of keypoints")
    p.add_argument("--support", type=_positive_float, default=32.0)
    p.add_argument("--histograms", action="store_true", help="also draw histograms (paper Fig. 4)")
    from .pipeline import PIPELINES

    p = sub.add_parser("match", help="match two images with a pipeline and draw the matches")
    p.add_argument("image0")
    p.add_argument("image1")
    p.add_argument(
        "--pipeline", default="ssfeat*", help=f"one of {', '.join(PIPELINES)}; '*' adds the orientation filter"
    )
    p.add_argument("--max-keypoints", type=_positive, default=1000)
    _add_sift_first_octave(p)
    p.add_argument(
        "--weights", default=None, help="patch-pose weights/run, one pass per patch (default: patchpose_tiny)"
    )
    p.add_argument("--out", required=True, help="PNG path")
    from .data.geoloc import GeolocMakeConfig

    g = GeolocMakeConfig()
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("make-geoloc", help="a synthetic geolocalization dataset from photos (positions synthetic)")
    p.add_argument("--images", required=True, help="source photos (one place per photo)")
    p.add_argument("--out", required=True, help="new dataset folder (ROOT/images/{train,val,test}/...)")
    p.add_argument("--n-gallery", type=_positive, default=g.n_gallery, help="gallery views per place")
    p.add_argument("--n-queries", type=_positive, default=g.n_queries, help="query views per place")
    p.add_argument("--k", type=_fraction, default=g.k, help="trapezoid distortion in [0, 1] (a float)")
    p.add_argument("--splits", default=",".join(map(str, g.splits)), help="train,val,test shares of the places")
    p.add_argument("--seed", type=_non_negative, default=g.seed)
    from .data.synthetic_sequences import SyntheticSequenceConfig

    q = SyntheticSequenceConfig()
    p = data.add_parser(
        "make-sequences",
        help="HPatches-layout sequences with exact homographies from photos (for benchmark sequences/matching)",
    )
    p.add_argument("--images", required=True, help="source photos (one sequence per photo)")
    p.add_argument("--out", required=True, help="new folder of sequences (ROOT/v_*/1.png, 2.png, H_1_2, ...)")
    p.add_argument("--targets", type=_positive, default=q.n_targets, help="target views per photo")
    p.add_argument("--limit", type=_positive, default=None, help="use only the first N photos (sorted)")
    p.add_argument("--max-side", type=_positive, default=q.max_side, help="reduce photos to this longer side")
    p.add_argument("--min-zoom", type=float, default=q.min_log2_zoom, help="log2 magnification range of the targets")
    p.add_argument("--max-zoom", type=float, default=q.max_log2_zoom)
    p.add_argument(
        "--perspective", type=float, default=q.perspective, help="corner displacement of the last target (0: none)"
    )
    p.add_argument("--seed", type=_non_negative, default=q.seed)
    p = data.add_parser("warp-pair", help="draw a self-supervised homography pair (GeoWarp's four images)")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--k", type=_fraction, default=0.6, help="trapezoid distortion in [0, 1] (a float)")
    p.add_argument(
        "--size",
        type=_positive,
        default=None,
        help="side of the views (px; default 128, or the regressor's with --weights)",
    )
    p.add_argument("--seed", type=_non_negative, default=0)
    p.add_argument("--weights", default=None, help="also draw this warping regressor's prediction ('warp': bundled)")
    from .extract import ExtractConfig

    p = sub.add_parser("extract", help="features of every image of a folder into one HDF5 file (resumable)")
    p.add_argument("--images", required=True, help="image folder (recursive)")
    p.add_argument("--out", required=True, help="output .h5 file (run again to resume)")
    p.add_argument("--pipeline", default=ExtractConfig.pipeline, help="named pipeline (see ssfeat match --help)")
    p.add_argument("--max-keypoints", type=_positive, default=ExtractConfig.max_keypoints)
    p.add_argument("--max-side", type=int, default=ExtractConfig.max_side, help="shrink larger images (0: never)")
    p.add_argument("--part-size", type=_positive, default=ExtractConfig.part_size, help="images per part file")
    _add_sift_first_octave(p)
    p.add_argument("--workers", type=_non_negative, default=0, help="extraction processes (0/1: this process)")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--no-progress", action="store_true")
    p = sub.add_parser("detect", help="detect oriented keypoints with the equivariant detector and draw them")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--max-keypoints", type=_positive, default=300)
    p.add_argument("--weights", default=None, help="detector weights/run (default: bundled)")
    p = sub.add_parser("demo", help="bundled models on bundled photos: accuracy table vs baselines and figures")
    p.add_argument("--images", default=None, help="your own photo folder (default: bundled samples)")
    p.add_argument("--out", default="ssfeat_demo", help="output folder")
    p.add_argument("--weights", default=None)
    p.add_argument("--n-pairs", type=_positive, default=400)
    return parser


def _set_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _c4_below(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'auto', got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'auto', got {text!r}")
    return v


def cmd_export(args) -> int:
    from .evaluation.benchmarks import render_rows
    from .hub import _weights_target, calibrate_run_c4_below, export, model_from_checkpoint

    c4_below = args.c4_below
    _weights_target(args.out)  # refuse a folder before the calibration
    if c4_below == "auto":
        c4_below, rows = calibrate_run_c4_below(args.run, model_from_checkpoint(args.run, args.average))
        print("adaptive C4 on the run's validation photos (orientation pairs, +-10 degrees):")
        table = [["c4_below", "ori ±10°", "% averaged"]]
        table += [[f"{r['c4_below']:g}", f"{r['ori_acc@10deg']:.2f}", f"{r['share_averaged']:.1f}"] for r in rows]
        print(render_rows(table))
        print(f"chosen: c4_below = {c4_below:g}")
    print(f"weights: {export(args.run, args.out, args.c4, args.half, c4_below, args.average)}")
    return 0


def cmd_train(args) -> int:
    from .data.synthesis import PairConfig
    from .models.patch_pose import PatchPoseConfig
    from .training import TrainConfig, fit

    _set_threads(args.threads)
    if args.model == "detector":
        return _train_detector(args)
    if args.model == "descriptor":
        return _train_descriptor(args)
    if args.model == "warp":
        return _train_warp(args)
    cfg = TrainConfig(
        **_loop_kwargs(args, TrainConfig.steps),
        scale_loss=args.scale_loss,
        warmup_steps=args.warmup_steps,
        distill=args.distill,
        distill_weight=args.distill_weight,
        model=PatchPoseConfig(
            backbone=args.backbone,
            c4_symmetric=args.c4,
            separate_backbones=args.separate_backbones,
            window=args.window,
            n_scale_bins=args.scale_bins,
            scale_range=args.scale_range,
        ),
        pairs=PairConfig(
            support=args.support,
            blur=args.blur,
            photometric=args.photometric,
            photometric_fraction=args.photometric_fraction,
            ref_random_pose=args.reference_pose == "random",
            max_tilt=args.max_tilt,
            ori_log2_jitter=args.ori_scale_jitter,
            zoom_out_pairs=args.zoom_out_pairs,
            seed=args.seed,
        ),
    )
    last = fit(cfg, args.out, resume=args.resume, progress=not args.no_progress, total_steps=args.steps)
    print(f"checkpoint: {last}")
    return 0


def _loop_kwargs(args, default_steps: int) -> dict:
    """Training-loop fields shared by every ``ssfeat train`` command."""
    return dict(
        images=args.images,
        val_images=args.val_images,
        steps=args.steps or default_steps,
        time_budget_min=args.time_budget,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
        init_weights=args.init,
        val_every=args.val_every,
        seed=args.seed,
        ema_decay=args.ema,
    )


def _train_detector(args) -> int:
    from .data.homography_pairs import HomographyPairConfig
    from .models.detector import DetectorConfig
    from .training import DetectorTrainConfig, fit

    try:
        fields = tuple(int(f) for f in args.fields.split(","))
    except ValueError:
        raise ValueError(f"--fields expects comma-separated integers, got {args.fields!r}") from None
    cfg = DetectorTrainConfig(
        **_loop_kwargs(args, DetectorTrainConfig.steps),
        kp_weight=args.kp_weight,
        model=DetectorConfig(group_order=args.group_order, fields=fields),
        pairs=HomographyPairConfig(
            size=args.size, max_log2_scale=args.max_scale, max_shear=args.max_shear, seed=args.seed
        ),
    )
    last = fit(cfg, args.out, resume=args.resume, progress=not args.no_progress, total_steps=args.steps)
    print(f"checkpoint: {last}")
    return 0


def _train_descriptor(args) -> int:
    from .data.descriptor_pairs import DescriptorPairConfig
    from .models.descriptor import DescriptorConfig
    from .training import DescriptorTrainConfig, fit

    cfg = DescriptorTrainConfig(
        **_loop_kwargs(args, DescriptorTrainConfig.steps),
        loss=args.loss,
        negatives=args.negatives,
        same_image_negatives=args.same_image_negatives,
        model=DescriptorConfig(dim=args.dim),
        pairs=DescriptorPairConfig(
            size=args.size, max_rotation_deg=args.max_rotation, keypoints=args.keypoints, seed=args.seed
        ),
    )
    last = fit(cfg, args.out, resume=args.resume, progress=not args.no_progress, total_steps=args.steps)
    print(f"checkpoint: {last}")
    return 0


def _train_warp(args) -> int:
    from .data.warp_pairs import WarpPairConfig
    from .hub import load_descriptor
    from .models.warp import WarpConfig
    from .training import WarpTrainConfig, fit

    backbone = load_descriptor(args.backbone).config  # the frozen backbone's architecture
    cfg = WarpTrainConfig(
        **_loop_kwargs(args, WarpTrainConfig.steps),
        qp_root=args.qp_root,
        qp_batch_size=args.qp_batch_size,
        qp_every=args.qp_every,
        consistency_weight=args.consistency_weight,
        features_weight=args.features_weight,
        backbone_weights=args.backbone,
        model=WarpConfig(size=args.size, backbone=backbone),
        pairs=WarpPairConfig(size=args.size, k=args.k, seed=args.seed),
    )
    last = fit(cfg, args.out, resume=args.resume, progress=not args.no_progress, total_steps=args.steps)
    print(f"checkpoint: {last}")
    return 0


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


def _check_writable(path: str | Path, folder: bool = False) -> None:
    """Refuse up front, before a long run, an output that could not be written at its end: a folder
    given for a file (or a file for a folder), a parent path that runs through a file, or a folder
    where no file can be created (tried with a temporary file, removed at once)."""
    import tempfile

    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{path} is {kind}; give the {'folder' if folder else 'file'} to write")
    for parent in ((path,) if folder and path.is_dir() else ()) + tuple(path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {path}: {parent} is a file")
            try:
                with tempfile.TemporaryFile(dir=parent):
                    pass
            except OSError as e:
                raise ValueError(f"cannot write {path}: {parent} is not writable ({e.strerror})") from e
            break


def cmd_benchmark(args) -> int:
    from .evaluation.benchmarks import (
        BenchmarkConfig,
        build_methods,
        format_orientation_defined,
        format_table,
        run_patchpose,
        run_sequences,
        write_json,
    )

    _set_threads(args.threads)
    for out in (args.json, getattr(args, "plot", None)):
        if out:
            _check_writable(out)
    if args.bench == "matching":
        return cmd_benchmark_matching(args)
    if args.bench == "detector":
        return cmd_benchmark_detector(args)
    if args.bench == "descriptor":
        return cmd_benchmark_descriptor(args)
    if args.bench == "geoloc":
        return cmd_benchmark_geoloc(args)
    if args.bench == "warp":
        return cmd_benchmark_warp(args)
    methods = build_methods(args.weights, _extra(args.extra))
    if args.bench == "patchpose":
        cfg = BenchmarkConfig(
            n_pairs=args.n_pairs,
            support=args.support,
            seed=args.seed,
            max_tilt=args.max_tilt,
            scale_sampling=args.scale_sampling,
        )
        result = run_patchpose(args.images, methods, cfg)
    else:
        cfg = BenchmarkConfig(max_keypoints=args.max_keypoints, support=args.support, seed=args.seed)
        result = run_sequences(args.root, methods, cfg)
    print(f"{args.bench}: {result['n_pairs']} pairs")
    print(format_table(result))
    if "orientation_defined" in result:
        print(format_orientation_defined(result))
    print(f"results: {write_json(result, args.json)}")
    return 0


def _pipeline_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--pipelines is empty")
    return names


def _matching_config(args):
    """The :class:`MatchingConfig` of the ``benchmark matching / detector / descriptor`` options."""
    from .evaluation.matching import MatchingConfig

    return MatchingConfig(
        max_keypoints=args.max_keypoints, sift_first_octave=args.sift_first_octave, ransac_repeats=args.ransac_repeats
    )


def cmd_benchmark_detector(args) -> int:
    from .evaluation.benchmarks import write_json
    from .evaluation.detector import format_detector_table, run_detector_benchmark

    names = _pipeline_names(args.pipelines)
    result = run_detector_benchmark(args.root, names, args.weights, not args.no_progress, _matching_config(args))
    print(f"detector benchmark: {result['n_pairs']} image pairs, {args.max_keypoints} keypoints per image")
    for g in ("all", "dataset", "category"):
        print(format_detector_table(result, g))
        print()
    e, t = result["equivariance_error_rot90"], result["detector_time_640x480_s"]
    eq = f"score {e['score_abs']:.2e}, orientation logits {e['ori_logits_abs']:.2e}"
    print(f"90-degree equivariance error (max abs): {eq}")
    tt = f"ssfeat detector {t['ssfeat_detector']:.3f} s, OpenCV SIFT detect {t['opencv_sift_detect']:.3f} s"
    print(f"640x480 image: {tt}")
    print(f"results: {write_json(result, args.json)}")
    return 0


def cmd_benchmark_matching(args) -> int:
    from .evaluation.benchmarks import write_json
    from .evaluation.matching import (
        format_matching_table,
        format_paired_table,
        plot_mma,
        run_matching,
    )
    from .pipeline import pipeline_estimator

    names = _pipeline_names(args.pipelines)
    est = pipeline_estimator(args.weights)
    cfg = _matching_config(args)
    result = run_matching(args.root, names, cfg, est, progress=not args.no_progress)
    print(
        f"matching: {result['n_pairs']} image pairs, {cfg.max_keypoints} keypoints per image, "
        f"homography accuracy over {cfg.ransac_repeats} RANSAC fits per pair"
    )
    print(format_matching_table(result))
    print()
    print(format_matching_table(result, "dataset"))
    print()
    print(format_matching_table(result, "category"))
    floor = {k: v["all"]["floor_h3"] for k, v in result["pipelines"].items() if "floor_h3" in v["all"]}
    if floor:
        print("\nfloor: pairs whose correct matches (<= 3 px) alone, fitted by least squares, are within 3 px:")
        print("  " + ", ".join(f"{k} {100 * v:.1f}" for k, v in floor.items()))
    if "paired" in result:
        print()
        print(format_paired_table(result))
    for key, ref in (("", "detectAndCompute"), ("_detect_compute", "separate detect and compute calls")):
        ratio = result["timing_ratio_vs_opencv" + key]
        print(f"\n640x480 pair, extraction + matching, relative to OpenCV SIFT {ref} + match:")
        print("  " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    out = write_json(result, args.json)
    plot = plot_mma(result, args.plot or out.with_suffix(".png"))
    print(f"results: {out}\nplot: {plot}")
    return 0


def cmd_benchmark_geoloc(args) -> int:
    from .evaluation.benchmarks import write_json
    from .evaluation.geoloc import format_geoloc_table, run_geoloc

    warp = None if args.no_rerank else args.warp_weights
    r = run_geoloc(
        args.root, args.split, args.weights, warp, args.rerank_n, progress=not args.no_progress, flips=args.flips
    )
    print(f"geolocalization ({args.split}): {r['n_queries']} queries, {r['n_gallery']} gallery images, 25 m")
    print(format_geoloc_table(r))
    print(f"results: {write_json(r, args.json)}")
    return 0


def cmd_benchmark_warp(args) -> int:
    from .evaluation.benchmarks import write_json
    from .evaluation.geoloc import format_warp_table, run_warp_pairs

    r = run_warp_pairs(args.images, args.warp_weights, args.pairs, args.k)
    print(f"warping regressor on {r['n_pairs']} synthetic pairs from {r['n_images']} images (k={r['pairs']['k']:g})")
    print(format_warp_table(r))
    print(f"results: {write_json(r, args.json)}")
    return 0


def cmd_benchmark_descriptor(args) -> int:
    from .evaluation.benchmarks import write_json
    from .evaluation.descriptor import format_d2net_table, run_descriptor_benchmark
    from .evaluation.matching import format_matching_table, plot_mma

    names = _pipeline_names(args.pipelines)
    result = run_descriptor_benchmark(args.root, names, args.weights, not args.no_progress, _matching_config(args))
    print(f"descriptor benchmark: {result['n_pairs']} image pairs, {args.max_keypoints} SIFT keypoints per image")
    for g in ("all", "dataset", "category"):
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
    out = write_json(result, args.json)
    plot = plot_mma(result, args.plot or out.with_suffix(".png"))
    print(f"results: {out}\nplot: {plot}")
    return 0


def match(
    image0: str | Path,
    image1: str | Path,
    out: str | Path,
    pipeline: str = "ssfeat*",
    max_keypoints: int = 1000,
    weights: str | None = None,
    sift_first_octave: int = 0,
) -> dict:
    """Match two images with a named pipeline, fit a RANSAC homography and draw the matches
    (inliers green). Returns counts and the homography."""
    from .data.images import read_usable
    from .pipeline import MatchResult, RansacHomography, build_pipeline, pipeline_estimator
    from .viz import draw_matches

    if weights is not None and "ssfeat" not in pipeline:
        raise ValueError(f"--weights sets the patch-pose model of the ssfeat pipelines; {pipeline!r} has none")
    est = pipeline_estimator(weights) if "ssfeat" in pipeline else None
    pipe = build_pipeline(pipeline, max_keypoints, est, sift_first_octave=sift_first_octave)
    img0, img1 = (read_usable(p) for p in (image0, image1))
    feats = []
    for path, img in ((image0, img0), (image1, img1)):
        try:
            f = pipe.extract(img)
        except ValueError as e:  # e.g. an image smaller than the pipeline's windows
            raise ValueError(f"{path}: {e}") from e
        if len(f) == 0:
            raise ValueError(f"{path}: no keypoints found by the {pipeline} pipeline, nothing to match")
        feats.append(f)
    res = MatchResult(*feats, pipe.match_features(*feats))
    xy0 = res.features0.keypoints[res.matches.idx[:, 0]]
    xy1 = res.features1.keypoints[res.matches.idx[:, 1]]
    H, inl = RansacHomography().fit(xy0, xy1)
    title = (
        f"{pipeline}: {len(res.features0)} / {len(res.features1)} features, {len(res.matches)} matches, "
        f"{int(inl.sum())} RANSAC inliers (green)"
    )
    fig = draw_matches(img0, img1, xy0, xy1, inl, out, title)
    return {"figure": fig, "matches": len(res.matches), "inliers": int(inl.sum()), "H_0to1": H, "title": title}


def show(
    image: str | Path,
    out: str | Path,
    weights: str | None = None,
    n: int = 60,
    support: float = 32.0,
    histograms: bool = False,
    estimator=None,
) -> Path:
    """Estimate poses at the ``n`` strongest SIFT keypoints of ``image`` and draw them."""
    import numpy as np

    from .data.images import read_usable
    from .estimator import PatchPoseEstimator, detect_sift
    from .viz import draw_poses

    m = support / np.sqrt(2)
    img = read_usable(image, min_size=2 * int(np.ceil(m)) + 1)
    est = estimator or PatchPoseEstimator.from_pretrained(weights or "patchpose")
    H, W = img.shape
    kps = [k for k in detect_sift(img, 4 * n) if m <= k.pt[0] <= W - 1 - m and m <= k.pt[1] <= H - 1 - m][:n]
    if not kps:
        raise ValueError(f"{image}: no SIFT keypoint at least {m:.0f} px from the border, nothing to draw")
    xy = np.array([k.pt for k in kps]).reshape(-1, 2)
    out_pose = est(est.extract(img, xy, support))
    size = support * np.exp2(out_pose.log2_scale.numpy())
    return draw_poses(
        img,
        xy,
        out_pose.orientation.numpy(),
        size,
        out,
        out_pose.ori_hist.numpy() if histograms else None,
        out_pose.scale_hist.numpy() if histograms else None,
        title=f"{Path(image).name}: ssfeat scale (circle) and orientation (arrow) at {len(kps)} SIFT keypoints",
    )


def detect(
    image: str | Path, out: str | Path, max_keypoints: int = 300, weights: str | None = None, detector=None
) -> tuple[Path, int]:
    """Detect oriented keypoints with the equivariant detector and draw them (circle = feature
    size, line = orientation). Returns the figure path and the number of keypoints."""
    from .data.images import read_usable
    from .detector import DetectConfig, KeypointDetector
    from .viz import draw_poses

    img = read_usable(image)
    det = detector or KeypointDetector.from_pretrained(weights or "detector", DetectConfig(max_keypoints=max_keypoints))
    try:
        f = det(img)
    except ValueError as e:  # e.g. an image smaller than the detector's border
        raise ValueError(f"{image}: {e}") from e
    title = f"ssfeat detector: {len(f)} keypoints (circle: size, line: orientation)"
    return draw_poses(img, f.keypoints, f.orientations, f.scales, out, title=title), len(f)


def _skip_note(path: Path, error: Exception, what: str = "") -> str:
    """``skipped [WHAT]PATH: REASON`` (the path said once, also when the error already names it)."""
    reason = str(error).removeprefix(f"{path}: ")
    return f"skipped {what}{path}: {reason}"


def demo(
    images: str | Path | None = None, out: str | Path = "ssfeat_demo", weights: str | None = None, n_pairs: int = 400
) -> dict:
    """The main job: poses with the bundled model on sample photos, the accuracy table against the
    baselines on pairs made from those photos, and figures: a Figure-1 style PNG per photo (at most 4),
    learned oriented keypoints (2 photos), learned-descriptor matches against a synthetic view and the
    homography regressor's shared region (1 photo each)."""
    from .data.images import load_textured, samples_dir
    from .evaluation.benchmarks import BenchmarkConfig, build_methods, format_table, run_patchpose, write_json

    images = Path(images) if images else samples_dir()
    out = Path(out)
    _check_writable(out, folder=True)
    methods = build_methods(weights)
    paths, imgs = load_textured(images)  # readable, non-blank photos only (the others are named in a warning)
    print(f"ssfeat demo: {len(paths)} photos from {images}")
    result = run_patchpose(images, methods, BenchmarkConfig(n_pairs=n_pairs), loaded=(paths, imgs))
    print(f"\nsynthetic pairs from these photos ({n_pairs} orientation + {n_pairs} scale pairs), accuracy in %:")
    print(format_table(result))
    write_json(result, out / "demo_benchmark.json")
    figs = []
    for p in paths[:4]:
        try:
            figs.append(show(p, out / f"{p.stem}_poses.png", histograms=True, estimator=methods[0].estimator))
        except ValueError as e:
            print(_skip_note(p, e))
    for p in paths[:2]:
        try:
            figs.append(detect(p, out / f"{p.stem}_keypoints.png")[0])
        except ValueError as e:
            print(_skip_note(p, e))
    try:
        figs.append(descriptor_demo(paths[0], out / f"{paths[0].stem}_descriptor_matches.png"))
    except ValueError as e:
        print(_skip_note(paths[0], e, "the descriptor demo on "))
    try:
        from .data.images import read_image

        figs.append(warp_demo(read_image(paths[0]), out / f"{paths[0].stem}_warp.png"))
    except ValueError as e:
        print(_skip_note(paths[0], e, "the homography-regression demo on "))
    print("\nfigures: " + ", ".join(str(f) for f in figs))
    print(f"results: {out / 'demo_benchmark.json'}")
    return result


def descriptor_demo(path: str | Path, out: str | Path, max_keypoints: int = 500) -> Path:
    """Match a photo to a synthetic view of it (rotated 20 degrees, zoomed 1.25x, in perspective,
    darker) with RootSIFT and with the learned descriptor at the same SIFT keypoints; print both
    match accuracies and draw the learned descriptor's matches (green: within 3 px of the truth)."""
    import cv2
    import numpy as np
    import torch

    from .data.images import read_image
    from .geometry import warp_points
    from .pipeline import build_pipeline
    from .viz import draw_matches

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
        res = build_pipeline(name, max_keypoints)(img, view)
        x0 = res.features0.keypoints[res.matches.idx[:, 0]].astype(np.float64)
        x1 = res.features1.keypoints[res.matches.idx[:, 1]].astype(np.float64)
        err = np.linalg.norm(warp_points(torch.from_numpy(x0), torch.from_numpy(H)).numpy() - x1, axis=1)
        ok = err <= 3.0
        print(
            f"  {name:14s} {len(ok)} matches, {int(ok.sum())} correct (MMA@3 {100 * ok.mean() if len(ok) else 0:.1f}%)"
        )
        if name == "hndesc":
            title = f"learned descriptor: {int(ok.sum())} of {len(ok)} matches within 3 px (green)"
            fig = draw_matches(img, view, x0, x1, ok, out, title)
    return fig


def warp_demo(
    image, out: str | Path, weights: str = "warp", k: float = 0.6, seed: int = 0, size: int | None = None
) -> Path:
    """GeoWarp's self-supervised pair made from ``image`` ``(H, W)`` with the warping regressor's
    prediction drawn over the truth; prints the mean corner error (normalised units). The views have
    the regressor's input size (``size``, if given, must equal it)."""
    import numpy as np
    import torch

    from .data.warp_pairs import WarpPairConfig, WarpPairSynthesizer, draw_pair
    from .hub import load_warp

    net = load_warp(weights)
    if size is not None and size != net.config.size:
        raise ValueError(f"the regressor reads {net.config.size} px views; leave out --size or give {net.config.size}")
    sample = WarpPairSynthesizer([image], WarpPairConfig(size=net.config.size, k=k, seed=seed)).sample(0)
    a, b = (torch.as_tensor(sample[key])[None, None] for key in ("image_a", "image_b"))
    with torch.inference_mode():
        pa, pb = (x[0].numpy() for x in net.shared_region(a, b))
    err = 0.5 * (np.linalg.norm(pa - sample["t_a"], axis=1).mean() + np.linalg.norm(pb - sample["t_b"], axis=1).mean())
    print(f"\nhomography regression on a self-supervised pair (k={k:g}): mean corner error {err:.3f} (frame spans 2)")
    return draw_pair(image, sample, out, pred=(pa, pb))


def cmd_make_geoloc(args) -> int:
    from .data.geoloc import GeolocMakeConfig, make_geoloc_dataset

    try:
        splits = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        raise ValueError(f"--splits expects three comma-separated fractions, got {args.splits!r}") from None
    cfg = GeolocMakeConfig(n_gallery=args.n_gallery, n_queries=args.n_queries, k=args.k, splits=splits, seed=args.seed)
    meta = make_geoloc_dataset(args.images, args.out, cfg)
    for s, c in meta["counts"].items():
        print(f"{s}: {c['places']} places, {c['gallery']} gallery, {c['queries']} queries")
    print(f"dataset (synthetic positions): {args.out}; {len(meta['skipped'])} unusable photos skipped")
    return 0


def cmd_make_sequences(args) -> int:
    from .data.synthetic_sequences import SyntheticSequenceConfig, make_synthetic_sequences

    cfg = SyntheticSequenceConfig(
        n_targets=args.targets,
        max_side=args.max_side,
        min_log2_zoom=args.min_zoom,
        max_log2_zoom=args.max_zoom,
        perspective=args.perspective,
        seed=args.seed,
    )
    meta = make_synthetic_sequences(args.images, args.out, cfg, limit=args.limit)
    for s in meta["skipped"]:
        print(f"skipped: {s}")
    n = len(meta["sequences"])
    print(f"{n} sequences, {n * cfg.n_targets} pairs, {len(meta['skipped'])} photos skipped: {args.out}")
    return 0


def cmd_extract(args) -> int:
    from . import distributed as du
    from .extract import ExtractConfig, extract_folder

    _set_threads(args.threads)
    cfg = ExtractConfig(args.pipeline, args.max_keypoints, args.max_side, args.part_size, args.sift_first_octave)
    du.init_from_env()  # under torchrun: shard the images over the processes
    rank = du.rank()
    try:
        st = extract_folder(args.images, args.out, cfg, workers=args.workers, progress=not args.no_progress)
    finally:
        du.cleanup()
    if rank == 0:
        print(
            f"{st['n_done']} of {st['n_images']} images in {args.out} ({st['n_skipped']} skipped); "
            f"this run: {st['n_new']} new in {st['seconds']:.1f} s, {st['images_per_s']} images/s"
        )
    return 0


PATH_ARGS = ("--images", "--root", "--out", "--json", "--plot", "run", "image", "image0", "image1")


def _refuse_empty_paths(args) -> None:
    """An empty path would silently mean the current folder (``Path("") == Path(".")``)."""
    for arg in PATH_ARGS:
        v = getattr(args, arg.lstrip("-"), None)
        if any(isinstance(x, str) and not x.strip() for x in (v if isinstance(v, list) else [v])):
            raise ValueError(f"{arg} is an empty path")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from .data.images import ImageReadError

    try:
        _refuse_empty_paths(args)
        if args.cmd == "train":
            return cmd_train(args)
        if args.cmd == "export":
            return cmd_export(args)
        if args.cmd == "benchmark":
            return cmd_benchmark(args)
        if args.cmd == "show":
            print(f"figure: {show(args.image, args.out, args.weights, args.n, args.support, args.histograms)}")
            return 0
        if args.cmd == "match":
            r = match(
                args.image0,
                args.image1,
                args.out,
                args.pipeline,
                args.max_keypoints,
                args.weights,
                args.sift_first_octave,
            )
            print(r["title"])
            if r["H_0to1"] is not None:
                print("H_0to1 =\n" + "\n".join("  " + " ".join(f"{v: .6g}" for v in row) for row in r["H_0to1"]))
            print(f"figure: {r['figure']}")
            return 0
        if args.cmd == "detect":
            fig, n = detect(args.image, args.out, args.max_keypoints, args.weights)
            print(f"{n} keypoints\nfigure: {fig}")
            return 0
        if args.cmd == "demo":
            demo(args.images, args.out, args.weights, args.n_pairs)
            return 0
        if args.cmd == "extract":
            return cmd_extract(args)
        if args.cmd == "data" and args.data_cmd == "warp-pair":
            from .data.images import read_usable
            from .data.warp_pairs import WarpPairConfig, WarpPairSynthesizer, draw_pair

            img = read_usable(args.image)
            if args.weights:
                print(f"figure: {warp_demo(img, args.out, args.weights, args.k, args.seed, args.size)}")
                return 0
            synth = WarpPairSynthesizer([img], WarpPairConfig(size=args.size or 128, k=args.k, seed=args.seed))
            print(f"figure: {draw_pair(img, synth.sample(0), args.out)}")
            return 0
        if args.cmd == "data" and args.data_cmd == "make-sequences":
            return cmd_make_sequences(args)
        if args.cmd == "data":
            return cmd_make_geoloc(args)
    except (ValueError, OSError, ImageReadError, FloatingPointError) as e:
        print(f"ssfeat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ssfeat: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
