"""``ssfeat export``: a training run to a ``.safetensors`` weights file, optionally with the
rotation-averaging settings of a patch-pose model; ``--c4-below auto`` calibrates the adaptive C4
threshold on the run's own validation photos with the patch-pose benchmark's pair protocol; a
scale-pose run gets its ``size_factor`` calibrated on its training photos."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..data.images import load_textured
from ..data.synthesis import PairSynthesizer
from ..evaluation.keypoints import calibrate_size_range
from ..evaluation.patchpose import calibrate_c4_below, paper_protocol
from ..evaluation.report import render_rows
from ..inference.pose import check_device
from ..models.patch_pose import PatchPoseNet
from ..models.scale_pose import LogPolarScaleNet
from ..models.weights import checkpoint_file, model_from_checkpoint, save_weights, weights_target
from ..training import config_from_checkpoint, load_checkpoint, split_images
from .args import DEVICE_HELP, device, positive_float

logger = logging.getLogger(__name__)


def _require_pose(model) -> None:
    if not isinstance(model, PatchPoseNet):
        raise ValueError("--c4-symmetric/--c4-below apply to patch-pose runs only")


def calibrate_run_c4_below(run: str | Path, model: PatchPoseNet, n_pairs: int = 2000) -> tuple[float, list[dict]]:
    """Adaptive C4 threshold of a patch-pose run, chosen on its validation photos (the images its
    training held out), with the benchmark's pair protocol."""
    _require_pose(model)
    cfg = config_from_checkpoint(load_checkpoint(checkpoint_file(run)))
    _, _, vpaths, vimages = split_images(cfg)
    pcfg = paper_protocol(cfg.pairs, seed=cfg.pairs.seed + 2)
    threshold, rows = calibrate_c4_below(model, PairSynthesizer(vimages, pcfg, [str(p) for p in vpaths]), n_pairs)
    logger.info("adaptive C4 on %d validation photos: c4_below = %g", len(vimages), threshold)
    return threshold, rows


def export(
    run: str | Path,
    out: str | Path,
    c4: bool | None = None,
    half: bool = False,
    c4_below: float | str | None = None,
    average: bool = True,
) -> Path:
    """Export the best (else last) checkpoint of a training run to a safetensors weights file.

    ``c4`` switches the averaging over the four 90-degree rotations on or off at inference
    (the weights are unchanged; ``None`` keeps the training setting); ``half`` stores float16.
    ``c4_below`` (patch-pose models) stores an adaptive C4 threshold, or ``"auto"``: the one
    :func:`calibrate_run_c4_below` picks on the run's own validation photos. ``average=False``
    exports the trained weights of a run that also kept a weight average (``ema_decay``)."""
    weights_target(out)  # before the (possibly slow) calibration
    model = model_from_checkpoint(run, average)
    if c4 is not None or c4_below is not None:
        _require_pose(model)
    if c4 is not None:
        model.set_c4(c4)
    if c4_below == "auto":
        c4_below = calibrate_run_c4_below(run, model)[0]
    if c4_below is not None:
        model.set_c4_below(float(c4_below))
    return save_weights(model, out, half)


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


def export_scale_model(run: str | Path, out: str | Path, ori_window: float | None = None, half: bool = False) -> Path:
    """Export a scale-pose run with its ``size_factor`` calibrated on (up to 48 of) its training
    photos, so that its sizes are OpenCV SIFT's in the median (a factor on every size: no relative
    size changes), its rings placed to cover sizes from ``SMALLEST_SIZE`` up
    (:func:`~ssfeat.evaluation.keypoints.calibrate_size_range`), and optionally another ``ori_window``."""
    weights_target(out)
    model = model_from_checkpoint(run)
    cfg = config_from_checkpoint(load_checkpoint(checkpoint_file(run)))
    _, images = load_textured(cfg.images, min_size=64, as_uint8=False)
    factor, radius = calibrate_size_range(model, images[:: max(1, len(images) // 48)][:48])
    logger.info("size_factor = %.4g (sizes as OpenCV SIFT's in the median), rings from %.3g px", factor, radius)
    if ori_window is not None:
        model.config.ori_window = ori_window
    return save_weights(model, out, half)


def run(args) -> int:
    c4_below = args.c4_below
    weights_target(args.out)  # refuse a folder before the calibration
    if isinstance(model_from_checkpoint(args.run, args.average), LogPolarScaleNet):
        if args.c4_symmetric is not None or c4_below is not None:
            raise ValueError("--c4-symmetric/--c4-below apply to patch-pose runs only")
        print(f"weights: {export_scale_model(args.run, args.out, args.ori_window, args.half)}")
        return 0
    if c4_below == "auto":
        model = model_from_checkpoint(args.run, args.average).to(check_device(args.device))
        c4_below, rows = calibrate_run_c4_below(args.run, model)
        print("adaptive C4 on the run's validation photos (orientation pairs, +-10 degrees):")
        table = [["c4_below", "ori ±10°", "% averaged"]]
        table += [[f"{r['c4_below']:g}", f"{r['ori_acc@10deg']:.2f}", f"{r['share_averaged']:.1f}"] for r in rows]
        print(render_rows(table))
        print(f"chosen: c4_below = {c4_below:g}")
    print(f"weights: {export(args.run, args.out, args.c4_symmetric, args.half, c4_below, args.average)}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a training run to a .safetensors weights file")
    p.set_defaults(command=run)
    p.add_argument("run", help="run folder or checkpoint (.pt)")
    p.add_argument("--out", required=True)
    c4 = p.add_mutually_exclusive_group()
    for const, flags, help in (
        (True, ("--c4-symmetric", "--c4"), "average over 90-degree rotations"),
        (False, ("--no-c4-symmetric", "--no-c4"), "no rotation averaging"),
    ):
        for f, h in zip(flags, (help, argparse.SUPPRESS)):  # the second: the earlier name, hidden
            c4.add_argument(f, dest="c4_symmetric", action="store_const", const=const, help=h)
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument(
        "--no-average",
        dest="average",
        action="store_false",
        help="a run trained with --ema-decay: export its trained weights, not the weight average",
    )
    p.add_argument(
        "--c4-below",
        type=_c4_below,
        default=None,
        help="adaptive C4 threshold on the orientation peak probability (0: off), or 'auto': the cheapest one "
        "that recovers 90%% of full C4's accuracy gain on the run's validation photos",
    )
    p.add_argument(
        "--ori-window",
        type=positive_float,
        default=None,
        help="scale-pose runs: orientation window side as a multiple of the size (default: as stored)",
    )
    device(p, help=DEVICE_HELP.replace("of the networks", "of the --c4-below auto calibration"))


__all__ = ["add_parser", "calibrate_run_c4_below", "export", "export_scale_model"]
