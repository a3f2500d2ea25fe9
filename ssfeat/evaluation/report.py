"""Benchmark reports: the JSON head (:func:`meta`), strict JSON files and aligned text tables."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import cv2
import kornia
import torch

from ..files import write_text_atomic
from ..version import __version__


def meta(cfg, name: str, **extra) -> dict:
    """The head of a benchmark's JSON: its name, settings (a dataclass), library versions and threads."""

    return {
        "benchmark": name,
        "config": dataclasses.asdict(cfg),
        "versions": {
            "ssfeat": __version__,
            "torch": torch.__version__,
            "kornia": kornia.__version__,
            "opencv": cv2.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def render_rows(rows: list[list[str]]) -> str:
    """Aligned plain-text table: the first row is the header, the first column left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def json_safe(obj):
    """``obj`` with NaN / Inf floats as ``None`` (strict JSON: e.g. an empty range's accuracy, a pair
    without a homography)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(result: dict, path: str | Path) -> Path:
    """Write a benchmark result as strict JSON (NaN and Inf become ``null``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(json_safe(result), indent=2, allow_nan=False))


def format_grouped_table(result: dict, group: str, head: list[str], row) -> str:
    """Text tables of per-pipeline summaries (``result["pipelines"]``), one block for all pairs or
    one per key of ``group``; ``row(name, summary)`` gives a row's cells under ``head``."""
    first = next(iter(result["pipelines"].values()))
    keys = [("all", None)] if group == "all" else [(group, k) for k in first[group]]
    blocks = []
    for g, k in keys:
        rows = [head]
        for name, s in result["pipelines"].items():
            r = s[g] if k is None else s[g].get(k)
            if r is not None:
                rows.append(row(name, r))
        n = first[g]["pairs"] if k is None else first[g][k]["pairs"]
        blocks.append(f"{'all pairs' if k is None else f'{g} {k}'} ({n} pairs)\n" + render_rows(rows))
    return "\n\n".join(blocks)


def distinct_groups(result: dict, groups: tuple[str, ...] = ("all", "dataset", "category")) -> list[str]:
    """The ``groups`` whose tables say something new: a grouping whose blocks repeat those of an
    earlier one (one dataset, or one category, holding every pair: the same numbers as "all") is
    left out. Compares the per-pipeline summaries of ``result["pipelines"]``, labels aside."""
    pipes = result["pipelines"]

    def blocks(g: str) -> list[str]:
        keys = [None] if g == "all" else list(next(iter(pipes.values()))[g])
        per_key = [[s[g] if k is None else s[g].get(k) for s in pipes.values()] for k in keys]
        return sorted(json.dumps(json_safe(b), sort_keys=True) for b in per_key)

    kept: list[str] = []
    seen: list[list[str]] = []
    for g in groups:
        b = blocks(g)
        if b not in seen:
            kept.append(g)
            seen.append(b)
    return kept


__all__ = ["distinct_groups", "format_grouped_table", "json_safe", "meta", "render_rows", "write_json"]
