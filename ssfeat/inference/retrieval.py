"""Global image descriptors and retrieval (the first stage of visual geolocalization).

The global descriptor is GeM pooling (generalised mean, ``p = 3``) of the frozen
:class:`~ssfeat.models.descriptor.DescriptorNet` encoder's stride-8 features, L2-normalised.
Retrieval is exact: cosine similarity to every database descriptor, top-k (faiss is used instead
when it is installed; results are the same). :class:`WarpReranker` re-orders the first candidates
by local-feature similarity after warping with the GeoWarp regressor, and
:func:`mine_query_positives` finds the weakly supervised (query, positive) pairs that its
consistency and features-wise losses train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.geoloc import load_geoloc_split
from ..data.images import read_image
from ..models.warp import check_images, warp_to_frame
from ..models.weights import load_descriptor_model, load_warp_model


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
        self.net = (net if net is not None else load_descriptor_model()).eval()
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
        it = paths
        if progress:
            from tqdm import tqdm

            it = tqdm(paths, desc="global descriptors", unit="img", leave=False)
        out = []
        for p in it:
            image = read_image(p)  # an ImageReadError names the file already
            try:
                out.append(self(image))
            except ValueError as e:
                raise ValueError(f"{p}: {e}") from e
        return torch.stack(out)


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


def load_resized(path: str | Path, size: int) -> torch.Tensor:
    """A gray image file as a ``(1, size, size)`` float tensor in ``[0, 1]`` (area-resized)."""
    import cv2

    img = cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(img, np.float32))[None]


def mine_query_positives(
    root: str | Path,
    split: str = "train",
    net=None,
    k: int = 20,
    min_similarity: float = 0.4,
    radius: float = 25.0,
) -> list[tuple[Path, Path]]:
    """GeoWarp's weakly supervised (query, positive) pairs: for every query of ``split``, those of
    its top-``k`` retrieved gallery images that lie within ``radius`` metres and whose global
    descriptors (unit GeM, frozen ``net``) have cosine similarity ``>= min_similarity`` (GeoWarp's
    squared L2 distance below 1.2 is a similarity above 0.4)."""
    data = load_geoloc_split(root, split)
    desc = GlobalDescriptor(net)
    idx, sim = retrieve(desc.describe_paths(data.gallery), desc.describe_paths(data.queries), k)
    pairs = []
    for qi, (row, srow, pos) in enumerate(zip(idx, sim, data.positives(radius))):
        pairs += [(data.queries[qi], data.gallery[g]) for g, s in zip(row, srow) if g in pos and s >= min_similarity]
    return pairs


class WarpReranker:
    """GeoWarp's re-ranking: for a query and each of its top-``n`` candidates, predict the shared
    region (both input orders averaged), warp both images so that it fills the frame, and score
    the pair by the mean cosine similarity of their frozen local features; the ``n`` are sorted by
    that score, the rest of the list is kept.

    Args:
        net: a :class:`~ssfeat.models.warp.WarpNet` (default: the bundled ``warp`` weights).
        warp: ``False`` scores the unwarped images (an ablation: local-feature re-ranking alone).
        flips: average the regressor over flipped inputs (4x the cost; see ``WarpNet.shared_region``).
        cache_size: resized gallery images kept in memory (``S x S`` floats each).
    """

    def __init__(self, net=None, warp: bool = True, flips: bool = False, cache_size: int = 4096) -> None:
        self.net = (net if net is not None else load_warp_model("warp")).eval()
        self.warp, self.flips, self.cache_size = warp, flips, cache_size

    @torch.inference_mode()
    def scores(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``query`` ``(1, S, S)`` and ``candidates`` ``(N, 1, S, S)`` (``S = net.config.size``,
        :func:`load_resized`) -> ``(N,)`` similarities after warping.

        Raises:
            ValueError: other shapes or sizes, non-float or non-finite values.
        """
        S = self.net.config.size
        if not (isinstance(query, torch.Tensor) and query.ndim == 3 and query.shape[0] == 1):
            got = tuple(query.shape) if isinstance(query, torch.Tensor) else type(query).__name__
            raise ValueError(f"query must be one gray image of shape (1, {S}, {S}), got {got}")
        check_images(query[None], "query", S)
        check_images(candidates, "candidates", S)
        dev = next(self.net.parameters()).device
        q = query.to(dev)[None].expand(len(candidates), -1, -1, -1)
        c = candidates.to(dev)
        if self.warp:
            quad_q, quad_c = self.net.shared_region(q, c, flips=self.flips)
            q, c = warp_to_frame(q, quad_q, S), warp_to_frame(c, quad_c, S)
        fq, fc = self.net.features(q), self.net.features(c)
        return (fq * fc).sum(1).mean((-2, -1)).cpu()

    def rerank(
        self, queries: Sequence[Path], gallery: Sequence[Path], predictions: np.ndarray, n: int = 5, progress=False
    ) -> np.ndarray:
        """Re-order the first ``n`` of every row of ``predictions`` ``(M, K)`` (gallery indices,
        best first) by :meth:`scores`; returns a new ``(M, K)`` array.

        Raises:
            ValueError: ``n < 1``, ``predictions`` not ``(len(queries), K)`` or holding indices
                outside the gallery.
        """
        from collections import OrderedDict

        predictions = np.asarray(predictions)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if predictions.ndim != 2 or len(predictions) != len(queries):
            raise ValueError(
                f"predictions must have shape ({len(queries)}, K) (a row per query), got {predictions.shape}"
            )
        ints = np.issubdtype(predictions.dtype, np.integer)
        if predictions.size and (not ints or predictions.min() < 0 or predictions.max() >= len(gallery)):
            raise ValueError(f"predictions must hold gallery indices in [0, {len(gallery)})")

        S = self.net.config.size
        cache: OrderedDict[int, torch.Tensor] = OrderedDict()  # resized gallery images, least recent first
        out = predictions.copy()
        rows = range(len(queries))
        if progress:
            from tqdm import tqdm

            rows = tqdm(rows, desc="re-ranking", unit="query", leave=False)
        for i in rows:
            top = predictions[i, :n]
            cands = []
            for g in map(int, top):
                if g in cache:
                    cache.move_to_end(g)
                else:
                    cache[g] = load_resized(gallery[g], S)
                cands.append(cache[g])
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
            s = self.scores(load_resized(queries[i], S), torch.stack(cands))
            out[i, : len(top)] = top[torch.argsort(s, descending=True, stable=True).numpy()]
        return out
