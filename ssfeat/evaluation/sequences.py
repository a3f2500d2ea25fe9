"""The ``sequences`` benchmark: patch pose on real image pairs with homographies (keypoint patches
of image 0 and their projections in image 1, the true relative pose from the homography)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..data.images import ImageReadError, read_image
from ..data.sequences import find_sequences
from ..geometry import homography_jacobian, inside_image, linear_rotation_scale, warp_points
from ..inference.pose import detect_sift
from ..patches import extract_patches
from .baselines import PoseMethod
from .metrics import ORI_THRESHOLDS_DEG, orientation_definedness
from .patchpose import PoseBenchmarkConfig, score_methods, score_predictions
from .report import meta

logger = logging.getLogger(__name__)


def sequence_pairs(root: str | Path, cfg: PoseBenchmarkConfig) -> tuple[dict, list[dict]]:
    """Patch pairs from every sequence under ``root``; returns all pairs and per-image-pair info."""
    rng = np.random.default_rng(cfg.seed)
    P, margin = cfg.patch_size, cfg.support / math.sqrt(2) + 2
    A = np.eye(2) * (cfg.support / P)
    p0s, p1s, rots, scales, jacs, info = [], [], [], [], [], []
    for seq in find_sequences(root):
        try:
            img0 = read_image(seq.reference)
        except ImageReadError as e:
            logger.warning("sequence %s skipped: %s", seq.name, e)
            continue
        kps = detect_sift(img0, 2000)
        xy0_all = np.array([k.pt for k in kps], np.float64).reshape(-1, 2)
        for target, H in zip(seq.targets, seq.H):
            try:
                img1 = read_image(target)
            except ImageReadError as e:
                logger.warning("pair %s skipped: %s", target, e)
                continue
            Ht = torch.from_numpy(H)
            xy1_all = warp_points(torch.from_numpy(xy0_all), Ht).numpy()
            ok = inside_image(xy0_all, img0.shape, margin) & inside_image(xy1_all, img1.shape, margin)
            idx = np.flatnonzero(ok)
            if len(idx) > cfg.max_keypoints:
                idx = np.sort(rng.choice(idx, cfg.max_keypoints, replace=False))
            if len(idx) == 0:
                logger.warning("%s -> %s: no keypoint visible in both images, skipped", seq.reference, target)
                continue
            J = homography_jacobian(torch.from_numpy(xy0_all[idx]), Ht)
            rot, lsc = linear_rotation_scale(J)
            p0s.append(extract_patches(img0, xy0_all[idx], A, P))
            p1s.append(extract_patches(img1, xy1_all[idx], A, P))
            rots.append(rot.float())
            scales.append(lsc.float())
            jacs.append(J.float())
            info.append({"sequence": seq.name, "layout": seq.layout, "target": target.name, "n": len(idx)})
    if not info:
        raise ValueError(f"no usable sequences (Oxford, HPatches or EVD layout) under {root}")
    pairs = {
        "patch0": torch.from_numpy(np.concatenate(p0s))[:, None],
        "patch1": torch.from_numpy(np.concatenate(p1s))[:, None],
        "rotation": torch.cat(rots),
        "log2_scale": torch.cat(scales),
        "jacobian": torch.cat(jacs),  # (N, 2, 2) local affine map of the homography at each keypoint
    }
    return pairs, info


def run_sequences(root: str | Path, methods: list[PoseMethod], cfg: PoseBenchmarkConfig | None = None) -> dict:
    """Real-pair benchmark: overall and per sequence, every method on the same patches."""
    cfg = cfg or PoseBenchmarkConfig()
    pairs, info = sequence_pairs(root, cfg)
    out = meta(cfg, "sequences", root=str(root), n_pairs=len(pairs["rotation"]), image_pairs=info)
    out["methods"], preds = score_methods(methods, pairs, pairs)
    spans: dict[str, list[torch.Tensor]] = {}
    start = 0
    for it in info:
        spans.setdefault(it["sequence"], []).append(torch.arange(start, start + it["n"]))
        start += it["n"]
    seq_idx = {name: torch.cat(parts) for name, parts in spans.items()}
    per_seq: dict[str, dict] = {}
    for name, idx in seq_idx.items():
        per_seq[name] = {
            m.name: score_predictions(
                {k: (c0[idx], c1[idx]) for k, (c0, c1) in preds[m.name].items()},
                pairs["rotation"][idx],
                pairs["log2_scale"][idx],
            )
            for m in methods
        }
    out["per_sequence"] = per_seq
    # reference for orientation on oblique views (metrics.orientation_definedness), in %
    defined = {t: orientation_definedness(pairs["jacobian"], math.radians(t)) for t in ORI_THRESHOLDS_DEG}
    out["orientation_defined"] = {
        "all": {f"{t:g}deg": round(100 * float(d.nanmean()), 2) for t, d in defined.items()},
        "per_sequence": {
            name: {f"{t:g}deg": round(100 * float(d[idx].nanmean()), 2) for t, d in defined.items()}
            for name, idx in seq_idx.items()
        },
    }
    return out


__all__ = ["run_sequences", "sequence_pairs"]
