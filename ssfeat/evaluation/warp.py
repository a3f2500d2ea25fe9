"""The ``warp`` benchmark: the homography regressor's corner accuracy on held-out self-supervised
trapezoid pairs."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from ..data.images import load_textured
from ..data.warp_pairs import WarpPairConfig, WarpPairSynthesizer
from ..inference.pose import check_device
from ..models.warp import FRAME
from ..models.weights import checkpoint_file, load_checkpoint, load_warp_model
from .metrics import corner_metrics
from .patchpose import PoseBenchmarkConfig
from .report import meta, render_rows
from .timing import interleaved_seconds

# the regressor's variants in the benchmark: name -> averaged over flipped inputs
VARIANTS = {"ssfeat WarpNet": False, "ssfeat WarpNet, flip-averaged": True}


def _regress(net, a: torch.Tensor, b: torch.Tensor, flips: bool):
    with torch.inference_mode():
        return net.shared_region(a, b, flips)


def run_warp_pairs(
    images: str | Path,
    warp_weights: str = "warp",
    n_pairs: int = 512,
    k: float | None = None,
    seed: int = 1234,
    device: str = "cpu",
) -> dict:
    """Corner accuracy of the warping regressor on ``n_pairs`` self-supervised trapezoid pairs
    synthesised from the photos in ``images`` (use photos it was not trained on), prediction
    averaged over both input orders, and also over flipped inputs. Reports the metrics of
    :func:`~ssfeat.evaluation.metrics.corner_metrics` next to the untrained baseline (predict the whole
    frames) in one run. ``pairs_per_s``: one batch of 64 pairs, the best of 3 interleaved rounds.
    The regressor runs on ``device``."""
    dev = check_device(device)
    net = load_warp_model(warp_weights).to(dev)
    cfg = WarpPairConfig(size=net.config.size, seed=seed, k=net_k(warp_weights) if k is None else k)
    # unreadable, tiny and blank files are reported and skipped
    paths, imgs = load_textured(images, min_size=16, as_uint8=False)
    batch = WarpPairSynthesizer(imgs, cfg).batch(range(n_pairs))
    methods, timed = {}, {}
    a, b = batch["image_a"].to(dev), batch["image_b"].to(dev)
    for name, flips in VARIANTS.items():
        with torch.inference_mode():
            preds = [net.shared_region(a[i : i + 64], b[i : i + 64], flips) for i in range(0, n_pairs, 64)]
        pa, pb = torch.cat([p[0] for p in preds]).cpu(), torch.cat([p[1] for p in preds]).cpu()
        methods[name] = corner_metrics(pa, pb, batch["t_a"], batch["t_b"])
        timed[name] = functools.partial(_regress, net, a[:64], b[:64], flips)
    speed = {k: round(len(a[:64]) / v, 1) for k, v in interleaved_seconds(timed, 3, reduce="best").items()}
    frame = FRAME.expand_as(pa)
    methods["whole frames (no regression)"] = corner_metrics(frame, frame, batch["t_a"], batch["t_b"])
    out = meta(PoseBenchmarkConfig(), "warp", images=str(images), warp_weights=str(warp_weights), n_images=len(paths))
    out.update(
        pairs=dataclasses.asdict(cfg),
        n_pairs=n_pairs,
        pairs_per_s=speed,
        methods=methods,
    )
    return out


def net_k(warp_weights: str) -> float:
    """The trapezoid distortion ``k`` a warp model was trained with (default 0.6 for weights files,
    which do not store it)."""
    p = Path(str(warp_weights))
    if p.is_dir() or p.suffix == ".pt":
        return float(load_checkpoint(checkpoint_file(p))["config"]["pairs"]["k"])

    return WarpPairConfig.k


def format_warp_table(result: dict) -> str:
    rows = [["method", "corner err", "all 8 <= 0.1 (%)", "mean <= 0.1 (%)"]]
    for name, m in result["methods"].items():
        rows.append([name, f"{m['corner_err']:.3f}", f"{m['within_0.1']:.1f}", f"{m['mean_within_0.1']:.1f}"])
    return render_rows(rows)


__all__ = ["format_warp_table", "net_k", "run_warp_pairs"]
