"""Image pairs to match, as hloc's pairs files: exhaustive, or the top-k of global-descriptor
retrieval, optionally re-ranked by the homography regressor (GeoWarp)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..inference.pose import check_device
from ..inference.retrieval import GlobalDescriptor, WarpReranker, retrieve
from ..models.weights import load_descriptor_model, load_warp_model
from .extract import done_images
from .h5io import write_pairs


@dataclass
class PairsConfig:
    retrieval: int = 0  # pairs of every image with its k most similar (global descriptor); 0: all pairs
    rerank: int = 0  # re-order the first n retrieved by the homography regressor (0: no re-ranking)

    def __post_init__(self) -> None:
        if self.retrieval < 0 or self.rerank < 0:
            raise ValueError("retrieval and rerank must be >= 0")
        if self.rerank and not self.retrieval:
            raise ValueError("rerank re-orders retrieval results: give retrieval > 0 too")


def feature_names(features: str | Path) -> list[str]:
    """The image names (group names) of a feature file, sorted.

    Raises:
        ValueError: the file does not exist or holds no features.
    """
    features = Path(features)
    if not features.is_file():
        raise ValueError(f"{features}: no such feature file")
    names = sorted(done_images(features)[0])
    if not names:
        raise ValueError(f"{features} holds no image features")
    return names


def exhaustive_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every unordered pair of ``names`` once, in order."""
    return list(itertools.combinations(names, 2))


def unique_pairs(pairs) -> list[tuple[str, str]]:
    """``pairs`` without self-pairs and without repeats in either order (first occurrence kept)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for a, b in pairs:
        if a != b and (a, b) not in seen and (b, a) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def retrieval_pairs(
    images: str | Path, names: list[str], k: int, rerank: int = 0, progress: bool = False, device: str = "cpu"
) -> list[tuple[str, str]]:
    """Pairs of every image with its ``k`` nearest others by the GeM global descriptor
    (:class:`~ssfeat.inference.GlobalDescriptor`), the first ``rerank`` of each list re-ordered by
    :class:`~ssfeat.inference.WarpReranker` (both networks on ``device``); unique in either order."""
    paths = [Path(images) / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{missing[0]} (an image of the feature file) is missing under {images}")
    dev = check_device(device)
    desc = GlobalDescriptor(load_descriptor_model().to(dev)).describe_paths(paths, progress=progress)
    idx, _ = retrieve(desc, desc, k + 1)
    rows = [[j for j in row if j != i][:k] for i, row in enumerate(idx)]  # drop the image itself
    width = max((len(r) for r in rows), default=0)
    pred = np.array([r + [r[-1]] * (width - len(r)) for r in rows], np.int64) if width else np.zeros((len(rows), 0))
    if rerank and width:
        rr = WarpReranker(load_warp_model().to(dev))
        pred = rr.rerank(paths, paths, pred, n=min(rerank, width), progress=progress)
    return unique_pairs((names[i], names[j]) for i, row in enumerate(pred) for j in row)


def make_pairs(
    features: str | Path,
    out: str | Path,
    cfg: PairsConfig | None = None,
    images: str | Path | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> list[tuple[str, str]]:
    """Write the pairs file ``out`` for the images of a feature file (``images``: their folder, needed
    for retrieval; its networks run on ``device``) and return the pairs."""
    cfg = cfg or PairsConfig()
    names = feature_names(features)
    if cfg.retrieval:
        if images is None:
            raise ValueError("retrieval computes global descriptors of the images: give their folder")
        pairs = retrieval_pairs(images, names, cfg.retrieval, cfg.rerank, progress, device)
    else:
        pairs = exhaustive_pairs(names)
    write_pairs(out, pairs)
    return pairs


__all__ = ["PairsConfig", "exhaustive_pairs", "feature_names", "make_pairs", "retrieval_pairs", "unique_pairs"]
