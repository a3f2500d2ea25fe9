"""Reading images from disk robustly: any depth (8/16 bit, float), gray, RGB or RGBA."""

from __future__ import annotations

import io
import logging
import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

logger = logging.getLogger(__name__)

# the pixel budget: larger images are refused before they are decoded (a 100 MP photo takes about
# 6 GB in the matching pipelines; 400 MP took 24 GB). Environment variable SSFEAT_MAX_PIXELS sets
# another budget.
MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".bmp", ".webp")


class ImageReadError(ValueError):
    """An image file could not be decoded (missing, truncated, not an image)."""


def to_gray_float(image: np.ndarray) -> np.ndarray:
    """Convert an image array to single-channel float32 in ``[0, 1]``.

    Accepts ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` (BGR as OpenCV reads it, or RGB: the gray
    weights differ negligibly for our use) and ``(H, W, 4)`` (alpha is dropped); uint8, uint16 and
    float inputs (float must already be in ``[0, 1]``).

    Raises:
        ValueError: unsupported shape or dtype, or non-finite values.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image (shape {image.shape})")
    if image.dtype == np.uint8:
        img = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        img = image.astype(np.float32) / 65535.0
    elif np.issubdtype(image.dtype, np.floating):
        img = image.astype(np.float32)
        if not np.isfinite(img).all():
            raise ValueError("image contains NaN or Inf values")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:  # e.g. a float TIFF holding 0..255: scale it to [0, 1] first
            raise ValueError(f"float image values must be in [0, 1], found [{lo:g}, {hi:g}]")
        img = np.clip(img, 0.0, 1.0)
    else:
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(img)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image with values in ``[0, 1]`` (any shape) as uint8: clipped, scaled by 255, rounded."""
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def photometric_change(image: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    """A random photometric change of a ``(H, W)`` float image in ``[0, 1]``: gamma ``exp(U(-0.4,
    0.4))``, gain ``U(0.7, 1.3)``, offset ``U(-0.1, 0.1)``, Gaussian noise of std ``noise``; returned
    as uint8."""
    v = np.clip(image, 0, 1) ** math.exp(rng.uniform(-0.4, 0.4)) * rng.uniform(0.7, 1.3) + rng.uniform(-0.1, 0.1)
    v = v + rng.normal(0, noise, v.shape)
    return to_uint8(v)


def max_pixels() -> int:
    """The pixel budget of :func:`read_image`: ``SSFEAT_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`.

    Raises:
        ValueError: ``SSFEAT_MAX_PIXELS`` is not a positive integer.
    """
    value = os.environ.get("SSFEAT_MAX_PIXELS", "").strip()
    if not value:
        return MAX_PIXELS
    try:
        n = float(value.replace("_", ""))  # 100_000_000 and 1e8 both read
    except ValueError:
        n = 0.0
    if not (1 <= n < float("inf")):
        raise ValueError(f"SSFEAT_MAX_PIXELS must be a positive number of pixels, got {value!r}")
    return int(n)


def header_pixels(data: bytes | np.ndarray) -> tuple[int, str] | None:
    """The number of pixels of an encoded image from its header alone (nothing is decoded) and its
    size as text (``"W x H px"``), or None when the format is not recognised (Pillow reads the
    headers; it comes with matplotlib). Over Pillow's own decompression-bomb limit the number is
    that limit (a lower bound) and the text says so."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own decompression-bomb warning
        try:
            with Image.open(io.BytesIO(memoryview(data))) as im:
                return im.size[0] * im.size[1], f"{im.size[0]}x{im.size[1]} px"
        except Image.DecompressionBombError:
            n = 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1
            return n, f"more than {n / 1e6:.0f} MP"
        except Exception:  # not a format Pillow knows (or a broken header): OpenCV decides
            return None


def check_pixels(data: bytes | np.ndarray, name: str | Path) -> None:
    """Refuse an encoded image over the pixel budget (:func:`max_pixels`) before it is decoded.

    Raises:
        ImageReadError: naming ``name``, the image's size and the budget.
    """
    size = header_pixels(data)
    budget = max_pixels()
    if size is not None and size[0] > budget:
        raise ImageReadError(
            f"{name}: {size[1]}, over the pixel budget of {budget / 1e6:g} MP (shrink it, or set SSFEAT_MAX_PIXELS)"
        )


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as a ``(H, W)`` float32 gray image in ``[0, 1]``. Images over the pixel
    budget (:func:`max_pixels`) are refused from their header, before they are decoded.

    Raises:
        ImageReadError: the file is missing, cannot be decoded as an image, or is over the budget.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path}: a folder, not an image file")
    if not path.is_file():
        if path.is_symlink():
            raise ImageReadError(f"{path}: a symbolic link to nothing readable (a link loop, or its target is gone)")
        raise ImageReadError(f"{path}: no such file")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size:
        check_pixels(data, path)
    try:  # ANYDEPTH|ANYCOLOR keeps 16-bit data and applies the EXIF orientation (alpha is dropped anyway)
        image = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR) if data.size else None
    except (MemoryError, cv2.error) as e:
        raise ImageReadError(f"{path}: cannot be decoded in the memory available ({type(e).__name__})") from e
    if image is None:
        raise ImageReadError(f"{path}: not a readable image (empty, truncated or unknown format)")
    if image.dtype == np.uint16 and 0 < int(image.max()) < 4096:
        logger.warning(
            "%s: 16-bit image whose values stay below 4096 (max %d); 12-bit (or shallower) data stored in "
            "16 bits reads as a very dark image here (few keypoints): rescale it to the 16-bit range",
            path,
            int(image.max()),
        )
    try:
        return to_gray_float(image)
    except ValueError as e:
        raise ImageReadError(f"{path}: {e}") from e
    except MemoryError as e:
        size = f"{image.shape[1]}x{image.shape[0]} px"
        raise ImageReadError(f"{path}: {size} does not fit in the memory available") from e


def as_image(image) -> np.ndarray:
    """A float32 gray ``(H, W)`` image in ``[0, 1]`` from a path, an ``(H, W[, 3|4])`` array (OpenCV's BGR
    order) or a tensor (``(H, W)``, ``([1, ]C, H, W)`` RGB; uint8 / uint16 scaled by their range)."""
    if image is None:
        raise ValueError("image is None: expected a path, an (H, W[, 3|4]) array or a tensor")
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()  # uint8 / uint16 keep their dtype so to_gray_float scales them
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        a = t.numpy() if t.dtype in (torch.uint8, torch.uint16) else t.float().numpy()
        if a.ndim == 3 and a.shape[2] >= 3:  # tensors are RGB; to_gray_float expects OpenCV's BGR order
            a = a[:, :, [2, 1, 0]]
        return to_gray_float(a)
    return to_gray_float(np.asarray(image))


def samples_dir() -> Path:
    """The folder of sample photos shipped with the package (BSDS500 test photos, never used in training)."""
    from importlib import resources

    return Path(str(resources.files("ssfeat") / "assets" / "samples"))


def sample_images() -> list[Path]:
    """The sample photos shipped with the package, sorted by name: ready-made inputs for examples and
    ``ssfeat demo``."""
    return sorted(samples_dir().glob("*.jpg"))


def list_images(root: str | Path) -> list[Path]:
    """Image files below ``root`` (recursive, sorted), chosen by extension (case-insensitive).

    Raises:
        FileNotFoundError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or directory")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_folder(
    root: str | Path, min_size: int = 0, as_uint8: bool = False
) -> tuple[list[Path], list[np.ndarray], list[str]]:
    """Read every image below ``root``; unreadable or too-small files are skipped and reported.

    Args:
        root: folder (or a single file).
        min_size: images whose height or width is below this are skipped.
        as_uint8: store images as uint8 (saves memory for training).

    Returns:
        ``(paths, images, skipped)`` where ``skipped`` lists ``"path: reason"`` strings.
    """
    paths, images, skipped = [], [], []
    for p in list_images(root):
        try:
            img = read_image(p)
        except ImageReadError as e:
            skipped.append(str(e))
            continue
        if min(img.shape) < min_size:
            skipped.append(f"{p}: {img.shape[1]}x{img.shape[0]} is smaller than {min_size} px")
            continue
        paths.append(p)
        images.append(np.round(img * 255).astype(np.uint8) if as_uint8 else img)
    if skipped:
        logger.warning("skipped %d of %d files under %s", len(skipped), len(skipped) + len(paths), root)
        for s in skipped[:20]:
            logger.warning("  skipped %s", s)
    return paths, images, skipped


