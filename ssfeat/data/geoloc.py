"""Visual-geolocalization datasets (GeoWarp / pitts30k layout) and a synthetic one made from photos.

Layout: ``ROOT/images/{train,val,test}/{gallery,queries}/**/*.jpg``; every file name carries its
position as ``@UTM_east@UTM_north@...@.jpg`` (metres). A gallery image is a *positive* of a query
when it lies within ``radius`` (25 m) of it.

:func:`make_geoloc_dataset` builds such a dataset from ordinary photos, because no public
geolocalization set can be downloaded here. **Its positions are synthetic**: every source photo is
one *place*; places sit on a jittered grid ``place_spacing`` metres apart (so different places are
never positives of each other), and each place gets ``n_gallery`` gallery views and ``n_queries``
query views, each within ``view_radius`` metres of the place (so views of one place are always
positives of each other). A view is the photo seen through a random perspective warp (a random
trapezoid of the photo, as in GeoWarp's self-supervised pairs, with random rotation and zoom),
resized to ``size`` and given an independent photometric change. Places are split into
train/val/test **by photo**.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .images import list_images, photometric_change, read_usable
from .outputs import finish_output, start_output, write_image

SPLITS = ("train", "val", "test")
logger = logging.getLogger(__name__)


def parse_utm(path: str | Path) -> tuple[float, float]:
    """``(east, north)`` in metres from a ``@UTM_east@UTM_north@...@.jpg`` file name.

    Raises:
        ValueError: the name does not follow that pattern.
    """
    name = Path(path).name
    fields = name.split("@")
    try:
        if len(fields) < 4 or fields[0] != "":
            raise ValueError
        east, north = float(fields[1]), float(fields[2])
        if not (math.isfinite(east) and math.isfinite(north)):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{path}: malformed geolocalization file name (expected '@UTM_east@UTM_north@...@.jpg')"
        ) from None
    return east, north


@dataclass
class GeolocSplit:
    """One split of a geolocalization dataset: image paths and ``(N, 2)`` UTM positions (metres)."""

    gallery: list[Path]
    queries: list[Path]
    gallery_utm: np.ndarray
    queries_utm: np.ndarray

    def positives(self, radius: float = 25.0) -> list[np.ndarray]:
        """For every query, the sorted indices of the gallery images within ``radius`` metres."""
        from scipy.spatial import cKDTree

        if len(self.gallery) == 0:
            return [np.zeros(0, np.int64) for _ in self.queries]
        tree = cKDTree(self.gallery_utm)
        return [np.array(sorted(i), np.int64) for i in tree.query_ball_point(self.queries_utm, r=radius)]


def load_geoloc_split(root: str | Path, split: str = "test") -> GeolocSplit:
    """Read ``ROOT/images/SPLIT/{gallery,queries}`` (recursive).

    Raises:
        ValueError: unknown split, missing folders, no images, or a malformed file name.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    base = Path(root) / "images" / split
    out = []
    for kind in ("gallery", "queries"):
        d = base / kind
        if not d.is_dir():
            raise ValueError(f"{d}: missing (expected the layout ROOT/images/{{train,val,test}}/{{gallery,queries}})")
        paths = list_images(d)
        if not paths:
            raise ValueError(f"{d}: no images")
        utm = np.array([parse_utm(p) for p in paths], np.float64).reshape(-1, 2)
        out += [paths, utm]
    return GeolocSplit(out[0], out[2], out[1], out[3])


@dataclass
class GeolocMakeConfig:
    n_gallery: int = 2  # gallery views per place
    n_queries: int = 1  # query views per place
    size: tuple[int, int] = (320, 240)  # (width, height) of every view
    k: float = 0.6  # trapezoid distortion: each corner coordinate shrinks by up to k / 2 of the side
    max_rotation_deg: float = 15.0
    place_spacing: float = 100.0  # metres between neighbouring places (> 2 x 25 m)
    view_radius: float = 10.0  # views lie within this many metres of their place (< 25 m / 2)
    splits: tuple[float, float, float] = (0.5, 0.1, 0.4)  # share of places in train / val / test
    seed: int = 0


