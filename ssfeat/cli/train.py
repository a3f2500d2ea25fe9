"""``ssfeat train {pose,scalepose,detector,descriptor,warp}``: the options are the fields of the task's
training config (:mod:`ssfeat.training.configs`) and of its model and pair configs, one table
(``path -> (help, argparse settings)``) per task and one row of :data:`TRAIN_COMMANDS`; ``aliases``
are earlier flag names, hidden."""

from __future__ import annotations

import argparse

from ..models.weights import load_descriptor_model
from ..training import (
    DescriptorTrainConfig,
    DetectorTrainConfig,
    PoseTrainConfig,
    ScalePoseTrainConfig,
    WarpTrainConfig,
    fit,
)
from .args import add_field, config_from_args, device, fraction, non_negative, positive, positive_float, threads

TRAIN_DEVICE_HELP = (
    "torch device to train on: cpu, cuda (under torchrun: each process's local GPU), cuda:N, mps or auto "
    "(default: the local GPU if CUDA is available, else the CPU); not stored in the run, --resume may change it"
)

# training-loop fields every task shares (LoopConfig); --steps and --time-budget-min are added
# apart (one excludes the other), --batch-size with the task's own help
LOOP_FIELDS = {
    "val_images": ("image-disjoint validation folder (default: hold out images)", {}),
    "lr": (None, {}),
    "workers": (None, {}),
    "init_weights": ("start from these weights / run (fine-tuning)", {"aliases": ("--init",)}),
    "val_every": (None, {"type": positive}),
    "ckpt_every": ("write RUN/last.pt every N steps (and at the end)", {"type": positive}),
    "seed": (None, {"type": non_negative}),
    "ema_decay": ("keep a weight average (e.g. 0.999; 0: off)", {"aliases": ("--ema",)}),
}

POSE_FIELDS = {
    "model.backbone": ("tiny | fast | small | resnet18", {}),
    "model.c4_symmetric": ("exactly 90-degree-equivariant model (4x slower)", {"aliases": ("--c4",)}),
    "model.separate_backbones": ("one backbone per head, as the paper (2x the cost)", {}),
    "pairs.support": ("reference window side in pixels", {"type": positive_float}),
    "pairs.blur": ("max sigma of the random blur augmentation (0: off)", {}),
    "pairs.photometric": (
        "random gamma, contrast, brightness and noise on patches (--no-photometric: clean crops, as the paper's)",
        {},
    ),
    "pairs.photometric_fraction": (
        "with --photometric: the fraction of pairs that get those changes (the others are clean crops)",
        {},
    ),
    "pairs.ref_random_pose": (
        "reference patch of a pair: random rotation and log2 zoom (--no-ref-random-pose: unrotated and "
        "unzoomed, and scale pairs unrotated, as `benchmark patchpose` draws them; --zoom-out-pairs still "
        "zooms those references out, --max-tilt still tilts)",
        {},
    ),
    "pairs.ori_log2_jitter": (
        "orientation pairs: log2 scale change uniform in [-J, J] between the two views",
        {"aliases": ("--ori-scale-jitter",)},
    ),
    "pairs.max_tilt": ("viewpoint augmentation: tilt views up to this (1: off)", {}),
    "pairs.zoom_out_pairs": ("fraction of scale pairs with both views downsampled (no blur cue to magnification)", {}),
    "model.window": ("circular input window, radius in half patch sides (0: off)", {}),
    "model.scale_range": (
        "scale histogram spans log2 scales [-R, R] (wider than the pairs' scale range leaves room)",
        {},
    ),
    "model.n_scale_bins": ("number of scale histogram bins", {"aliases": ("--scale-bins",)}),
    "scale_loss": ("see ssfeat.training.losses", {"choices": ["full", "shared"]}),
    "warmup_steps": (None, {"type": non_negative}),
    "distill": (
        "also match the scale histograms of this trained model (e.g. a ResNet-18 run's export)",
        {"metavar": "WEIGHTS"},
    ),
    "distill_weight": ("weight of the --distill term", {}),
}

