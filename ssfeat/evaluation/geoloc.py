"""Visual-geolocalization benchmark: retrieval recall@N with and without GeoWarp re-ranking.

Protocol (GeoWarp / pitts30k): global descriptors of every gallery and query image, top-20
retrieval, and a query counts at N if one of its first N predictions lies within 25 m (recall@1,
5, 10, 20). Re-ranking re-orders the first ``rerank_n`` candidates of each query by the mean cosine
similarity of the frozen local features after warping both images onto their predicted shared
region (:class:`~ssfeat.inference.retrieval.WarpReranker`); the same re-ranking without the warp is reported
as an ablation, all in one run.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.geoloc import load_geoloc_split
from ..inference.pose import check_device
from ..inference.retrieval import GlobalDescriptor, WarpReranker, recall_at, retrieve
from ..models.weights import load_descriptor_model, load_warp_model
from .patchpose import PoseBenchmarkConfig
from .report import meta, render_rows

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
    device: str = "cpu",
) -> dict:
    """Recall@1/5/10/20 on ``root``'s ``split`` of GeM retrieval (frozen ssfeat descriptor network
    ``weights``) and, unless ``warp_weights`` is ``None``, of the same list re-ranked (top
    ``rerank_n``) by the warping regressor ``warp_weights``, with and without the warp (``flips``:
    the regressor averaged over flipped inputs)."""
    if rerank_n < 1:
        raise ValueError(f"rerank_n must be >= 1, got {rerank_n}")
    data = load_geoloc_split(root, split)
    dev = check_device(device)
    net = load_warp_model(warp_weights).to(dev) if warp_weights is not None else None
    desc = GlobalDescriptor(load_descriptor_model(weights).to(dev))
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
    out = meta(
        PoseBenchmarkConfig(),
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
