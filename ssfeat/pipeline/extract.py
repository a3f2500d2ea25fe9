"""Feature extraction over image folders into one HDF5 file: resumable, sharded, kill-safe.

Output (``FEATURES.h5``): one group per image, named by its path relative to the image folder
(POSIX separators, so sub-folders become nested groups), holding the pipeline's
:class:`~ssfeat.features.Features`:

* ``keypoints`` ``(N, 2)`` float32 pixel ``(x, y)`` of the original image, ``scales`` ``(N,)``
  (feature size in pixels, ``cv2.KeyPoint.size`` meaning), ``orientations`` ``(N,)`` (radians,
  counter-clockwise as displayed), ``scores`` ``(N,)``, ``descriptors`` ``(N, D)`` float32,
  ``parents`` ``(N,)`` int64 (the detected keypoint of each feature; multi-pose pipelines emit several);
* attributes ``image_size`` ``(H, W)`` and ``resize`` (the factor the image was shrunk by before
  extraction when its longer side exceeded ``max_side``; coordinates and sizes are given back in
  original pixels).

With ``format="hloc"`` the image groups follow hloc's layout instead
(:meth:`~ssfeat.features.Features.to_hloc`): ``keypoints`` ``(N, 2)``, ``descriptors`` ``(D, N)``,
``scores`` ``(N,)``, a **dataset** ``image_size`` ``(W, H)``, ``scales`` (half the size in pixels,
COLMAP's SIFT scale) and ``oris`` (degrees, clockwise as displayed), plus the ``resize`` attribute;
hloc's ``match_features`` and COLMAP import read such a file unchanged.

Root attributes: ``pipeline``, ``max_keypoints``, ``max_side``, ``sift_first_octave``, ``format``,
``ssfeat_version``, and ``skipped_dataset``, the name of the list of files that could not be read or
described: ``skipped``, with underscores appended if a top-level image folder has that name. It is
a table of two string columns, ``key`` (as for the image groups) and ``reason`` (files written by
earlier versions hold strings ``"key: reason"`` instead; they are still read). In hloc's layout the
list is the root attribute ``skipped`` instead, a JSON list of ``[key, reason]`` pairs (hloc takes
the parent group of every dataset for an image). A file name that is not valid UTF-8 cannot name an
HDF5 group: it is skipped, its key written with the invalid bytes as ``\\xNN`` escapes. Images over
the pixel budget (:data:`ssfeat.data.images.MAX_PIXELS`) are skipped without being decoded.

How the work is kept safe: extracted images are written in *part* files
(``FEATURES.h5.parts/part-r{rank}-{n}.h5``, ``part_size`` images each), every part written to a
temporary name and renamed when complete (:func:`ssfeat.files.atomic_write`; a full disk ends
the run with one error naming the file, leaving no temporary file). A killed run loses at most
the part being written; run the same command again and it skips every image found in complete parts (and in an existing
``FEATURES.h5``), so no image is lost or duplicated. When all images are done, the parts and the
previous output are merged into a temporary file that atomically replaces ``FEATURES.h5``, and the
parts are deleted. ``FEATURES.h5`` is therefore always either absent or a complete, readable file,
and readers that opened it keep a consistent view while a new version is written.
One run writes an output at a time: a second one stops at once with "another ssfeat process is
writing FEATURES.h5" (:class:`ssfeat.files.OutputLock` on ``.FEATURES.h5.lock`` next to it; under
``torchrun`` rank 0 holds it for all processes).

Sharding: ``workers=N`` runs the pipeline in ``N`` processes (one torch thread each, images handed
out in order); under ``torchrun`` every process takes every ``W``-th remaining image and writes its
own parts, and rank 0 merges after a barrier. ``batch_size=B`` reads ``B`` images at a time and
describes them together (:meth:`~ssfeat.pipeline.Pipeline.extract_batch`: the dense learned
descriptor runs same-sized images in one forward pass); the features are the same as one at a time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import distributed as du
from ..data.images import list_images, read_usable
from ..features import Features, check_first_octave
from ..files import OutputLock, remove_stale_temps
from ..version import __version__
from .build import build_pipeline, check_pipeline_name
from .h5io import parts_dir, remove_parts, write_h5_atomic

logger = logging.getLogger(__name__)

FIELDS = ("keypoints", "scales", "orientations", "scores", "descriptors")
FORMATS = ("ssfeat", "hloc")


@dataclass
class ExtractConfig:
    pipeline: str = "ssfeat"  # a name of ssfeat.pipeline.PIPELINES
    max_keypoints: int = 1000
    max_side: int = 4096  # longer sides are shrunk to this before extraction (0: never)
    part_size: int = 64  # images per part file
    sift_first_octave: int = 0  # SIFT descriptor pyramid (ssfeat.pipeline.SIFTDescriptor; -1: OpenCV's own)
    format: str = "ssfeat"  # layout of the image groups: "ssfeat" (lossless, ssfeat's units) or "hloc"
    device: str = "cpu"  # torch device of the networks ("auto": CUDA, else MPS, else CPU); not a stored setting
    # images read and described together (the dense descriptor: same-sized ones in one forward pass);
    # not a stored setting: the features do not depend on it
    batch_size: int = 1

    def __post_init__(self) -> None:
        check_pipeline_name(self.pipeline)  # before any output folder is made
        if self.max_keypoints < 1 or self.part_size < 1 or self.batch_size < 1:
            raise ValueError("max_keypoints, part_size and batch_size must be >= 1")
        check_first_octave(self.sift_first_octave, "sift_first_octave")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.max_side != 0 and self.max_side < 32:
            raise ValueError(f"max_side must be 0 (never shrink) or at least 32 px, got {self.max_side}")


def image_key(path: Path, root: Path) -> str:
    """The HDF5 group name of an image: its POSIX path relative to ``root`` (or its file name).
    Bytes of a file name that are not valid UTF-8 (which no HDF5 name can hold) are written as
    ``\\xNN`` escapes: such a file is skipped under this key."""
    return _relative(path, root).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as Python holds it (the invalid bytes of a name that is not
    valid UTF-8 as surrogates)."""
    return path.name if Path(root).is_file() else path.relative_to(root).as_posix()