SCALEPOSE_FIELDS = {
    "pairs.keypoints": ("keypoint pairs per view pair", {"type": positive}),
    "pairs.max_log2_zoom": ("views zoom the photo by 2**U(-max, max)", {}),
    "pairs.crop": ("cut both images of a pair to random rectangles (--no-crop: whole images)", {}),
    "model.n_angles": ("angles of the log-polar patch (even; at least 4 per harmonic)", {"type": positive}),
    "model.channels": ("channels of the log-polar convolution", {"type": positive}),
    "model.hidden": ("channels of the convolutions along the rings", {"type": positive}),
    "model.ring_layers": ("dilated convolutions along the rings after the first", {}),
    "model.min_radius": ("radius (px) of the histogram's first ring", {}),
    "pairs.jitter": ("std (px) of a random offset of each keypoint in both images", {}),
    "pairs.sift_fraction": ("fraction of the keypoints at SIFT keypoints (the others uniformly random)", {}),
    "locality": ("weight of the histograms' mean log2 radius (octaves) in the loss", {}),
    "mode_weight": ("weight of the cross-entropy against the other view's strongest ring", {}),
}

DETECTOR_FIELDS = {
    "model.group_order": ("N of C_N (orientation bins; x4)", {"type": positive}),
    "pairs.size": ("side of the training views (px)", {"type": positive}),
    "pairs.max_log2_scale": ("log2 scale change range", {"aliases": ("--max-scale",)}),
    "pairs.max_shear": (None, {}),
    "kp_weight": ("weight of the MSIP keypoint loss", {}),
}

DESCRIPTOR_FIELDS = {
    "loss": ("listwise AP or hardest-negative triplet", {"choices": ["ap", "triplet"]}),
    "negatives": ("hardest in-batch negatives per anchor", {"type": positive}),
    "same_image_negatives": (
        f"also draw negatives from the same pair (> {DescriptorTrainConfig.negative_radius:g} px from the match)",
        {"action": "store_true"},
    ),
    "pairs.keypoints": (None, {"choices": ["sift", "detector", "random"]}),
    "pairs.size": ("side of the training views (px)", {"type": positive}),
    "pairs.max_rotation_deg": ("per-view rotation range (deg)", {"aliases": ("--max-rotation",)}),
    "model.dim": ("descriptor length", {"type": positive}),
}

WARP_FIELDS = {
    "pairs.k": ("trapezoid distortion in [0, 1] (a float)", {"type": fraction}),
    "qp_root": (
        "geolocalization dataset whose train split gives weakly supervised (query, positive) pairs "
        "for the consistency and features-wise losses (default: self-supervised pairs only)",
        {},
    ),
    "qp_batch_size": ("(query, positive) pairs per step", {"type": positive}),
    "qp_every": ("(query, positive) losses every N steps", {"type": positive}),
    "consistency_weight": ("consistency loss", {}),
    "features_weight": ("features-wise loss", {}),
    "backbone_weights": ("frozen descriptor weights/run (default: bundled)", {"aliases": ("--backbone",)}),
}


def _add_options(p, cls: type, fields: dict) -> None:
    for path, (help, kw) in fields.items():
        add_field(p, cls, path, help, **kw)