def random_view(image: np.ndarray, cfg: GeolocMakeConfig, rng: np.random.Generator) -> np.ndarray:
    """A random perspective view of ``image`` (``(H, W)`` float in ``[0, 1]``): a trapezoid of the
    photo (corners moved inwards by up to ``k / 2`` of the side, independently), rotated by up to
    ``max_rotation_deg``, stretched to ``cfg.size``, with photometric change (gamma, gain, offset,
    noise); returned as uint8."""
    H, W = image.shape
    w, h = cfg.size
    d = rng.uniform(0, cfg.k / 2, 8) * np.array([W, H] * 4)
    quad = np.array([[d[0], d[1]], [W - 1 - d[2], d[3]], [W - 1 - d[4], H - 1 - d[5]], [d[6], H - 1 - d[7]]])
    c = quad.mean(0)
    a = math.radians(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg))
    R = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    quad = (quad - c) @ R.T + c
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    M = cv2.getPerspectiveTransform(quad.astype(np.float32), dst)
    shrink = max((W - d[0] - d[2]) / w, (H - d[1] - d[5]) / h, 1.0)
    src = cv2.GaussianBlur(image, (0, 0), 0.5 * math.sqrt(shrink**2 - 1)) if shrink > 1.0 else image
    v = cv2.warpPerspective(src, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return photometric_change(v, rng)


def _utm_name(east: float, north: float, place: int, tag: str) -> str:
    return f"@{east:.2f}@{north:.2f}@ssfeat-synthetic@place{place:05d}@{tag}@.jpg"


def make_geoloc_dataset(images: str | Path, out: str | Path, cfg: GeolocMakeConfig | None = None) -> dict:
    """Build a synthetic geolocalization dataset from the photos below ``images`` (see the module
    docstring). Unreadable, tiny (under 16 px a side) and blank photos are skipped and listed.
    Returns (and writes to ``OUT/dataset.json``, last) the configuration and per-split counts.
    Every view is written atomically and checked; a run that failed or was killed is completed by
    running it again with the same arguments (:mod:`ssfeat.data.outputs`).

    Raises:
        ValueError: no readable photo, an existing non-empty ``out`` (other than an unfinished run
            with the same settings), or bad split fractions.
        OSError: a view or ``dataset.json`` could not be written (e.g. a full disk).
    """
    cfg = cfg or GeolocMakeConfig()
    out = Path(out)
    if len(cfg.splits) != 3 or min(cfg.splits) < 0 or not math.isclose(sum(cfg.splits), 1.0, abs_tol=1e-6):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {cfg.splits}")
    settings = {"command": "make-geoloc", "source": str(images), "config": asdict(cfg)}
    start_output(out, settings, check_only=True)  # a folder it cannot write: refused before any work
    photos, skipped = [], []
    for p in list_images(images):
        try:
            photos.append((p, read_usable(p)))
        except ValueError as e:  # unreadable (ImageReadError is one), tiny or blank: no place is made of it
            skipped.append(str(e))
    if skipped:
        logger.warning("skipped %d photos: %s", len(skipped), "; ".join(skipped[:5]))
    if not photos:
        raise ValueError(f"no usable photos under {images} (readable, at least 16 px a side, not blank)")
    start_output(out, settings)
    w, h = cfg.size
    small = [str(p) for p, img in photos if img.shape[1] < w / 2 or img.shape[0] < h / 2]
    if small:
        logger.warning(
            "%d photos are smaller than half the %dx%d views: their views are upsampled (blurry), e.g. %s",
            len(small),
            w,
            h,
            ", ".join(small[:3]),
        )
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(photos))
    n_train = int(round(cfg.splits[0] * len(photos)))
    n_val = int(round(cfg.splits[1] * len(photos)))
    split_of = {
        int(i): ("train" if r < n_train else "val" if r < n_train + n_val else "test") for r, i in enumerate(order)
    }
    side = math.ceil(math.sqrt(len(photos)))
    counts = {s: {"places": 0, "gallery": 0, "queries": 0} for s in SPLITS}
    places = []
    for s in SPLITS:
        for kind in ("gallery", "queries"):
            (out / "images" / s / kind).mkdir(parents=True, exist_ok=True)
    for idx, (path, img) in enumerate(photos):
        prng = np.random.default_rng([cfg.seed, idx])
        # places on a grid, jittered by less than a quarter of the spacing
        east = 500000.0 + cfg.place_spacing * (idx % side + prng.uniform(-0.2, 0.2))
        north = 4000000.0 + cfg.place_spacing * (idx // side + prng.uniform(-0.2, 0.2))
        split = split_of[idx]
        counts[split]["places"] += 1
        places.append({"place": idx, "source": str(path), "split": split, "utm": [round(east, 2), round(north, 2)]})
        for kind, n in (("gallery", cfg.n_gallery), ("queries", cfg.n_queries)):
            for v in range(n):
                r, a = cfg.view_radius * math.sqrt(prng.uniform()), prng.uniform(0, 2 * math.pi)
                e, nn = east + r * math.cos(a), north + r * math.sin(a)
                view = random_view(img, cfg, prng)
                name = _utm_name(e, nn, idx, f"{kind[0]}{v}")
                write_image(out / "images" / split / kind / name, view, (cv2.IMWRITE_JPEG_QUALITY, 92))
                counts[split][kind] += 1
    meta = {
        "synthetic": True,
        "note": "UTM positions are synthetic: one place per source photo, views are perspective warps",
        "source": str(images),
        "config": asdict(cfg),
        "counts": counts,
        "places": places,
        "skipped": skipped,
    }
    finish_output(out, "dataset.json", meta)
    return meta