NOT_UTF8 = "the file name is not valid UTF-8 (rename the file to extract it)"


def _h5():
    try:
        import h5py
    except ImportError as e:  # a dependency, but give a clear message if it is missing
        raise RuntimeError("ssfeat extract needs h5py: pip install h5py") from e
    return h5py


def _text(v) -> str:
    return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)


def _legacy_entry(entry: str, known: set[str]) -> tuple[str, str]:
    """``(key, reason)`` of a ``"key: reason"`` string of an earlier version: the longest known key
    it starts with (a file name may hold ``": "`` too), else the text before the first ``": "``."""
    cuts = [i for i in range(len(entry)) if entry.startswith(": ", i)]
    for i in reversed(cuts):
        if entry[:i] in known:
            return entry[:i], entry[i + 2 :]
    key, _, reason = entry.partition(": ")
    return key, reason


def _keys_in(path: Path, known: set[str] = frozenset()) -> tuple[set[str], list[tuple[str, str]]]:
    """Image keys and skipped ``(key, reason)`` entries stored in a complete output or part file
    (``known``: the image keys, to read the skipped strings of earlier versions)."""
    h5py = _h5()
    keys: set[str] = set()
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Group) and "keypoints" in obj:
                keys.add(name)

        f.visititems(visit)
        if "skipped_dataset" not in f.attrs and "skipped" in f.attrs:  # hloc layout: a root attribute
            return keys, [(str(k), str(r)) for k, r in json.loads(_text(f.attrs["skipped"]))]
        name = _text(f.attrs.get("skipped_dataset", "skipped"))  # files without the attribute use "skipped"
        d = f.get(name)
        if not isinstance(d, h5py.Dataset):
            return keys, []
        if d.dtype.names is not None:
            return keys, [(_text(k), _text(r)) for k, r in d[()]]
        return keys, [_legacy_entry(_text(s), known) for s in d[()]]


def _write_skipped(f, entries: list[tuple[str, str]], fmt: str = "ssfeat") -> None:
    """The skipped ``(key, reason)`` table of an output or part file ``f``, written after its image
    groups: named ``skipped`` unless a top-level image group already is (then ``skipped_``, ...).
    In hloc's layout it is the root attribute ``skipped`` instead (a JSON list of ``[key, reason]``):
    hloc takes the parent group of every dataset for an image."""
    if fmt == "hloc":
        f.attrs["skipped"] = json.dumps([list(e) for e in entries])
        return
    name = "skipped"
    while name in f:
        name += "_"
    dt = np.dtype([("key", _h5().string_dtype()), ("reason", _h5().string_dtype())])
    f.create_dataset(name, data=np.array([tuple(e) for e in entries], dtype=dt))
    f.attrs["skipped_dataset"] = name


