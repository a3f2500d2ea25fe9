"""Weights files: save/load PatchPoseNet, OrientedKeypointNet and DescriptorNet as safetensors with
their config in the metadata.

Bundled weights ship inside the package (``ssfeat/weights``); nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from importlib import resources
from os import PathLike
from pathlib import Path

from . import __version__
from .models.patch_pose import PatchPoseConfig, PatchPoseNet

logger = logging.getLogger(__name__)

WEIGHTS_FORMAT = "ssfeat-patchpose-1"
DETECTOR_FORMAT = "ssfeat-detector-1"
# bundled name -> file in ssfeat/weights
BUNDLED = {
    # default estimator: tiny backbone with adaptive C4, the fastest model that reaches the best
    # orientation accuracy (BENCHMARKS.md); the matching pipelines use it in a single pass
    "patchpose": "patchpose_tiny.safetensors",
    "patchpose_tiny": "patchpose_tiny.safetensors",
    "patchpose_fast": "patchpose_fast.safetensors",  # wider backbone, 4x the FLOPs
}


# bundled detector / descriptor name -> file in ssfeat/weights
BUNDLED_DETECTORS = {"detector": "detector.safetensors"}
DESCRIPTOR_FORMAT = "ssfeat-descriptor-1"
BUNDLED_DESCRIPTORS = {"descriptor": "descriptor.safetensors"}
WARP_FORMAT = "ssfeat-warp-1"
BUNDLED_WARPS = {"warp": "warp.safetensors"}  # float16 on disk


def _kinds() -> dict[str, tuple]:
    """Training task -> (weights format, model class, config class, bundled names)."""
    from .models.descriptor import DescriptorConfig, DescriptorNet
    from .models.detector import DetectorConfig, OrientedKeypointNet
    from .models.warp import WarpConfig, WarpNet

    return {
        "pose": (WEIGHTS_FORMAT, PatchPoseNet, PatchPoseConfig, BUNDLED),
        "detector": (DETECTOR_FORMAT, OrientedKeypointNet, DetectorConfig, BUNDLED_DETECTORS),
        "descriptor": (DESCRIPTOR_FORMAT, DescriptorNet, DescriptorConfig, BUNDLED_DESCRIPTORS),
        "warp": (WARP_FORMAT, WarpNet, WarpConfig, BUNDLED_WARPS),
    }


def _check_path(name_or_path, what: str) -> None:
    if not isinstance(name_or_path, (str, PathLike)):
        raise TypeError(f"{what} must be a str or path, got {type(name_or_path).__name__}")


def _weights_target(path: str | Path) -> Path:
    """``path`` as a weights file to write (a folder is refused)."""
    _check_path(path, "the weights file to write")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the weights file to write, e.g. {path / 'weights.safetensors'}")
    return path


def save_weights(model, path: str | Path, half: bool = False) -> Path:
    """Write a PatchPoseNet's, OrientedKeypointNet's, DescriptorNet's or WarpNet's weights and config
    to a safetensors file. ``half`` stores floating-point tensors as float16 (half the size; they
    are cast back to the model's float32 on loading).

    Raises:
        TypeError: not one of those models.
        ValueError: ``path`` is a folder.
        OSError: the file cannot be written (the path is named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    fmt = next((k[0] for k in _kinds().values() if type(model) is k[1]), None)
    if fmt is None:
        raise TypeError(f"cannot save a {type(model).__name__}")
    path = _weights_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or _first_line(e)}") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": fmt,
        "config": json.dumps(dataclasses.asdict(model.config)),
        "ssfeat_version": __version__,
    }
    try:
        save_file(state, str(path), metadata=meta)
    except (SafetensorError, OSError) as e:  # SafetensorError (e.g. an unwritable folder) is no OSError
        raise OSError(f"cannot write {path}: {_first_line(e)}") from e
    return path


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's and safetensors' run over many lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _load_kind(name_or_path: str | Path, task: str, what: str):
    """A model of training task ``task`` (eval mode): bundled name, ``.safetensors`` file or run
    folder / checkpoint of that task."""
    kinds = _kinds()
    fmt, model_cls, config_cls, bundled = kinds[task]
    _check_path(name_or_path, f"the {what} model (bundled name or weights file)")
    name = str(name_or_path)
    other = next((k for k, v in kinds.items() if k != task and name in v[3]), None)
    if other is not None and name not in bundled and not Path(name).exists():
        raise ValueError(f"{name!r} is the bundled {other} model, not a {what} model ({', '.join(bundled)})")
    path = Path(str(resources.files("ssfeat") / "weights" / bundled[name])) if name in bundled else Path(name)
    if path.is_dir() or path.suffix == ".pt":
        model = model_from_checkpoint(path)
        if not isinstance(model, model_cls):
            raise ValueError(f"{path}: not a {what} training run")
        return model
    meta, state = _read_weights(path, fmt, what)
    try:
        net = model_cls(config_cls.from_dict(json.loads(meta["config"])))
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # ValueError includes json.JSONDecodeError
        raise ValueError(f"{path}: weights do not match this ssfeat version ({_first_line(e)})") from e
    return net.eval()


def load_detector(name_or_path: str | Path = "detector"):
    """An OrientedKeypointNet (eval mode): bundled name, ``.safetensors`` file or detector run folder.

    Raises:
        ValueError: missing/foreign file, or weights of another kind of model.
    """
    return _load_kind(name_or_path, "detector", "detector")


def load_warp(name_or_path: str | Path = "warp"):
    """A WarpNet (eval mode): bundled name, ``.safetensors`` file or warp training run folder."""
    return _load_kind(name_or_path, "warp", "homography-regression")


