"""Global image descriptors and retrieval (the first stage of visual geolocalization).

The global descriptor is GeM pooling (generalised mean, ``p = 3``) of the frozen
:class:`~ssfeat.models.descriptor.DescriptorNet` encoder's stride-8 features, L2-normalised.
Retrieval is exact: cosine similarity to every database descriptor, top-k (faiss is used instead
when it is installed; results are the same).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling ``(mean x^p)^(1/p)`` over space: ``(B, C, H, W) -> (B, C)``."""
    return x.clamp(min=eps).pow(p).mean((-2, -1)).pow(1.0 / p)


class GlobalDescriptor:
    """GeM global descriptors of gray images from a frozen descriptor network.

    Args:
        net: a :class:`DescriptorNet` (default: the bundled ``descriptor`` weights).
        p: GeM exponent.
        max_side: images with a longer side are shrunk to it first (``None``: never).
    """

    def __init__(self, net=None, p: float = 3.0, max_side: int | None = 640) -> None:
        from .hub import load_descriptor

        self.net = (net if net is not None else load_descriptor()).eval()
        self.p, self.max_side = p, max_side

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``(H, W)`` float image in ``[0, 1]`` -> ``(C,)`` unit descriptor."""
        import cv2

        h, w = image.shape
        if self.max_side and max(h, w) > self.max_side:
            s = self.max_side / max(h, w)
            image = cv2.resize(image, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
        if min(image.shape) < 8:
            raise ValueError(f"the {w}x{h} image is too small for a global descriptor (< 8 px)")
        dev = next(self.net.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(dev)
        _, f3 = self.net.encode(x)
        return F.normalize(gem(f3, self.p), dim=1)[0].cpu()

    def describe_paths(self, paths: Sequence[str | Path], progress: bool = False) -> torch.Tensor:
        """``(N, C)`` descriptors of image files (read as gray)."""
        from .data.images import read_image

        it = paths
        if progress:
            from tqdm import tqdm

            it = tqdm(paths, desc="global descriptors", unit="img", leave=False)
        return torch.stack([self(read_image(p)) for p in it])


def retrieve(database: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` database entries per query by cosine similarity of unit descriptors.

    Args:
        database: ``(N, C)``; queries: ``(M, C)``.

    Returns:
        ``indices`` ``(M, min(k, N))`` int64 and ``similarities`` ``(M, min(k, N))``, best first.
    """
    k = min(k, len(database))
    try:
        import faiss  # optional
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(database.shape[1])
        index.add(database.float().numpy())
        sim, idx = index.search(queries.float().numpy(), k)
        return idx.astype(np.int64), sim
    sim, idx = (queries.float() @ database.float().T).topk(k, dim=1)
    return idx.numpy().astype(np.int64), sim.numpy()


def recall_at(predictions: np.ndarray, positives: list[np.ndarray], ns: Sequence[int] = (1, 5, 10, 20)) -> dict:
    """Recall@N (%): share of queries with a positive among their first N predictions
    (``predictions`` ``(M, K)`` database indices, best first)."""
    hits = np.array([[np.isin(pred[:n], pos).any() for n in ns] for pred, pos in zip(predictions, positives)])
    if len(hits) == 0:
        return {f"R@{n}": 0.0 for n in ns}
    return {f"R@{n}": round(100.0 * float(hits[:, i].mean()), 2) for i, n in enumerate(ns)}
