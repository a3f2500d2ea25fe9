"""Image sequences with ground-truth homographies: Oxford affine layout (``img1.png`` ...,
``H1to{k}p.xml`` in OpenCV FileStorage XML) and HPatches layout (``1.ppm`` ..., ``H_1_k`` text),
detected automatically; and EVD-style pair folders (``1/NAME.png``, ``2/NAME.png``, ``h/NAME.txt``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)


@dataclass
class Sequence:
    """A reference image and targets with ``H_0to1`` homographies (reference -> target)."""

    name: str
    layout: str  # "oxford" | "hpatches" | "evd"
    reference: Path
    targets: list[Path] = field(default_factory=list)
    H: list[np.ndarray] = field(default_factory=list)  # (3, 3) float64 each


def read_homography(path: Path) -> np.ndarray:
    """A 3x3 homography from OpenCV XML/YAML FileStorage or whitespace-separated text.

    Raises:
        ValueError: the file does not hold a finite, invertible 3x3 matrix.
    """
    path = Path(path)
    if path.suffix.lower() in (".xml", ".yml", ".yaml"):
        try:
            fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
            keys = fs.root().keys()
            H = fs.root().getNode(keys[0]).mat() if keys else None
            fs.release()
        except (cv2.error, SystemError) as e:  # an empty or non-XML file raises SystemError
            raise ValueError(f"{path}: not an OpenCV FileStorage matrix") from e
    else:
        try:
            H = np.loadtxt(path, dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: not a 3x3 text matrix ({e})") from e
    H = None if H is None else np.asarray(H, dtype=np.float64)
    if H is None or H.shape != (3, 3) or not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        raise ValueError(f"{path}: not a finite invertible 3x3 homography")
    if abs(H[2, 2]) < 1e-12 * np.abs(H).max():  # maps the origin to infinity; cannot be normalised
        raise ValueError(f"{path}: H[2, 2] is 0 (the homography maps the image origin to infinity)")
    return H / H[2, 2]


def _find_image(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file() or cand.is_symlink():  # a broken link is reported when it is read
                return cand
    return None


def find_sequences(root: str | Path) -> list[Sequence]:
    """All Oxford-, HPatches- and EVD-layout sequences at or below ``root`` (sorted by name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    seqs: list[Sequence] = []
    for d in sorted([root, *[p for p in root.rglob("*") if p.is_dir()]]):
        try:
            seqs += _sequences_in(d, root)
        except ValueError as e:  # a malformed homography: skip that folder, keep the others
            logger.warning("skipped %s: %s", d, e)
    return seqs


def _oxford_h(d: Path, k: int) -> Path:
    return d / f"H1to{k}p.xml" if (d / f"H1to{k}p.xml").is_file() else d / f"H1to{k}p"


# numbered layouts: name -> (reference image stem, target stem of image k, homography file of image k)
_NUMBERED = {
    "oxford": ("img1", lambda k: f"img{k}", _oxford_h),
    "hpatches": ("1", str, lambda d, k: d / f"H_1_{k}"),
}


def _numbered_sequence(d: Path, name: str, layout: str) -> list[Sequence]:
    ref_stem, target_stem, h_file = _NUMBERED[layout]
    ref = _find_image(d, ref_stem)
    if ref is None:
        logger.warning("%s: %s layout without a %s image, skipped", d, layout, ref_stem)
        return []
    seq = Sequence(name, layout, ref)
    for k in range(2, 100):  # every target that has both its image and its homography
        h, img = h_file(d, k), _find_image(d, target_stem(k))
        if h.is_file() and img is not None:
            seq.targets.append(img)
            seq.H.append(read_homography(h))
        elif h.is_file() or img is not None:
            have, missing = ("an image", h.name) if img is not None else (h.name, "image")
            logger.warning("%s: target %d has %s but no %s, skipped", d, k, have, missing)
    return [seq] if seq.targets else []


def _sequences_in(d: Path, root: Path) -> list[Sequence]:
    """The sequences stored directly in folder ``d`` (none, one, or one per EVD pair)."""
    name = str(d.relative_to(root)) if d != root else d.name
    if _oxford_h(d, 2).is_file():
        return _numbered_sequence(d, name, "oxford")
    if (d / "H_1_2").is_file():
        return _numbered_sequence(d, name, "hpatches")
    seqs: list[Sequence] = []
    if (d / "1").is_dir() and (d / "2").is_dir() and (d / "h").is_dir():
        for h in sorted((d / "h").glob("*.txt")):
            a, b = _find_image(d / "1", h.stem), _find_image(d / "2", h.stem)
            if a and b:
                prefix = f"{name}/" if d != root else ""
                seqs.append(Sequence(f"{prefix}{h.stem}", "evd", a, [b], [read_homography(h)]))
    return seqs