def load_descriptor(name_or_path: str | Path = "descriptor"):
    """A DescriptorNet (eval mode): bundled name, ``.safetensors`` file or descriptor run folder.

    Raises:
        ValueError: missing/foreign file, or weights of another kind of model.
    """
    return _load_kind(name_or_path, "descriptor", "descriptor")


def _read_weights(path: Path, fmt: str, what: str) -> tuple[dict, dict]:
    """Metadata and tensors of a safetensors file of format ``fmt`` (clear errors otherwise)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a safetensors weights file ({_first_line(e)})") from e
    if meta.get("format") != fmt:
        raise ValueError(f"{path}: not an ssfeat {what} weights file (format {meta.get('format')!r})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{path}: weights contain NaN or Inf ({', '.join(bad[:3])}); the training diverged")
    return meta, state


def load_weights(path: str | Path) -> PatchPoseNet:
    """Build a PatchPoseNet from a weights file written by :func:`save_weights` (strict load).

    Raises:
        ValueError: the file is missing, not safetensors, or not an ssfeat patch-pose file.
    """
    return _load_kind(path, "pose", "patch-pose")


def bundled_path(name: str = "patchpose") -> Path:
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled model {name!r}, expected one of {sorted(BUNDLED)}")
    return Path(str(resources.files("ssfeat") / "weights" / BUNDLED[name]))


def load_model(name_or_path: str | Path = "patchpose") -> PatchPoseNet:
    """A bundled model by name, a ``.safetensors`` weights file, or a training checkpoint / run folder.

    Raises:
        TypeError: ``name_or_path`` is not a str or path.
        ValueError: unknown name, missing or foreign file.
    """
    _check_path(name_or_path, f"name_or_path (a bundled model name, one of {', '.join(BUNDLED)}, or a file)")
    if str(name_or_path) in BUNDLED:
        return load_weights(bundled_path(str(name_or_path)))
    p = Path(name_or_path)
    if p.is_dir() or p.suffix == ".pt":
        model = model_from_checkpoint(p)
        if not isinstance(model, PatchPoseNet):
            raise ValueError(f"{p}: a {type(model).__name__} run, not a patch-pose run")
        return model
    return load_weights(p)


def checkpoint_file(run: str | Path) -> Path:
    """``best.pt`` (else ``last.pt``) of a run folder, or the file itself."""
    run = Path(run)
    if run.is_dir():
        for name in ("best.pt", "last.pt"):
            if (run / name).is_file():
                return run / name
        raise ValueError(f"{run}: no best.pt or last.pt in this run folder")
    return run


def model_from_checkpoint(run: str | Path, average: bool = True):
    """The model of a training run (PatchPoseNet, OrientedKeypointNet or DescriptorNet, eval mode):
    the run's weight average when it kept one (``ema_decay > 0``) and ``average`` is set, else the
    trained weights of the checkpoint's step."""
    from .training import config_from_checkpoint, load_checkpoint

    path = checkpoint_file(run)
    ckpt = load_checkpoint(path)
    try:
        cfg = config_from_checkpoint(ckpt)
        model = _kinds()[ckpt.get("task", "pose")][1](cfg.model)
        model.load_state_dict(ckpt["ema"] if average and "ema" in ckpt else ckpt["model"], strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: checkpoint does not match this ssfeat version ({_first_line(e)})") from e
    return model.eval()


def export(
    run: str | Path,
    out: str | Path,
    c4: bool | None = None,
    half: bool = False,
    c4_below: float | str | None = None,
    average: bool = True,
) -> Path:
    """Export the best (else last) checkpoint of a training run to a safetensors weights file.

    ``c4`` switches the averaging over the four 90-degree rotations on or off at inference
    (the weights are unchanged; ``None`` keeps the training setting); ``half`` stores float16.
    ``c4_below`` (patch-pose models) stores an adaptive C4 threshold, or ``"auto"``: the one
    :func:`ssfeat.evaluation.benchmarks.calibrate_c4_below` picks on the run's own validation photos.
    ``average=False`` exports the trained weights of a run that also kept a weight average (``--ema``)."""
    _weights_target(out)  # before the (possibly slow) calibration
    model = model_from_checkpoint(run, average)
    if c4 is not None or c4_below is not None:
        _require_pose(model)
    if c4 is not None:
        model.set_c4(c4)
    if c4_below == "auto":
        c4_below = calibrate_run_c4_below(run, model)[0]
    if c4_below is not None:
        model.set_c4_below(float(c4_below))
    return save_weights(model, out, half)


def _require_pose(model) -> None:
    if not isinstance(model, PatchPoseNet):
        raise ValueError("--c4/--c4-below apply to patch-pose runs only")


def calibrate_run_c4_below(run: str | Path, model: PatchPoseNet, n_pairs: int = 2000) -> tuple[float, list[dict]]:
    """Adaptive C4 threshold of a patch-pose run, chosen on its validation photos (the images its
    training held out), with the benchmark's pair protocol."""
    from .data.synthesis import PairSynthesizer
    from .evaluation.benchmarks import calibrate_c4_below, paper_protocol
    from .training import _split_images, config_from_checkpoint, load_checkpoint

    _require_pose(model)
    cfg = config_from_checkpoint(load_checkpoint(checkpoint_file(run)))
    _, _, vpaths, vimages = _split_images(cfg)
    pcfg = paper_protocol(cfg.pairs, seed=cfg.pairs.seed + 2)
    threshold, rows = calibrate_c4_below(model, PairSynthesizer(vimages, pcfg, [str(p) for p in vpaths]), n_pairs)
    logger.info("adaptive C4 on %d validation photos: c4_below = %g", len(vimages), threshold)
    return threshold, rows
