"""Field checks shared by the data-synthesis configs (clear errors when a config is built)."""

from __future__ import annotations

import math


def check_fields(cfg, non_negative: tuple[str, ...] = (), positive: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` unless each named field of the dataclass ``cfg`` is a finite number,
    ``>= 0`` for ``non_negative`` and ``> 0`` for ``positive``."""
    for names, ok, kind in ((non_negative, lambda v: v >= 0, "non-negative"), (positive, lambda v: v > 0, "positive")):
        for name in names:
            v = getattr(cfg, name)
            if not (math.isfinite(v) and ok(v)):
                raise ValueError(f"{name} must be a finite {kind} number, got {v}")


def check_size(size: int, lo: int, hi: int = 2048) -> None:
    """Raise ``ValueError`` unless the view side ``size`` (pixels) lies in ``[lo, hi]``."""
    if not lo <= size <= hi:
        raise ValueError(f"size must be between {lo} and {hi} px, got {size}")
