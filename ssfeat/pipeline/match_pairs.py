"""Match the image pairs of a pairs file into a match file in hloc's layout: resumable, kill-safe.

The features come from a feature file (``ssfeat extract``, either layout, or one hloc wrote); the
matcher and filters are those of a named pipeline (:func:`~ssfeat.pipeline.matching_stages`), with
the orientation-consistency filter and a RANSAC homography as options. The output layout is
described in :mod:`ssfeat.pipeline.h5io`; ``matching_scores0`` is ``1 / (1 + d)`` for a match at
descriptor distance ``d``.

Safety as for extraction: matched pairs are written ``part_size`` at a time in part files
(``MATCHES.h5.parts/part-{n}.h5``, each renamed when complete); a killed run loses at most the part
being written, and running the same command again skips every pair already in ``MATCHES.h5`` or in
a complete part (in either order, under either of hloc's key forms). At the end the output and
the parts are merged into a temporary file that atomically replaces ``MATCHES.h5``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..features import Features
from ..files import OutputLock, remove_stale_temps
from ..version import __version__
from .build import matching_stages
from .extract import read_features
from .h5io import pair_keys, parts_dir, read_pairs, remove_parts, write_h5_atomic, write_match_group
from .matchers import OrientationFilter
from .pairs import feature_names, unique_pairs

logger = logging.getLogger(__name__)


@dataclass
class MatchPairsConfig:
    pipeline: str = ""  # matcher and filters of this named pipeline ("": the features' own, else "ssfeat")
    orientation_filter: bool = False  # keep matches whose relative orientation agrees with the dominant one
    ransac: bool = False  # keep the inliers of a RANSAC homography (planar scenes, pure rotations)
    part_size: int = 256  # pairs per part file

    def __post_init__(self) -> None:
        if self.part_size < 1:
            raise ValueError("part_size must be >= 1")


def _settings(cfg: MatchPairsConfig, pipeline: str) -> dict:
    return {"pipeline": pipeline, "orientation_filter": cfg.orientation_filter, "ransac": cfg.ransac}


def _pipeline_of(features: Path, cfg: MatchPairsConfig) -> str:
    if cfg.pipeline:
        return cfg.pipeline
    with h5py.File(features, "r") as f:
        name = f.attrs.get("pipeline", "ssfeat")
    return name.decode() if isinstance(name, bytes) else str(name)


def _stored(path: Path, want: dict | None = None) -> set[str]:
    """Group names of the pairs in a match or part file (checking its settings against ``want``)."""
    keys: set[str] = set()
    with h5py.File(path, "r") as f:
        if want is not None:
            have = {k: f.attrs[k].item() if hasattr(f.attrs[k], "item") else f.attrs[k] for k in want if k in f.attrs}
            have = {k: v.decode() if isinstance(v, bytes) else v for k, v in have.items()}
            diff = [f"{k}={have[k]!r} (now {want[k]!r})" for k in have if have[k] != want[k]]
            if diff:
                raise ValueError(f"{path} was matched with {', '.join(diff)}; use the same settings or another output")

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "matches0" in obj:
                keys.add(name)

        f.visititems(visit)
    return keys


def _done(out: Path, want: dict) -> set[str]:
    """Pair group names already in ``out`` and its complete parts (temporary files of a killed run removed)."""
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the .h5 file to write")
    remove_stale_temps(parts_dir(out))
    remove_stale_temps(out.parent, out.name)
    done: set[str] = set()
    if out.exists():
        try:
            done |= _stored(out, want)
        except OSError as e:
            raise ValueError(f"{out} exists and is not an HDF5 match file; choose another output") from e
    for p in sorted(parts_dir(out).glob("part-*.h5")):
        done |= _stored(p, want)
    return done


def _match_one(matcher, filters, f0: Features, f1: Features) -> tuple[np.ndarray, np.ndarray]:
    m = matcher(f0, f1)
    for flt in filters:
        m = flt(f0, f1, m)
    matches0 = np.full(len(f0), -1, np.int32)
    scores0 = np.zeros(len(f0), np.float32)
    matches0[m.idx[:, 0]] = m.idx[:, 1]
    scores0[m.idx[:, 0]] = 1.0 / (1.0 + np.asarray(m.distances, np.float32))
    return matches0, scores0


def _merge(out: Path, want: dict) -> None:
    parts = sorted(parts_dir(out).glob("part-*.h5"))
    sources = ([out] if out.is_file() else []) + parts

    def fill(f):
        for src_path in sources:
            with h5py.File(src_path, "r") as src:
                for key in sorted(_stored(src_path)):
                    if key not in f:
                        if "/" in key:
                            f.require_group(key.rsplit("/", 1)[0])
                        src.copy(src[key], f, name=key)
        f.attrs.update(want)
        f.attrs["ssfeat_version"] = __version__

    write_h5_atomic(out, fill)
    remove_parts(out, parts)


def _feature_cache(features: Path, size: int = 64):
    cache: OrderedDict[str, Features] = OrderedDict()

    def get(name: str) -> Features:
        if name in cache:
            cache.move_to_end(name)
        else:
            cache[name] = read_features(features, name)
            if len(cache) > size:
                cache.popitem(last=False)
        return cache[name]

    return get


def match_pairs(
    features: str | Path, pairs: str | Path, out: str | Path, cfg: MatchPairsConfig | None = None, progress=False
) -> dict:
    """Match every pair of the pairs file ``pairs`` with the features of ``features`` into ``out``
    (hloc's match layout; see the module docstring). Returns ``n_pairs`` (unique pairs of the file),
    ``n_new`` (matched by this call), ``seconds``, ``mean_matches`` (over the new pairs).

    Raises:
        ValueError: a pair names an image without features, or ``out`` holds other settings.
        OutputLockedError: another process is writing ``out`` (``.OUT.lock`` next to it).
    """
    lock = OutputLock(out)
    try:
        return _match_pairs(Path(features), pairs, Path(out), cfg or MatchPairsConfig(), progress, lock)
    finally:
        lock.release()


def _match_pairs(features: Path, pairs, out: Path, cfg: MatchPairsConfig, progress, lock: OutputLock) -> dict:
    names = set(feature_names(features))
    todo_all = unique_pairs(read_pairs(pairs))
    missing = sorted({n for p in todo_all for n in p} - names)
    if missing:
        raise ValueError(f"{pairs} names {len(missing)} image(s) without features in {features}, e.g. {missing[0]!r}")
    pipeline = _pipeline_of(features, cfg)
    matcher, filters = matching_stages(pipeline, cfg.ransac)
    if cfg.orientation_filter and not pipeline.endswith("*"):
        filters.insert(0, OrientationFilter())
    want = _settings(cfg, pipeline)
    done = _done(out, want)
    todo = [p for p in todo_all if not any(k in done for k, _ in pair_keys(*p))]
    lock.acquire()
    parts_dir(out).mkdir(parents=True, exist_ok=True)
    seq = len(list(parts_dir(out).glob("part-*.h5")))
    get = _feature_cache(features)
    t0, n_matches, pending = time.perf_counter(), [], []
    it = todo
    if progress:
        from tqdm import tqdm

        it = tqdm(todo, desc="match", unit="pair", dynamic_ncols=True)

    def flush():
        nonlocal seq, pending
        batch = pending

        def fill(f):
            for a, b, m0, s0 in batch:
                write_match_group(f, a, b, m0, s0)
            f.attrs.update(want)

        write_h5_atomic(parts_dir(out) / f"part-{seq:06d}.h5", fill)
        seq, pending = seq + 1, []

    for a, b in it:
        m0, s0 = _match_one(matcher, filters, get(a), get(b))
        n_matches.append(int((m0 >= 0).sum()))
        pending.append((a, b, m0, s0))
        if len(pending) >= cfg.part_size:
            flush()
    if pending:
        flush()
    _merge(out, want)
    seconds = time.perf_counter() - t0
    mean = round(float(np.mean(n_matches)), 1) if n_matches else None
    return {"n_pairs": len(todo_all), "n_new": len(todo), "seconds": round(seconds, 3), "mean_matches": mean}


__all__ = ["MatchPairsConfig", "match_pairs"]
