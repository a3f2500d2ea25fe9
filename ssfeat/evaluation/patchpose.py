"""Benchmark runners: every method on the same pairs in one run, JSON results and a printed table.

* ``patchpose``: synthetic pairs from an image folder (paper protocol: orientation pairs are pure
  rotations, scale pairs pure magnifications of an axis-aligned reference patch); continuous GT.
* ``sequences``: real image pairs with homographies; patches at SIFT keypoints of image 1 and at
  their projections in image k, both axis-aligned windows of the same size; GT is the local
  rotation and scale of the homography at the keypoint (:func:`ssfeat.geometry.local_rotation_scale`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.images import load_textured
from ..data.synthesis import PairConfig, PairSynthesizer
from ..inference.pose import PatchPoseEstimator
from ..models.patch_pose import decode_pose
from .baselines import KeypointPoseOnPatches, KorniaGradientOrientation, LearnedPose, LoGScale, PoseMethod
from .metrics import ORI_THRESHOLDS_DEG, SCALE_THRESHOLDS, pose_accuracies, topk_recall
from .report import meta, render_rows
from .timing import interleaved_seconds

logger = logging.getLogger(__name__)

TOPK = (1, 2, 3, 4)


@dataclass
class PoseBenchmarkConfig:
    """Settings shared by the patch-pose benchmarks (stored in the JSON output)."""

    n_pairs: int = 2000  # pairs per kind (patchpose) / at most per image pair / 10 (sequences)
    patch_size: int = 32
    support: float = 32.0  # window side in pixels around each keypoint (log2 scale 0)
    seed: int = 1234
    max_keypoints: int = 300  # sequences: SIFT keypoints sampled per image pair
    max_tilt: float = 1.0  # patchpose: viewpoint tilts of the views (PairConfig.max_tilt; 1: the paper's protocol)
    scale_sampling: str = "log_uniform"  # patchpose: scale changes of the scale pairs (PairConfig.scale_sampling)


def build_pose_methods(
    weights: str | None = None,
    extra_weights: dict[str, str] | None = None,
    patch_size: int = 32,
    c4_variant: bool = True,
    device: str = "cpu",
    scale_model: str | None = None,
) -> list[PoseMethod]:
    """ssfeat (bundled or ``weights``), any extra learned models by name, and the hand-made baselines
    (learned models on ``device``). ``scale_model``: also the scale-covariant keypoint pose with these
    scale weights (``ssfeat_keypoint``, :class:`~ssfeat.evaluation.baselines.KeypointPoseOnPatches`)."""
    name = weights or "patchpose"
    methods: list[PoseMethod] = [LearnedPose(PatchPoseEstimator.from_pretrained(name, device), "ssfeat")]
    if scale_model is not None:
        est = PatchPoseEstimator.from_pretrained(name, device, scale_model=scale_model)
        methods.append(KeypointPoseOnPatches(est))
    if c4_variant:  # the same weights: one pass only, and always averaged over 90-degree rotations
        methods.append(LearnedPose(PatchPoseEstimator.from_pretrained(name, device, c4=False), "ssfeat_single"))
        methods.append(LearnedPose(PatchPoseEstimator.from_pretrained(name, device, c4=True), "ssfeat_c4"))
    methods += [KorniaGradientOrientation(patch_size), LoGScale(patch_size)]
    taken = {m.name for m in methods}
    for name, path in (extra_weights or {}).items():
        if not name or name in taken:
            raise ValueError(f"extra model name {name!r} is empty or taken (taken: {', '.join(sorted(taken))})")
        methods.insert(-2, LearnedPose(PatchPoseEstimator.from_pretrained(path, device), name))
    return methods


def _predict(method: PoseMethod, patches: torch.Tensor, k: int, chunk: int = 1024) -> dict[str, torch.Tensor]:
    outs = [method(patches[i : i + chunk], k) for i in range(0, len(patches), chunk)]
    return {key: torch.cat([o[key] for o in outs]) for key in outs[0]} if outs else {}


def predict_pairs(method: PoseMethod, ori_pairs: dict, scale_pairs: dict) -> dict:
    """Top-k candidates ``(cand0, cand1)`` of shape ``(B, k)`` for both views of each pair:
    ``{"orientation": ...}`` on ``ori_pairs`` and ``{"log2_scale": ...}`` on ``scale_pairs``, for what
    the method predicts. Patches shared by both pair sets are run once."""
    k = max(kk for kk in TOPK if kk <= method.max_k)
    cache: dict[int, dict] = {}
    out = {}
    for key, pairs in (("orientation", ori_pairs), ("log2_scale", scale_pairs)):
        if key not in method.predicts:
            continue
        if id(pairs) not in cache:
            n = len(pairs["patch0"])
            p = _predict(method, torch.cat([pairs["patch0"], pairs["patch1"]]), k)
            cache[id(pairs)] = {kk: (v[:n], v[n:]) for kk, v in p.items()}
        out[key] = cache[id(pairs)][key]
    return out


def score_predictions(preds: dict, rotation: torch.Tensor, log2_scale: torch.Tensor) -> dict:
    """Accuracies and (for several candidates) top-k recall from :func:`predict_pairs` output."""
    o, s = preds.get("orientation"), preds.get("log2_scale")
    res = pose_accuracies(
        o[0][:, 0] if o else None, o[1][:, 0] if o else None, rotation,
        s[0][:, 0] if s else None, s[1][:, 0] if s else None, log2_scale,
    )  # fmt: skip
    k_max = (o or s)[0].shape[1]
    if k_max > 1:
        ks = [k for k in TOPK if k <= k_max]
        rec = {}
        for t in ORI_THRESHOLDS_DEG if o else ():
            rec[f"ori_acc@{t:g}deg"] = [
                topk_recall(o[0][:, :k], o[1][:, :k], rotation, math.radians(t), True) for k in ks
            ]
        for t in SCALE_THRESHOLDS if s else ():
            rec[f"scale_acc@{t:.3f}"] = [topk_recall(s[0][:, :k], s[1][:, :k], log2_scale, t, False) for k in ks]
        res["topk_recall"] = {"k": ks, **rec}
    return res


def interleaved_throughput(methods: list[PoseMethod], patches: dict[str, torch.Tensor], rounds: int = 5) -> dict:
    """Patches per second of each method's single-candidate prediction on its ``patches`` (per
    method name): the best of ``rounds`` interleaved repeats after a warm-up
    (:func:`~ssfeat.evaluation.timing.interleaved_seconds`)."""
    fns = {m.name: functools.partial(_predict, m, patches[m.name], 1) for m in methods}
    seconds = interleaved_seconds(fns, rounds, reduce="best")
    return {m.name: len(patches[m.name]) / max(seconds[m.name], 1e-9) for m in methods}


def score_method(method: PoseMethod, ori_pairs: dict, scale_pairs: dict) -> tuple[dict, dict]:
    """Accuracies and top-k recall of one method; also returns its predictions."""
    preds = predict_pairs(method, ori_pairs, scale_pairs)
    return score_predictions(preds, ori_pairs["rotation"], scale_pairs["log2_scale"]), preds


def score_methods(methods: list[PoseMethod], ori_pairs: dict, scale_pairs: dict) -> tuple[dict, dict]:
    """:func:`score_method` for every method, plus ``patches_per_s`` from
    :func:`interleaved_throughput` on the pairs' patches (orientation pairs for methods that
    predict orientation)."""
    results, preds, patches = {}, {}, {}
    for m in methods:
        results[m.name], preds[m.name] = score_method(m, ori_pairs, scale_pairs)
        pairs = ori_pairs if "orientation" in m.predicts else scale_pairs
        patches[m.name] = torch.cat([pairs["patch0"], pairs["patch1"]])
    for name, v in interleaved_throughput(methods, patches).items():
        results[name]["patches_per_s"] = v
    return results, preds


def paper_protocol(pairs: PairConfig, **changes) -> PairConfig:
    """``pairs`` with the paper's evaluation protocol: patches at detected keypoints (SIFT and
    Harris, no random points), orientation pairs at scale 1, scale pairs at rotation 0, no
    photometric or viewpoint change (``changes``: further fields to replace, e.g. ``max_tilt``)."""
    protocol = {"ref_random_pose": False, "photometric": False, "ori_log2_jitter": 0.0, "n_random": 0, "max_tilt": 1.0}
    return dataclasses.replace(pairs, **{**protocol, **changes})


def run_patchpose(
    images: str | Path,
    methods: list[PoseMethod],
    cfg: PoseBenchmarkConfig | None = None,
    loaded: tuple[list[Path], list[np.ndarray]] | None = None,
) -> dict:
    """Synthetic-pair benchmark on an (image-disjoint) folder of photos.

    ``loaded``: the folder's ``(paths, images)`` as :func:`~ssfeat.data.images.load_textured`
    returned them, when the caller has already read them (the folder is then not read again).
    """
    cfg = cfg or PoseBenchmarkConfig()
    pcfg = paper_protocol(
        PairConfig(patch_size=cfg.patch_size, support=cfg.support, seed=cfg.seed, scale_sampling=cfg.scale_sampling),
        max_tilt=cfg.max_tilt,
    )
    paths, imgs = loaded if loaded is not None else load_textured(images)  # as PairSynthesizer.from_folder
    synth = PairSynthesizer(imgs, pcfg, [str(p) for p in paths])
    ori = synth.batch("ori", range(cfg.n_pairs))
    sca = synth.batch("scale", range(cfg.n_pairs))
    out = meta(
        cfg, "patchpose", images=str(images), n_images=len(synth), n_pairs={"ori": cfg.n_pairs, "scale": cfg.n_pairs}
    )
    out["methods"], preds = score_methods(methods, ori, sca)
    for name, p in preds.items():
        if "log2_scale" in p:
            out["methods"][name]["scale_acc@0.333_by_range"] = scale_accuracy_by_range(
                p["log2_scale"][0][:, 0], p["log2_scale"][1][:, 0], sca["log2_scale"], pcfg.max_log2_scale
            )
    return out


def scale_accuracy_by_range(
    s0: torch.Tensor, s1: torch.Tensor, log2_scale: torch.Tensor, max_log2_scale: float, n: int = 8
) -> dict[str, float]:
    """Scale accuracy at +-1/3 octave per range of the true log2 scale change: ``n`` equal ranges
    over ``[-max, max]`` keyed ``"lo..hi"`` (negative: the second patch shows the content shrunk).
    ``s0, s1, log2_scale``: ``(B,)``."""
    edges = torch.linspace(-max_log2_scale, max_log2_scale, n + 1)
    ok = (s1 - s0 - log2_scale).abs() <= 1 / 3
    out = {}
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        sel = (log2_scale >= lo) & ((log2_scale < hi) | (hi == edges[-1].item()))
        out[f"{lo:g}..{hi:g}"] = float(ok[sel].float().mean() * 100) if sel.any() else float("nan")
    return out


def format_orientation_defined(result: dict) -> str:
    """One line per sequence of a sequence benchmark's ``orientation_defined`` reference."""
    od = result["orientation_defined"]
    cells = lambda r: " / ".join(f"{v:.1f}" for v in r.values())  # noqa: E731
    keys = " / ".join(f"±{k.removesuffix('deg')}°" for k in od["all"])
    lines = [
        f"orientation defined within {keys} under the local affine map (share of image directions turned by the "
        "ground-truth rotation within the threshold; a reference, not a bound):",
        f"  all {cells(od['all'])}; " + ", ".join(f"{k} {cells(v)}" for k, v in od["per_sequence"].items()),
    ]
    return "\n".join(lines)