def is_blank(image: np.ndarray) -> bool:
    """True for a flat image: under 2 gray levels (of 255) from darkest to brightest pixel.
    ``image``: uint8, or float in ``[0, 1]``."""
    levels = 1.0 if image.dtype == np.uint8 else 255.0
    return (float(image.max()) - float(image.min())) * levels < 2 - 1e-3  # 2 levels read as 1.99999 count


def check_usable(image: np.ndarray, name: str | Path, min_size: int = 16) -> np.ndarray:
    """``image`` if it is at least ``min_size`` px a side and not blank (:func:`is_blank`).

    Raises:
        ValueError: naming ``name``, the image's size and what was needed.
    """
    h, w = image.shape[:2]
    if min(h, w) < min_size:
        raise ValueError(f"{name}: {w}x{h} px is too small (at least {min_size} px a side needed)")
    if is_blank(image):
        raise ValueError(f"{name}: blank image (under 2 gray levels from darkest to brightest)")
    return image


def read_usable(path: str | Path, min_size: int = 16) -> np.ndarray:
    """:func:`read_image` then :func:`check_usable`: a gray image at least ``min_size`` px a side
    and not blank.

    Raises:
        ValueError: naming ``path`` (:class:`ImageReadError`, a ``ValueError``, when it cannot be read).
    """
    return check_usable(read_image(path), path, min_size)


def load_textured(folder: str | Path, min_size: int = 0, as_uint8: bool = True) -> tuple[list[Path], list[np.ndarray]]:
    """The readable images under ``folder`` (at least ``min_size`` px a side; uint8, or float in
    [0, 1] with ``as_uint8=False``) that are not flat: blank frames teach nothing and would be
    sampled like photos, so they are skipped with a warning naming them.

    Raises:
        ValueError: no readable image, or every image is blank.
    """
    paths, images, _ = load_folder(folder, min_size=min_size, as_uint8=as_uint8)
    if not images:
        size = f" of at least {min_size} px" if min_size else ""
        raise ValueError(f"no readable images{size} under {folder}")
    flat = [i for i, im in enumerate(images) if is_blank(im)]
    if flat:
        names = ", ".join(str(paths[i]) for i in flat[:5])
        logger.warning("%d of %d images under %s are blank (flat), skipped: %s", len(flat), len(images), folder, names)
    keep = sorted(set(range(len(images))) - set(flat))
    if not keep:
        raise ValueError(f"every image under {folder} is blank (under 2 gray levels from darkest to brightest)")
    return [paths[i] for i in keep], [images[i] for i in keep]
