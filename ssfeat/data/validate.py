"""Field checks shared by the data-synthesis configs (clear errors when a config is built)."""

from __future__ import annotations

import math


def check_fields(
    cfg,
    non_negative: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    fractions: tuple[str, ...] = (),
    maxima: dict[str, float] | None = None,
) -> None:
    """Raise ``ValueError`` unless each named field of the dataclass ``cfg`` is a finite number,
    ``>= 0`` for ``non_negative``, ``> 0`` for ``positive``, in ``[0, 1]`` for ``fractions`` and at
    most ``maxima[name]`` (ranges beyond which synthesis would make absurd, huge or endless work)."""
    for names, ok, kind in ((non_negative, lambda v: v >= 0, "non-negative"), (positive, lambda v: v > 0, "positive")):
        for name in names:
            v = getattr(cfg, name)
            if not (math.isfinite(v) and ok(v)):
                raise ValueError(f"{name} must be a finite {kind} number, got {v}")
    for name in fractions:
        v = getattr(cfg, name)
        if not 0.0 <= v <= 1.0:  # also refuses NaN
            raise ValueError(f"{name} must lie in [0, 1], got {v}")
    for name, hi in (maxima or {}).items():
        v = getattr(cfg, name)
        if not v <= hi:
            raise ValueError(f"{name} must be at most {hi:g}, got {v}")


def check_size(size: int, lo: int, hi: int = 2048) -> None:
    """Raise ``ValueError`` unless the view side ``size`` (pixels) lies in ``[lo, hi]``."""
    if not lo <= size <= hi:
        raise ValueError(f"size must be between {lo} and {hi} px, got {size}")
