"""Image sequences with exact homographies made from ordinary photos (HPatches layout), so that the
``sequences``, ``matching`` and ``detector`` benchmarks run on a user's own images, and on enough
pairs for differences between methods to stand out of the noise.

Every readable photo (gray, longer side reduced to ``max_side``) becomes the reference ``1.png`` of
a sequence folder ``v_<index>_<stem>``. Target ``k + 1`` (``k = 1..n_targets``), of the reference's
size, shows the photo

* turned about a point near its centre (within ``shift`` of the size) by an angle uniform in
  ``[0, 2pi)`` (full rotation, the default; ``max_rotation_deg`` below 180 scales that draw, wrapped
  to ``[-pi, pi)``, into ``[-max_rotation_deg, max_rotation_deg)``, so that the same seed gives the
  same pairs up to their rotation) and magnified by ``2**u``, ``u`` uniform in ``[min_log2_zoom, max_log2_zoom]``;
* then seen obliquely: the image corners of that similarity move independently by up to
  ``perspective * k / n_targets`` of the shorter side (the views get more oblique along the
  sequence);
* antialiased where it shrinks the photo, with an independent photometric change (gamma, gain,
  offset, noise). Target pixels that the photo does not cover are black (0), like the parts of a
  real pair that one view does not see.

``H_1_{k+1}`` maps reference pixels to target pixels (``H_0to1`` of the pair). Everything is a
function of ``(seed, photo index)``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ..files import write_text_atomic
from .images import ImageReadError, list_images, photometric_change, read_image, to_uint8
from .outputs import finish_output, start_output, write_image


@dataclass
class SyntheticSequenceConfig:
    n_targets: int = 5  # target views per photo (HPatches has 5)
    max_side: int = 640  # the reference is the photo with its longer side reduced to this
    min_log2_zoom: float = -0.5  # targets magnify the photo by 2**u, u uniform in [min, max]
    max_log2_zoom: float = 0.5
    perspective: float = 0.15  # corner displacement of the last target, fraction of the shorter side
    shift: float = 0.1  # rotation centre within this fraction of the size from the image centre
    noise: float = 0.01  # std of the Gaussian noise of the photometric change (intensities in [0, 1])
    max_rotation_deg: float = 180.0  # in-plane rotation within +-this (180: full rotation)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_targets < 1:
            raise ValueError(f"n_targets must be >= 1, got {self.n_targets}")
        if self.max_side < 64:
            raise ValueError(f"max_side must be >= 64, got {self.max_side}")
        if not -2.0 <= self.min_log2_zoom <= self.max_log2_zoom <= 2.0:
            raise ValueError(
                f"need -2 <= min_log2_zoom <= max_log2_zoom <= 2, got {self.min_log2_zoom}, {self.max_log2_zoom}"
            )
        if not 0.0 <= self.perspective <= 0.25:
            raise ValueError(f"perspective must lie in [0, 0.25], got {self.perspective}")
        if not 0.0 <= self.shift <= 0.5:
            raise ValueError(f"shift must lie in [0, 0.5], got {self.shift}")
        if not 0.0 <= self.max_rotation_deg <= 180.0:
            raise ValueError(f"max_rotation_deg must lie in [0, 180], got {self.max_rotation_deg}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"noise must lie in [0, 0.5], got {self.noise}")


MIN_SIDE = 64  # photos whose shorter side (after reduction) is below this are skipped


def target_homography(
    shape: tuple[int, int], perspective: float, cfg: SyntheticSequenceConfig, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """A random ``(3, 3)`` reference-to-target homography for an image of ``shape`` ``(H, W)`` (see
    the module docstring) and its zoom ``2**u``."""
    H, W = shape
    corners = np.array([[0, 0], [W - 1, 0], [W - 1, H - 1], [0, H - 1]], np.float64)
    centre = np.array([(W - 1) / 2, (H - 1) / 2])
    pivot = centre + rng.uniform(-cfg.shift, cfg.shift, 2) * (W, H)
    a = rng.uniform(0.0, 2 * math.pi)
    if cfg.max_rotation_deg < 180.0:  # the same draw, scaled: the pairs differ only in their rotation
        a = ((a + math.pi) % (2 * math.pi) - math.pi) * cfg.max_rotation_deg / 180.0
    zoom = 2.0 ** rng.uniform(cfg.min_log2_zoom, cfg.max_log2_zoom)
    # counter-clockwise on screen (y down): x' = c x + s y, y' = -s x + c y
    R = zoom * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    moved = (corners - pivot) @ R.T + centre + rng.uniform(-perspective, perspective, (4, 2)) * min(H, W)
    M = cv2.getPerspectiveTransform(corners.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
    return M / M[2, 2], zoom


def make_sequence(image: np.ndarray, cfg: SyntheticSequenceConfig, rng: np.random.Generator) -> tuple:
    """One synthetic sequence from a ``(H, W)`` float photo in ``[0, 1]``.

    Returns:
        ``(reference, targets, homographies)``: uint8 ``(H', W')`` reference (reduced to
        ``max_side``), ``n_targets`` uint8 ``(H', W')`` views and their ``(3, 3)`` ``H_0to1``
        (reference pixels to target pixels).

    Raises:
        ValueError: the photo is smaller than ``MIN_SIDE`` px (after reduction) or blank.
    """
    if float(image.max()) - float(image.min()) < 2 / 255:  # no keypoint, nothing to match: not a test pair
        raise ValueError("blank (under 2 gray levels from darkest to brightest)")
    H, W = image.shape
    f = min(1.0, cfg.max_side / max(H, W))
    if f < 1.0:
        image = cv2.resize(image, (round(W * f), round(H * f)), interpolation=cv2.INTER_AREA)
        H, W = image.shape
    if min(H, W) < MIN_SIDE:
        raise ValueError(f"{W}x{H} px: smaller than {MIN_SIDE} px")
    targets, Hs = [], []
    for k in range(1, cfg.n_targets + 1):
        M, zoom = target_homography((H, W), cfg.perspective * k / cfg.n_targets, cfg, rng)
        src = cv2.GaussianBlur(image, (0, 0), 0.5 * math.sqrt(1 / zoom**2 - 1)) if zoom < 1.0 else image
        view = cv2.warpPerspective(src, M, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
        covered = cv2.warpPerspective(np.ones_like(image), M, (W, H), flags=cv2.INTER_NEAREST, borderValue=0)
        targets.append(photometric_change(view, rng, cfg.noise) * (covered > 0))
        Hs.append(M)
    reference = to_uint8(image)
    return reference, targets, Hs


def make_synthetic_sequences(
    images: str | Path, out: str | Path, cfg: SyntheticSequenceConfig | None = None, limit: int | None = None
) -> dict:
    """Write one HPatches-layout sequence per photo below ``images`` into ``out`` (see the module
    docstring); unreadable and too-small photos are skipped and listed. Returns (and writes to
    ``OUT/sequences.json``, last) the configuration, the sequences made and the skipped files.

    Each sequence is written into a temporary folder renamed when complete, every file checked: a
    run that failed (e.g. on a full disk) or was killed is completed by running it again with the
    same arguments, which keeps the finished sequences (:mod:`ssfeat.data.outputs`).

    Raises:
        ValueError: ``out`` exists and is not empty (other than an unfinished run with the same
            settings), or no photo gave a sequence.
        OSError: a file could not be written.
    """
    cfg = cfg or SyntheticSequenceConfig()
    out = Path(out)
    settings = {"command": "make-sequences", "source": str(images), "limit": limit, "config": asdict(cfg)}
    start_output(out, settings, check_only=True)
    paths = list_images(images)[:limit]
    made, skipped, started = [], [], False
    for idx, path in enumerate(paths):
        try:
            ref, targets, Hs = make_sequence(read_image(path), cfg, np.random.default_rng([cfg.seed, idx]))
        except (ImageReadError, ValueError) as e:
            skipped.append(f"{path}: {e}" if not isinstance(e, ImageReadError) else str(e))
            continue
        if not started:  # the folder is made once a photo gave a sequence
            _remove_unfinished(out, start_output(out, settings))
            started = True
        d = out / f"v_{idx:05d}_{re.sub(r'[^A-Za-z0-9]+', '-', path.stem)}"
        if not d.is_dir():  # a sequence finished before an interruption is kept
            _write_sequence(d, ref, targets, Hs)
        made.append({"sequence": d.name, "source": str(path)})
    if not made:
        raise ValueError(f"no usable photos under {images} ({len(skipped)} skipped)")
    meta = {"synthetic": True, "source": str(images), "config": asdict(cfg), "sequences": made, "skipped": skipped}
    finish_output(out, "sequences.json", meta)
    return meta


def _remove_unfinished(out: Path, resumed: bool) -> None:
    """Remove the sequences an interrupted run was writing (temporary folders) when resuming."""
    if resumed:
        for d in out.glob(".v_*.tmp"):
            shutil.rmtree(d, ignore_errors=True)


def _write_sequence(d: Path, ref: np.ndarray, targets: list[np.ndarray], Hs: list[np.ndarray]) -> None:
    """Write one sequence folder ``d`` complete or not at all: its files go to a temporary folder
    that is renamed to ``d`` at the end (removed on failure)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}.", suffix=".tmp", dir=d.parent))
    try:
        write_image(tmp / "1.png", ref)
        for k, (view, M) in enumerate(zip(targets, Hs), start=2):
            write_image(tmp / f"{k}.png", view)
            write_text_atomic(tmp / f"H_1_{k}", "".join(" ".join(f"{v:.10g}" for v in row) + "\n" for row in M))
        os.rename(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
