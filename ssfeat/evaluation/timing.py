"""Timing for the benchmarks' speed numbers: every method is timed over several rounds, each round
calling every method once in turn (interleaved), after one warm-up call each, so that a load change
on a shared machine (another process, a CPU frequency step, first-call set-up) hits all methods
alike instead of deciding one method's only timing. Every printed time or throughput comes from
:func:`interleaved_seconds`."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

REDUCERS = {"median": np.median, "best": np.min}


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], repeats: int = 5, reduce: str = "median", warmup: bool = True
) -> dict[str, float]:
    """Seconds per call of each of ``fns`` (name -> function of no arguments): ``repeats`` rounds
    that call every function once in turn, after one untimed warm-up call each (``warmup``);
    per function the median (``reduce="median"``) or the fastest (``"best"``) of its ``repeats``
    times.

    Raises:
        ValueError: ``repeats < 1`` or an unknown ``reduce``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if reduce not in REDUCERS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCERS)}, got {reduce!r}")
    if warmup:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(REDUCERS[reduce](v)) for k, v in times.items()}


__all__ = ["REDUCERS", "interleaved_seconds"]
