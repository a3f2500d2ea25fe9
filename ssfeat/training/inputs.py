"""What a training task starts from: its training and validation images (split by image) and, for
fine-tuning, the weights of an earlier model of the same architecture."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.images import load_textured
from ..data.synthesis import split_by_image
from .configs import LoopConfig

logger = logging.getLogger(__name__)


def split_images(cfg: LoopConfig, min_size: int = 0) -> tuple[list, list, list, list]:
    """Training and validation ``(paths, images)``, split by image (or from ``val_images``).

    Images smaller than ``min_size`` px a side (what the task needs: the pose training margins, the
    detector's views, half the descriptor's or warp's views, below which views would be upsampled
    more than 2x) and blank ones are dropped, with a warning naming them, *before* the split, so
    that neither side is left with unusable images. A folder with a single usable image (and no
    ``val_images``) validates on its training image, with a warning that the validation scores are
    then not held out."""
    paths, images = load_textured(cfg.images, min_size=min_size)
    if cfg.val_images:
        vpaths, vimages = load_textured(cfg.val_images, min_size=min_size)
        return paths, images, vpaths, vimages
    train_idx, val_idx = split_by_image(paths, cfg.val_fraction, Path(cfg.images))
    if not val_idx or not train_idx:  # tiny folders: hold out the last image
        train_idx, val_idx = list(range(max(1, len(images) - 1))), [len(images) - 1]
    if set(train_idx) & set(val_idx):
        logger.warning(
            "only one usable image under %s: validation uses the training image (scores are not held out; "
            "give more images or --val-images)",
            cfg.images,
        )
    return (
        [paths[i] for i in train_idx],
        [images[i] for i in train_idx],
        [paths[i] for i in val_idx],
        [images[i] for i in val_idx],
    )


def init_state_from(load, path: str, arch) -> dict:
    """Weights of ``load(path)`` (a loader of :mod:`ssfeat.models.weights`) for fine-tuning; the
    architecture must be ``arch``."""
    init = load(path)
    if init.config != arch:
        raise ValueError(f"--init-weights {path} has architecture {init.config}, not {arch}")
    return init.state_dict()


__all__ = ["init_state_from", "split_images"]