def format_pose_table(result: dict) -> str:
    """Methods side by side: accuracies (%), top-4 recall where available, and patches/s."""
    cols = ["scale_acc@0.167", "scale_acc@0.333", "ori_acc@5deg", "ori_acc@10deg"]
    head = ["method", "sca±1/6", "sca±1/3", "ori±5°", "ori±10°", "top4 sca±1/3", "top4 ori±10°", "patches/s"]
    rows = [head]
    for name, r in result["methods"].items():
        tk = r.get("topk_recall", {})
        rows.append(
            [name]
            + [f"{r[c]:.1f}" if c in r else "-" for c in cols]
            + [f"{tk[c][-1]:.1f}" if c in tk else "-" for c in ("scale_acc@0.333", "ori_acc@10deg")]
            + [f"{r['patches_per_s']:.0f}"]
        )
    table = render_rows(rows) + "\n(patches/s: the best of 5 interleaved timing rounds)"
    key = "scale_acc@0.333_by_range"
    by_range = {k: r[key] for k, r in result["methods"].items() if key in r}
    if by_range:
        ranges = list(next(iter(by_range.values())))
        rows = [["scale ±1/3 by true log2 scale change", *ranges]]
        rows += [[k, *(f"{v[c]:.1f}" for c in ranges)] for k, v in by_range.items()]
        table += "\n\n" + render_rows(rows)
    return table


