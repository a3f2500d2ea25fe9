"""File formats shared with hloc: atomic HDF5 writes, pairs files and match files.

* **Pairs file**: one ``"name0 name1"`` line per image pair, names as the image groups of a feature
  file (paths relative to the image folder); hloc's ``pairs_from_*`` scripts write the same.
* **Match file** (hloc's ``match_features`` layout): one group per pair, named by
  :func:`names_to_pair` (``name0/name1`` with any ``/`` inside a name replaced by ``-``), holding
  ``matches0`` ``(N0,)`` int32 (for every feature of image 0, the index of its match in image 1, or
  ``-1``) and ``matching_scores0`` ``(N0,)`` float32 (0 where unmatched). ssfeat also stores the two
  image names as the group's attributes ``name0`` and ``name1`` (hloc ignores attributes), so the
  pairs of a match file can be listed without a pairs file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import h5py
import numpy as np

from ..files import atomic_write, write_text_atomic


def write_h5_atomic(path: Path, fill: Callable[[h5py.File], None], libver: str | None = None) -> None:
    """Create an HDF5 file by ``fill(h5file)`` with :func:`ssfeat.files.atomic_write`: the file at
    ``path`` is always absent or complete (``libver``: as for ``h5py.File``).

    Raises:
        OSError: ``"cannot write PATH: REASON"`` (e.g. a full disk); no temporary file is left.
    """
    with atomic_write(path) as fh, h5py.File(fh, "w", libver=libver) as f:
        fill(f)


def parts_dir(out: Path) -> Path:
    """The folder of the part files an output is assembled from while it is written (``OUT.parts``)."""
    return out.with_name(out.name + ".parts")


def remove_parts(out: Path, parts: list[Path]) -> None:
    """Delete ``parts`` once merged into ``out``, and their folder if nothing else is left in it."""
    for p in parts:
        p.unlink()
    try:
        parts_dir(out).rmdir()
    except OSError:
        pass


def names_to_pair(name0: str, name1: str, separator: str = "/") -> str:
    """hloc's group name of the pair ``(name0, name1)`` in a match file (``separator="_"``: the key of
    hloc's older files)."""
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def pair_keys(name0: str, name1: str) -> list[tuple[str, bool]]:
    """The group names a pair may be stored under, in the order hloc's ``find_pair`` tries them, each
    with whether it holds the pair reversed."""
    orders = ((name0, name1, False), (name1, name0, True))
    return [(names_to_pair(a, b, sep), rev) for sep in ("/", "_") for a, b, rev in orders]


def find_pair(f: h5py.File, name0: str, name1: str) -> tuple[str, bool] | None:
    """``(group name, reversed)`` of the pair in an open match file; ``None`` if absent."""
    for key, rev in pair_keys(name0, name1):
        if key in f and isinstance(f[key], h5py.Group) and "matches0" in f[key]:
            return key, rev
    return None


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """The ``(name0, name1)`` pairs of a pairs file (blank lines and ``#`` comments ignored).

    Raises:
        ValueError: a line without exactly two names.
    """
    pairs = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected 'name0 name1', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def write_pairs(path: str | Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """Write a pairs file atomically (names may not contain white space)."""
    path = Path(path)
    lines = []
    for a, b in pairs:
        if any(c.isspace() for c in a + b):
            raise ValueError(f"image names with white space cannot be written to a pairs file: {a!r}, {b!r}")
        lines.append(f"{a} {b}\n")
    return write_text_atomic(path, "".join(lines))


def write_match_group(f: h5py.File, name0: str, name1: str, matches0: np.ndarray, scores0: np.ndarray) -> None:
    """Add the pair's group (hloc's layout, see the module docstring) to an open match file."""
    g = f.create_group(names_to_pair(name0, name1))
    g.create_dataset("matches0", data=np.asarray(matches0, np.int32))
    g.create_dataset("matching_scores0", data=np.asarray(scores0, np.float32))
    g.attrs["name0"], g.attrs["name1"] = name0, name1


def match_groups(path: str | Path) -> list[tuple[str, str]]:
    """The ``(name0, name1)`` pairs of a match file written by ssfeat (from the groups' attributes)."""
    out = []
    with h5py.File(path, "r") as f:

        def visit(_, obj):
            if isinstance(obj, h5py.Group) and "matches0" in obj and "name0" in obj.attrs:
                out.append((str(obj.attrs["name0"]), str(obj.attrs["name1"])))

        f.visititems(visit)
    return out


def read_matches(path: str | Path, name0: str, name1: str) -> tuple[np.ndarray, np.ndarray]:
    """Matches of a pair as hloc's ``get_matches`` returns them: ``(M, 2)`` int64 index pairs
    (image 0, image 1) and ``(M,)`` scores, whichever order the pair was stored in.

    Raises:
        KeyError: the pair is not in the file.
    """
    with h5py.File(path, "r") as f:
        found = find_pair(f, name0, name1)
        if found is None:
            raise KeyError(f"{path}: no matches for the pair ({name0}, {name1})")
        key, rev = found
        m0 = f[key]["matches0"][()]
        scores = f[key]["matching_scores0"][()] if "matching_scores0" in f[key] else np.ones(len(m0))
    idx = np.flatnonzero(m0 != -1)
    matches = np.stack([idx, m0[idx]], -1).astype(np.int64)
    return (matches[:, ::-1].copy() if rev else matches), np.asarray(scores, np.float32)[idx]


__all__ = [
    "find_pair",
    "match_groups",
    "names_to_pair",
    "pair_keys",
    "read_matches",
    "read_pairs",
    "write_h5_atomic",
    "write_match_group",
    "write_pairs",
]