def _add_task(tr, name: str, help: str, cls: type, fields: dict, command, batch_help: str):
    """The parser of one task: the loop's options, then the task's ``fields``."""
    p = tr.add_parser(name, help=help)
    p.set_defaults(command=command)
    p.add_argument("--images", required=True, help="folder of training photos (recursive)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=positive, default=None, help=f"optimisation steps (default {cls.steps})")
    g.add_argument("--time-budget-min", type=positive_float, metavar="MIN", help="fit the schedule into MIN minutes")
    g.add_argument(
        "--time-budget", dest="time_budget_min", type=positive_float, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    p.add_argument(
        "--resume", action="store_true", help="continue RUN/last.pt with its stored config (--steps changes the length)"
    )
    add_field(p, cls, "batch_size", batch_help, type=positive)
    _add_options(p, cls, LOOP_FIELDS)
    device(p, default=None, help=TRAIN_DEVICE_HELP)
    threads(p)
    p.add_argument("--no-progress", action="store_true")
    _add_options(p, cls, fields)
    return p


def _train(args, cls: type, fields, **values) -> int:
    """Train the task of config ``cls`` with the loop fields and ``fields`` from ``args`` (the pairs
    draw with the run's seed) and other ``values`` by path (``model__size``)."""
    loop = {"images": args.images, "steps": args.steps or cls.steps, "time_budget_min": args.time_budget_min}
    paths = [*LOOP_FIELDS, "batch_size", *fields]
    cfg = config_from_args(cls, args, paths, **loop, pairs__seed=args.seed, **values)
    progress = not args.no_progress
    last = fit(cfg, args.out, resume=args.resume, progress=progress, total_steps=args.steps, device=args.device)
    print(f"checkpoint: {last}")
    return 0


def _reference_pose(text: str) -> bool:
    """The earlier ``--reference-pose {random,native}``: ``ref_random_pose``."""
    if text not in ("random", "native"):
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from 'random', 'native')")
    return text == "random"


def run_pose(args) -> int:
    return _train(args, PoseTrainConfig, POSE_FIELDS)


def run_scalepose(args) -> int:
    return _train(args, ScalePoseTrainConfig, SCALEPOSE_FIELDS)


def run_detector(args) -> int:
    try:
        fields = tuple(int(f) for f in args.fields.split(","))
    except ValueError:
        raise ValueError(f"--fields expects comma-separated integers, got {args.fields!r}") from None
    return _train(args, DetectorTrainConfig, DETECTOR_FIELDS, model__fields=fields)


def run_descriptor(args) -> int:
    return _train(args, DescriptorTrainConfig, DESCRIPTOR_FIELDS)


def run_warp(args) -> int:
    backbone = load_descriptor_model(args.backbone_weights).config  # the frozen backbone's architecture
    sizes = {"model__size": args.size, "pairs__size": args.size}
    return _train(args, WarpTrainConfig, WARP_FIELDS, model__backbone=backbone, **sizes)


def _pose_extra(p) -> None:
    p.add_argument("--reference-pose", dest="ref_random_pose", type=_reference_pose, help=argparse.SUPPRESS)


def _detector_extra(p) -> None:
    fields = ",".join(map(str, DetectorTrainConfig().model.fields))
    p.add_argument("--fields", default=fields, help="regular fields per trunk layer")


def _warp_extra(p) -> None:
    add_field(p, WarpTrainConfig, "model.size", "side of the views (px, multiple of 8)", type=positive)


PAIRS, IMAGE_PAIRS = "pairs of each kind per step, all processes", "image pairs per step, all processes"

# one row per training task: name, help, config, its option table, run, --batch-size help, extra options
TRAIN_COMMANDS = (
    ("pose", "train PatchPoseNet on a folder of unlabeled photos", PoseTrainConfig, POSE_FIELDS, run_pose, PAIRS),
    (
        "scalepose",
        "train the scale-covariant keypoint scale network (log-polar) on unlabeled photos",
        ScalePoseTrainConfig,
        SCALEPOSE_FIELDS,
        run_scalepose,
        "view pairs per step, all processes (each with --keypoints keypoint pairs)",
    ),
    (
        "detector",
        "train the equivariant keypoint detector on unlabeled photos",
        DetectorTrainConfig,
        DETECTOR_FIELDS,
        run_detector,
        IMAGE_PAIRS,
    ),
    (
        "descriptor",
        "train the dense descriptor network (HNDesc) on unlabeled photos",
        DescriptorTrainConfig,
        DESCRIPTOR_FIELDS,
        run_descriptor,
        IMAGE_PAIRS,
    ),
    (
        "warp",
        "train the homography regressor (GeoWarp) on self-supervised trapezoid pairs",
        WarpTrainConfig,
        WARP_FIELDS,
        run_warp,
        IMAGE_PAIRS,
    ),
)
EXTRA_OPTIONS = {"pose": _pose_extra, "detector": _detector_extra, "warp": _warp_extra}


def add_parser(sub) -> None:
    tr = sub.add_parser("train", help="self-supervised training").add_subparsers(dest="model", required=True)
    for row in TRAIN_COMMANDS:
        p = _add_task(tr, *row)
        if row[0] in EXTRA_OPTIONS:
            EXTRA_OPTIONS[row[0]](p)


__all__ = ["add_parser"]
