"""Visual-geolocalization benchmark: retrieval recall@N with and without GeoWarp re-ranking, and
the warping regressor's corner accuracy on held-out synthetic pairs.

Protocol (GeoWarp / pitts30k): global descriptors of every gallery and query image, top-20
retrieval, and a query counts at N if one of its first N predictions lies within 25 m (recall@1,
5, 10, 20). Re-ranking re-orders the first ``rerank_n`` candidates of each query by the mean cosine
similarity of the frozen local features after warping both images onto their predicted shared
region (:class:`~ssfeat.retrieval.WarpReranker`); the same re-ranking without the warp is reported
as an ablation, all in one run.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.geoloc import load_geoloc_split
from ..retrieval import GlobalDescriptor, WarpReranker, recall_at, retrieve
from .benchmarks import BenchmarkConfig, _meta, render_rows

RECALL_NS = (1, 5, 10, 20)
PLAIN = "retrieval (GeM, ssfeat descriptor)"


def run_geoloc(
    root: str | Path,
    split: str = "test",
    weights: str = "descriptor",
    warp_weights: str | None = "warp",
    rerank_n: int = 5,
    radius: float = 25.0,
    progress: bool = True,
    flips: bool = False,
) -> dict:
    """Recall@1/5/10/20 on ``root``'s ``split`` of GeM retrieval (frozen ssfeat descriptor network
    ``weights``) and, unless ``warp_weights`` is ``None``, of the same list re-ranked (top
    ``rerank_n``) by the warping regressor ``warp_weights``, with and without the warp (``flips``:
    the regressor averaged over flipped inputs)."""
    from ..hub import load_descriptor, load_warp

    if rerank_n < 1:
        raise ValueError(f"rerank_n must be >= 1, got {rerank_n}")
    data = load_geoloc_split(root, split)
    net = load_warp(warp_weights) if warp_weights is not None else None
    desc = GlobalDescriptor(load_descriptor(weights))
    t0 = time.perf_counter()
    db = desc.describe_paths(data.gallery, progress)
    q = desc.describe_paths(data.queries, progress)
    seconds = time.perf_counter() - t0
    idx, _ = retrieve(db, q, max(RECALL_NS))
    positives = data.positives(radius)
    methods = {PLAIN: recall_at(idx, positives, RECALL_NS)}
    timing = {"global_images_per_s": round((len(data.gallery) + len(data.queries)) / seconds, 2)}
    ranked = {PLAIN: idx}
    if net is not None:
        variants = {
            f"+ re-rank top-{rerank_n}, warped (GeoWarp)": True,
            f"+ re-rank top-{rerank_n}, no warp (ablation)": False,
        }
        for name, warp in variants.items():
            t0 = time.perf_counter()
            rr = WarpReranker(net, warp=warp, flips=flips)
            ranked[name] = rr.rerank(data.queries, data.gallery, idx, rerank_n, progress)
            timing[f"{name}: ms_per_query"] = round(1000 * (time.perf_counter() - t0) / max(1, len(data.queries)), 1)
            methods[name] = recall_at(ranked[name], positives, RECALL_NS)
    out = _meta(
        BenchmarkConfig(),
        "geoloc",
        root=str(root),
        split=split,
        weights=str(weights),
        warp_weights=None if warp_weights is None else str(warp_weights),
        rerank_n=rerank_n,
        flips=flips,
        radius_m=radius,
    )
    out.update(
        n_gallery=len(data.gallery),
        n_queries=len(data.queries),
        queries_without_positive=int(sum(len(p) == 0 for p in positives)),
        timing=timing,
        methods=methods,
        predictions=[
            {"query": data.queries[i].name, **{m: [data.gallery[j].name for j in r[i, :5]] for m, r in ranked.items()}}
            for i in range(len(data.queries))
        ],
    )
    return out


def format_geoloc_table(result: dict) -> str:
    rows = [["method"] + [f"R@{n}" for n in RECALL_NS]]
    for name, r in result["methods"].items():
        rows.append([name] + [f"{r[f'R@{n}']:.1f}" for n in RECALL_NS])
    return render_rows(rows)


def run_warp_pairs(
    images: str | Path, warp_weights: str = "warp", n_pairs: int = 512, k: float | None = None, seed: int = 1234
) -> dict:
    """Corner accuracy of the warping regressor on ``n_pairs`` self-supervised trapezoid pairs
    synthesised from the photos in ``images`` (use photos it was not trained on), prediction
    averaged over both input orders, and also over flipped inputs. Reports the metrics of
    :func:`~ssfeat.training.corner_metrics` next to the untrained baseline (predict the whole
    frames) in one run."""
    import dataclasses

    import torch

    from ..data.images import load_textured
    from ..data.warp_pairs import WarpPairConfig, WarpPairSynthesizer
    from ..hub import load_warp
    from ..models.warp import FRAME
    from ..training import corner_metrics

    net = load_warp(warp_weights)
    cfg = WarpPairConfig(size=net.config.size, seed=seed, k=net_k(warp_weights) if k is None else k)
    # unreadable, tiny and blank files are reported and skipped
    paths, imgs = load_textured(images, min_size=16, as_uint8=False)
    batch = WarpPairSynthesizer(imgs, cfg).batch(range(n_pairs))
    methods, speed = {}, {}
    for name, flips in (("ssfeat WarpNet", False), ("ssfeat WarpNet, flip-averaged", True)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            a, b = batch["image_a"], batch["image_b"]
            preds = [net.shared_region(a[i : i + 64], b[i : i + 64], flips) for i in range(0, n_pairs, 64)]
        speed[name] = round(n_pairs / (time.perf_counter() - t0), 1)
        pa, pb = torch.cat([p[0] for p in preds]), torch.cat([p[1] for p in preds])
        methods[name] = corner_metrics(pa, pb, batch["t_a"], batch["t_b"])
    frame = FRAME.expand_as(pa)
    methods["whole frames (no regression)"] = corner_metrics(frame, frame, batch["t_a"], batch["t_b"])
    out = _meta(BenchmarkConfig(), "warp", images=str(images), warp_weights=str(warp_weights), n_images=len(paths))
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
        from ..hub import checkpoint_file
        from ..training import load_checkpoint

        return float(load_checkpoint(checkpoint_file(p))["config"]["pairs"]["k"])
    from ..data.warp_pairs import WarpPairConfig

    return WarpPairConfig.k


def format_warp_table(result: dict) -> str:
    rows = [["method", "corner err", "all 8 <= 0.1 (%)", "mean <= 0.1 (%)"]]
    for name, m in result["methods"].items():
        rows.append([name, f"{m['corner_err']:.3f}", f"{m['within_0.1']:.1f}", f"{m['mean_within_0.1']:.1f}"])
    return render_rows(rows)