def done_images(out: Path, known: set[str] = frozenset()) -> tuple[set[str], list[tuple[str, str]]]:
    """Keys already extracted (in ``out`` and its complete parts) and the skipped ``(key, reason)``
    entries so far (``known``: the image keys, to read the skipped lists of earlier versions)."""
    done: set[str] = set()
    skipped: list[tuple[str, str]] = []
    files = ([out] if out.is_file() else []) + sorted(parts_dir(out).glob("part-*.h5"))
    for p in files:
        try:
            k, s = _keys_in(p, known)
        except OSError as e:  # a damaged part (should not happen: parts are renamed when complete)
            logger.warning("ignoring unreadable part %s (%s); its images are extracted again", p, e)
            p.unlink()
            continue
        done |= k
        skipped += s
    return done, skipped


def _settings(cfg: ExtractConfig) -> dict:
    """The settings stored in (and required of) every output and part file."""
    return {
        "pipeline": cfg.pipeline,
        "max_keypoints": cfg.max_keypoints,
        "max_side": cfg.max_side,
        "sift_first_octave": cfg.sift_first_octave,
        "format": cfg.format,
    }


def check_existing(out: Path, cfg: ExtractConfig) -> None:
    """Refuse to add to an ``out`` (or parts of an interrupted run) that is not an ssfeat feature
    file or was extracted with other settings, instead of overwriting or mixing it."""
    if out.is_dir():
        raise ValueError(f"{out} is a folder; give the .h5 file to write")
    want = _settings(cfg)
    for p in ([out] if out.exists() else []) + sorted(parts_dir(out).glob("part-*.h5")):
        try:
            with _h5().File(p, "r") as f:
                have = {k: f.attrs.get(k) for k in want}
        except OSError as e:
            if p == out:
                raise ValueError(f"{out} exists and is not an HDF5 feature file; choose another output") from e
            continue  # a damaged part: done_images drops it
        have = {
            k: v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
            for k, v in have.items()
        }
        if p == out and have["pipeline"] is None:
            raise ValueError(f"{out} exists and is not an ssfeat feature file; choose another output")
        if have["pipeline"] is not None and have["sift_first_octave"] is None:
            have["sift_first_octave"] = -1  # written before the setting existed: OpenCV's own descriptors
        if have["pipeline"] is not None and have["format"] is None:
            have["format"] = "ssfeat"  # written before the hloc layout existed
        diff = [f"{k}={have[k]!r} (now {want[k]!r})" for k in want if have[k] is not None and have[k] != want[k]]
        if diff:
            raise ValueError(f"{p} was extracted with {', '.join(diff)}; use the same settings or another output")


def _libver(cfg: ExtractConfig) -> str | None:
    """hloc's layout keeps the skipped list in an attribute, which may exceed 64 kB: HDF5 stores such
    attributes only in files of its newer format (read by HDF5 >= 1.10)."""
    return "latest" if cfg.format == "hloc" else None


def _write_group(f, key: str, feats, image_size: tuple[int, int], resize: float, fmt: str = "ssfeat") -> None:
    g = f.create_group(key)
    g.attrs["resize"] = float(resize)
    if fmt == "hloc":
        for name, a in replace(feats, image_size=image_size).to_hloc().items():
            g.create_dataset(name, data=a)
        return
    for name in FIELDS:
        a = getattr(feats, name)
        if a is not None:
            g.create_dataset(name, data=np.asarray(a, np.float32))
    g.create_dataset("parents", data=np.asarray(feats.parents, np.int64))
    g.attrs["image_size"] = np.asarray(image_size, np.int64)