C4_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def calibrate_c4_below(
    model,
    synth: PairSynthesizer,
    n_pairs: int = 2000,
    grid: tuple[float, ...] = C4_GRID,
    recover: float = 0.9,
) -> tuple[float, list[dict]]:
    """Choose the adaptive C4 threshold of a PatchPoseNet on held-out orientation pairs.

    The threshold is the smallest of ``grid`` whose orientation accuracy at +-10 degrees on
    ``n_pairs`` pairs of ``synth`` (held-out photos, paper protocol) recovers at least ``recover``
    of the gain of full C4 averaging over a single pass: the knee of the accuracy/cost curve. The
    model is left unchanged; the patches run on its device.

    Returns:
        ``(threshold, rows)``; each row has ``c4_below``, ``ori_acc@10deg`` and ``share_averaged``
        (% of patches that got the four rotations).
    """
    pairs = synth.batch("ori", range(n_pairs))
    x = torch.cat([pairs["patch0"], pairs["patch1"]])
    saved = model.config.c4_symmetric, model.config.c4_below
    model.eval()

    def run(c4: bool) -> torch.Tensor:
        model.set_c4(c4)
        model.set_c4_below(0.0)
        with torch.inference_mode():
            dev = next(model.parameters()).device
            return torch.cat([model(x[i : i + 1024].to(dev))[0].cpu() for i in range(0, len(x), 1024)])

    def acc(logits: torch.Tensor) -> float:
        o = decode_pose(logits, logits.new_zeros(len(logits), model.config.n_scale_bins), model.config)
        o = o["orientation"][:, 0]
        return pose_accuracies(o[:n_pairs], o[n_pairs:], pairs["rotation"], None, None, None)["ori_acc@10deg"]

    try:
        single, full = run(False), run(True)
    finally:
        model.set_c4(saved[0])
        model.set_c4_below(saved[1])
    # adaptive C4 gives an uncertain patch exactly the C4 output and the others the single pass
    # (PatchPoseNet.forward), so every threshold's outputs follow from these two runs
    peak = torch.softmax(single, -1).amax(-1)
    rows = [{"c4_below": 0.0, "ori_acc@10deg": acc(single), "share_averaged": 0.0}]
    for t in grid:
        low = peak < t
        rows.append(
            {
                "c4_below": t,
                "ori_acc@10deg": acc(torch.where(low[:, None], full, single)),
                "share_averaged": float(low.float().mean() * 100),
            }
        )
    rows.append({"c4_below": 1.0, "ori_acc@10deg": acc(full), "share_averaged": 100.0})
    base, best = rows[0]["ori_acc@10deg"], rows[-1]["ori_acc@10deg"]
    target = base + recover * max(best - base, 0.0) - 1e-6
    threshold = next(r["c4_below"] for r in rows if r["ori_acc@10deg"] >= target)
    return threshold, rows
