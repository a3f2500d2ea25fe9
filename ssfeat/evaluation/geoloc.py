"""Visual-geolocalization benchmark: retrieval recall@N on a dataset in the standard layout.

Protocol (GeoWarp / pitts30k): global descriptors of every gallery and query image, top-20
retrieval, and a query counts at N if one of its first N predictions lies within 25 m (recall@1, 5,
10, 20). Re-ranking by the warping regressor (issue 6) is not implemented yet; this module reports
plain retrieval, the baseline that re-ranking will be compared against.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..data.geoloc import load_geoloc_split
from ..retrieval import GlobalDescriptor, recall_at, retrieve
from .benchmarks import BenchmarkConfig, _meta, render_rows

RECALL_NS = (1, 5, 10, 20)


def run_geoloc(
    root: str | Path, split: str = "test", weights: str = "descriptor", radius: float = 25.0, progress: bool = True
) -> dict:
    """Retrieval recall@1/5/10/20 of GeM global descriptors (frozen ssfeat descriptor network
    ``weights``) on ``root``'s ``split``."""
    from ..hub import load_descriptor

    data = load_geoloc_split(root, split)
    desc = GlobalDescriptor(load_descriptor(weights))
    t0 = time.perf_counter()
    db = desc.describe_paths(data.gallery, progress)
    q = desc.describe_paths(data.queries, progress)
    seconds = time.perf_counter() - t0
    idx, sim = retrieve(db, q, max(RECALL_NS))
    positives = data.positives(radius)
    out = _meta(BenchmarkConfig(), "geoloc", root=str(root), split=split, weights=str(weights), radius_m=radius)
    out.update(
        n_gallery=len(data.gallery),
        n_queries=len(data.queries),
        queries_without_positive=int(sum(len(p) == 0 for p in positives)),
        images_per_s=round((len(data.gallery) + len(data.queries)) / seconds, 2),
        methods={"retrieval (GeM, ssfeat descriptor)": recall_at(idx, positives, RECALL_NS)},
        predictions=[
            {"query": data.queries[i].name, "top": [data.gallery[j].name for j in idx[i, :5]]}
            for i in range(len(data.queries))
        ],
    )
    return out


def format_geoloc_table(result: dict) -> str:
    rows = [["method"] + [f"R@{n}" for n in RECALL_NS]]
    for name, r in result["methods"].items():
        rows.append([name] + [f"{r[f'R@{n}']:.1f}" for n in RECALL_NS])
    return render_rows(rows)
