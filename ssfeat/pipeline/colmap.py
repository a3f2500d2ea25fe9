"""Import features and matches into a COLMAP database and verify them two-view by two-view, with
pycolmap (an optional dependency: ``pip install "ssfeat[colmap]"``).

The steps are hloc's (``reconstruction.py`` / ``triangulation.py``): add the images (one camera per
image unless they share size and EXIF), write each image's keypoints (shifted by half a pixel: in
COLMAP the top-left pixel corner is the origin, in ssfeat and hloc its centre), write the matches of
every pair, then run COLMAP's geometric verification, which fits essential / fundamental /
homography models with RANSAC and stores each pair's inlier matches and configuration. The
database is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .extract import read_features
from .h5io import match_groups, read_matches, read_pairs, write_pairs
from .pairs import unique_pairs

logger = logging.getLogger(__name__)


@dataclass
class ColmapConfig:
    max_error: float = 4.0  # RANSAC inlier threshold of the two-view models (px)
    min_num_inliers: int = 15  # fewer verified matches: the pair is not kept
    max_num_trials: int = 20000  # RANSAC iterations at most (hloc's setting)
    min_inlier_ratio: float = 0.1  # RANSAC's lowest expected inlier ratio (hloc's setting)

    def __post_init__(self) -> None:
        if not self.max_error > 0 or self.min_num_inliers < 1 or self.max_num_trials < 1:
            raise ValueError("max_error must be > 0, min_num_inliers and max_num_trials >= 1")
        if not 0 < self.min_inlier_ratio <= 1:
            raise ValueError(f"min_inlier_ratio must lie in (0, 1], got {self.min_inlier_ratio}")


def require_pycolmap():
    """The ``pycolmap`` module, or a one-line error saying how to install it."""
    try:
        import pycolmap
    except ImportError as e:
        raise RuntimeError('this needs pycolmap: pip install "ssfeat[colmap]" (or pip install pycolmap)') from e
    if not hasattr(pycolmap, "Database") or not hasattr(pycolmap.Database, "open"):
        raise RuntimeError(f"pycolmap {pycolmap.__version__} is too old: pip install -U pycolmap")
    return pycolmap


def _options(pycolmap, cfg: ColmapConfig):
    opts = pycolmap.TwoViewGeometryOptions()
    opts.min_num_inliers = cfg.min_num_inliers
    opts.ransac.max_error = cfg.max_error
    opts.ransac.max_num_trials = cfg.max_num_trials
    opts.ransac.min_inlier_ratio = cfg.min_inlier_ratio
    if hasattr(opts.ransac, "random_seed"):
        opts.ransac.random_seed = 0  # the same database from the same input
    return opts


def _fill(pycolmap, db_path: Path, images: Path, features: Path, matches: Path, pairs) -> dict[str, int]:
    """Images, keypoints and raw matches into a new database; returns image ids by name."""
    names = sorted({n for p in pairs for n in p})
    with pycolmap.Database.open(db_path):
        pass  # import_images needs the database file
    pycolmap.import_images(db_path, images, pycolmap.CameraMode.AUTO, image_names=names)
    with pycolmap.Database.open(db_path) as db:
        ids = {im.name: im.image_id for im in db.read_all_images()}
        lost = [n for n in names if n not in ids]
        if lost:
            raise ValueError(f"COLMAP could not read {len(lost)} image(s) under {images}, e.g. {lost[0]!r}")
        for n in names:
            kp = read_features(features, n).keypoints.astype(np.float64) + 0.5  # COLMAP's origin
            db.write_keypoints(ids[n], kp.astype(np.float32))
        for a, b in pairs:
            m, _ = read_matches(matches, a, b)
            db.write_matches(ids[a], ids[b], m.astype(np.uint32))
    return ids


def import_colmap(
    images: str | Path,
    features: str | Path,
    matches: str | Path,
    database: str | Path,
    pairs: str | Path | None = None,
    cfg: ColmapConfig | None = None,
) -> dict:
    """Build the COLMAP database ``database`` from a feature file and a match file (hloc layouts)
    and verify every pair (see the module docstring).

    Args:
        images: the image folder the features were extracted from (names relative to it).
        pairs: pairs file of the pairs to import (default: every pair of the match file).

    Returns:
        ``n_images``, ``n_pairs``, ``n_verified`` (pairs COLMAP kept) and ``inliers``, a dict
        ``"name0 name1" -> verified matches`` for every pair.

    Raises:
        ValueError: ``database`` exists, a pair is missing from the match file, an image is missing.
        RuntimeError: pycolmap is not installed.
    """
    pycolmap = require_pycolmap()
    cfg = cfg or ColmapConfig()
    images, database = Path(images), Path(database)
    if database.exists():
        raise ValueError(f"{database} exists; remove it or choose another database")
    if not images.is_dir():
        raise ValueError(f"{images} is not an image folder")
    pair_list = unique_pairs(read_pairs(pairs) if pairs is not None else match_groups(matches))
    if not pair_list:
        where = pairs if pairs is not None else f"{matches} (a match file hloc wrote needs the pairs file)"
        raise ValueError(f"no pairs to import from {where}")
    missing = [n for n in sorted({n for p in pair_list for n in p}) if not (images / n).is_file()]
    if missing:
        raise ValueError(f"{images / missing[0]} is missing (an image of the pairs)")
    tmp = database.with_name(f".{database.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    quiet = not logger.isEnabledFor(logging.INFO)
    level = pycolmap.logging.minloglevel
    if quiet:
        pycolmap.logging.minloglevel = 1  # COLMAP's progress lines only with ssfeat -v
    try:
        ids = _fill(pycolmap, tmp, images, Path(features), Path(matches), pair_list)
        with tempfile.TemporaryDirectory() as d:
            pycolmap.verify_matches(tmp, write_pairs(Path(d) / "pairs.txt", pair_list), _options(pycolmap, cfg))
        inliers = {}
        with pycolmap.Database.open(tmp) as db:
            for a, b in pair_list:
                tvg = db.read_two_view_geometry(ids[a], ids[b]) if db.exists_two_view_geometry(ids[a], ids[b]) else None
                inliers[f"{a} {b}"] = 0 if tvg is None else len(tvg.inlier_matches)
        os.replace(tmp, database)
    finally:
        pycolmap.logging.minloglevel = level
        tmp.unlink(missing_ok=True)
    n_verified = sum(v > 0 for v in inliers.values())
    return {"n_images": len(ids), "n_pairs": len(pair_list), "n_verified": n_verified, "inliers": inliers}


__all__ = ["ColmapConfig", "import_colmap", "require_pycolmap"]