class _Extractor:
    """Runs a named pipeline's extraction on one image path (built once per process)."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg = cfg
        self.pipe = build_pipeline(
            cfg.pipeline, cfg.max_keypoints, sift_first_octave=cfg.sift_first_octave, device=cfg.device
        )

    def __call__(self, path: Path):
        """``(features, (H, W), resize)`` or the reason (a string) why ``path`` is skipped."""
        return self.batch([path])[0]

    def _read(self, path: Path):
        """``(image, (H, W), resize)``, the image shrunk to ``max_side``, or the reason it is skipped."""
        import cv2

        try:  # unreadable (ImageReadError is a ValueError), under 16 px a side, or blank: skipped with the reason
            img = read_usable(path)
        except ValueError as e:
            return str(e).removeprefix(f"{path}: ")
        H, W = img.shape
        resize = 1.0
        if self.cfg.max_side and max(H, W) > self.cfg.max_side:
            resize = self.cfg.max_side / max(H, W)
            img = cv2.resize(img, (max(1, round(W * resize)), max(1, round(H * resize))), interpolation=cv2.INTER_AREA)
        return img, (H, W), resize

    def _describe(self, imgs: list) -> list:
        """Features of the images ``(H, W)`` or, per image, the reason it cannot be described."""
        try:
            return list(self.pipe.extract_batch(imgs, image_batch=len(imgs)))
        except ValueError as e:  # e.g. an image smaller than the pipeline's patches: find which, one at a time
            if len(imgs) == 1:
                return [str(e)]
        return [self._describe([im])[0] for im in imgs]

    def batch(self, paths: list[Path]) -> list:
        """The result of each of ``paths`` (as for ``__call__``), the readable images described
        together (:meth:`~ssfeat.pipeline.Pipeline.extract_batch`)."""
        read = [self._read(p) for p in paths]
        ok = [r for r in read if not isinstance(r, str)]
        feats = iter(self._describe([r[0] for r in ok]) if ok else [])
        out = []
        for r in read:
            if isinstance(r, str):
                out.append(r)
                continue
            f, size, resize = next(feats), r[1], r[2]
            if not isinstance(f, str) and resize != 1.0:  # back to original pixels (pixel centres at integers)
                f = replace(f, keypoints=(f.keypoints + 0.5) / resize - 0.5, scales=f.scales / resize)
            out.append(f if isinstance(f, str) else (f, size, resize))
        return out


_WORKER: _Extractor | None = None


def _worker_init(cfg: ExtractConfig) -> None:
    global _WORKER
    import cv2

    torch.set_num_threads(1)  # one process per core: no oversubscription by torch or OpenCV threads
    cv2.setNumThreads(1)
    _WORKER = _Extractor(cfg)


def _worker_run(paths: list[Path]) -> list:
    return _WORKER.batch(paths)


class _PartWriter:
    """Collects this process's results and writes them ``cfg.part_size`` at a time as part files
    ``part-r{rank}-{seq}.h5`` (counting new and skipped images, advancing the progress bar)."""

    def __init__(self, out: Path, cfg: ExtractConfig, rank: int, world: int, bar) -> None:
        self.out, self.cfg, self.rank, self.world, self.bar = out, cfg, rank, world, bar
        self.seq = len(list(parts_dir(out).glob(f"part-r{rank}-*.h5")))
        self.pending: list[tuple[str, object]] = []
        self.n_new = self.n_skip = 0

    def flush(self) -> None:
        if not self.pending:
            return
        batch, settings = self.pending, _settings(self.cfg)

        def fill(f):
            bad = []
            for key, res in batch:
                if isinstance(res, str):
                    bad.append((key, res))
                else:
                    _write_group(f, key, *res, fmt=self.cfg.format)
            _write_skipped(f, bad, self.cfg.format)
            f.attrs.update(settings)

        write_h5_atomic(parts_dir(self.out) / f"part-r{self.rank}-{self.seq:06d}.h5", fill, _libver(self.cfg))
        self.seq += 1
        self.pending = []

    def add(self, key: str, res) -> None:
        if isinstance(res, str):
            self.n_skip += 1
            logger.warning("skipped %s: %s", key, res)
        else:
            self.n_new += 1
        self.pending.append((key, res))
        if len(self.pending) >= self.cfg.part_size:
            self.flush()
        if self.bar is not None:
            self.bar.update(self.world)


def _todo(images: Path, out: Path, cfg: ExtractConfig, lock: OutputLock) -> tuple[list[Path], list[tuple[str, Path]]]:
    """All image paths under ``images`` and the ``(key, path)`` pairs not yet in ``out`` (after
    taking ``lock`` on rank 0 and clearing the temporary files of a killed run)."""
    paths = list_images(images)
    if not paths:
        raise ValueError(f"no image files under {images}")
    keys = [image_key(p, images) for p in paths]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate image names under {images}")
    check_existing(out, cfg)
    du.on_main(lock.acquire)  # one lock for all processes of a torchrun
    if du.is_main():
        parts_dir(out).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(parts_dir(out))  # parts a killed run was writing
        remove_stale_temps(out.parent, out.name)
    du.barrier()
    done, skipped = done_images(out, set(keys))
    done |= {k for k, _ in skipped}
    # skipped entries name the image key; files written before that named the path as typed
    return paths, [(k, p) for k, p in zip(keys, paths) if k not in done and str(p) not in done]


def extract_folder(
    images: str | Path, out: str | Path, cfg: ExtractConfig | None = None, workers: int = 0, progress: bool = True
) -> dict:
    """Extract features of every image below ``images`` into ``out`` (see the module docstring).

    Returns statistics: ``n_images`` (found), ``n_done`` (in the output), ``n_new`` (extracted by
    this call in this process), ``n_skipped``, ``seconds``, ``images_per_s`` (new images per second
    of this call; under ``torchrun``, of all processes together).

    Raises:
        OutputLockedError: another process is writing ``out`` (``.OUT.lock``, held by rank 0).
    """
    lock = OutputLock(out)
    try:
        return _extract(Path(images), Path(out), cfg or ExtractConfig(), workers, progress, lock)
    finally:
        lock.release()


def _extract(images: Path, out: Path, cfg: ExtractConfig, workers: int, progress: bool, lock: OutputLock) -> dict:
    world, rank = du.world_size(), du.rank()
    paths, todo = _todo(images, out, cfg, lock)
    mine = todo[rank::world]
    t0 = time.perf_counter()
    bar = None
    if progress and du.is_main():
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="extract", unit="img", dynamic_ncols=True)
    writer = _PartWriter(out, cfg, rank, world, bar)
    for key, p in mine:
        if key != _relative(p, images):  # image_key escaped bytes that are not UTF-8
            writer.add(key, NOT_UTF8)
    mine = [(k, p) for k, p in mine if k == _relative(p, images)]
    chunks = [mine[i : i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]
    if workers > 1 and world == 1:
        with mp.get_context("spawn").Pool(workers, _worker_init, (cfg,)) as pool:
            for chunk, res in zip(chunks, pool.imap(_worker_run, [[p for _, p in c] for c in chunks], chunksize=1)):
                for (key, _), r in zip(chunk, res):
                    writer.add(key, r)
    else:
        run = _Extractor(cfg)
        for chunk in chunks:
            for (key, _), r in zip(chunk, run.batch([p for _, p in chunk])):
                writer.add(key, r)
    writer.flush()
    if bar is not None:
        bar.close()
    du.barrier()
    seconds = time.perf_counter() - t0
    n_all = round(du.all_reduce_mean(torch.tensor(float(writer.n_new + writer.n_skip))).item() * world)
    stats = {"n_images": len(paths), "n_new": writer.n_new, "seconds": round(seconds, 3)}
    stats["images_per_s"] = round(n_all / seconds, 3) if seconds > 0 else None
    if du.is_main():
        merge(out, cfg, set(image_key(p, images) for p in paths))
    du.barrier()
    done, skipped = done_images(out)
    stats.update(n_done=len(done), n_skipped=len(skipped))
    return stats


def merge(out: Path, cfg: ExtractConfig, known: set[str] = frozenset()) -> Path:
    """Merge ``out`` (if any) and its complete parts into a new ``out`` (atomic), then delete the
    parts (``known``: the image keys, to read the skipped lists of earlier versions)."""
    h5py = _h5()
    parts = sorted(parts_dir(out).glob("part-*.h5"))
    sources = ([out] if out.is_file() else []) + parts

    def fill(f):
        skipped: list[tuple[str, str]] = []
        for src_path in sources:
            with h5py.File(src_path, "r") as src:
                keys, sk = _keys_in(src_path, known)
                for k in sorted(keys):
                    if k not in f:
                        src.copy(src[k], f, name=k)
                skipped += sk
        _write_skipped(f, sorted(set(skipped)), cfg.format)
        f.attrs.update(_settings(cfg))
        f.attrs["ssfeat_version"] = __version__

    write_h5_atomic(out, fill, _libver(cfg))
    remove_parts(out, parts)
    return out


def read_features(path: str | Path, key: str):
    """The :class:`~ssfeat.features.Features` of image ``key`` stored in a feature file: ssfeat's
    layout, or hloc's (``ssfeat extract --format hloc``, or a file hloc's ``extract_features`` wrote)."""
    h5py = _h5()
    with h5py.File(path, "r") as f:
        if key not in f or "keypoints" not in f[key]:
            raise KeyError(f"{path}: no features for {key!r}")
        g = f[key]
        if isinstance(g.get("image_size"), h5py.Dataset):  # hloc layout
            return Features.from_hloc(g)
        H, W = (int(v) for v in g.attrs["image_size"])
        return Features(
            g["keypoints"][()],
            g["scales"][()],
            g["orientations"][()],
            g["scores"][()],
            (H, W),
            g["descriptors"][()] if "descriptors" in g else None,
            g["parents"][()] if "parents" in g else None,
        )
