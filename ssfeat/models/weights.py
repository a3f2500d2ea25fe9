"""Weights files and run folders: save any registered network as safetensors with its config in the
metadata, and load one back from a bundled name, a ``.safetensors`` file or a training run.

Bundled weights ship inside the package (``ssfeat/weights``); nothing is ever downloaded. This
module reads training checkpoints (``best.pt`` / ``last.pt``: a dict with ``"task"``, ``"config"``,
``"model"`` and optionally ``"ema"``) but knows nothing of the training code that writes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import resources
from os import PathLike
from pathlib import Path

import torch
from torch import nn

from ..version import __version__
from .descriptor import DescriptorNet
from .detector import OrientedKeypointNet
from .patch_pose import PatchPoseNet
from .registry import MODEL_KINDS, ModelKind, kind_of
from .scale_pose import LogPolarScaleNet
from .warp import WarpNet

CHECKPOINT_VERSION = 1  # of the training checkpoints (``ssfeat.training.checkpoint`` writes them)


def check_path(name_or_path, what: str) -> None:
    """Refuse anything but a str or path (e.g. an already loaded model) with a ``TypeError``."""
    if not isinstance(name_or_path, (str, PathLike)):
        raise TypeError(f"{what} must be a str or path, got {type(name_or_path).__name__}")


def weights_target(path: str | Path) -> Path:
    """``path`` as a weights file to write (a folder is refused)."""
    check_path(path, "the weights file to write")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the weights file to write, e.g. {path / 'weights.safetensors'}")
    return path


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (torch's and safetensors' run over many lines)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_weights(model: nn.Module, path: str | Path, half: bool = False) -> Path:
    """Write a registered network's weights and config (see :data:`MODEL_KINDS`) to a safetensors
    file. ``half`` stores floating-point tensors as float16 (half the size; they are cast back to
    the model's float32 on loading).

    Raises:
        TypeError: not a registered network.
        ValueError: ``path`` is a folder.
        OSError: the file cannot be written (the path is named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    fmt = kind_of(model).weights_format
    path = weights_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot write {path}: {e.strerror or first_line(e)}") from e
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": fmt, "config": json.dumps(dataclasses.asdict(model.config)), "ssfeat_version": __version__}
    try:
        save_file(state, str(path), metadata=meta)
        honour_umask(path)
    except (SafetensorError, OSError) as e:  # SafetensorError (e.g. an unwritable folder) is no OSError
        raise OSError(f"cannot write {path}: {first_line(e)}") from e
    return path


def honour_umask(path: str | Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would: ``0o666`` less the process umask
    (safetensors and ``tempfile.mkstemp`` create files readable by their owner only, 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def bundled_path(name: str = "patchpose") -> Path:
    """The file of a bundled model (any kind) by name.

    Raises:
        ValueError: not a bundled name.
    """
    files = {n: f for k in MODEL_KINDS.values() for n, f in k.bundled.items()}
    if name not in files:
        raise ValueError(f"unknown bundled model {name!r}, expected one of {sorted(files)}")
    return Path(str(resources.files("ssfeat") / "weights" / files[name]))


def load_network(kind: str, name_or_path: str | Path) -> nn.Module:
    """A network of ``kind`` (a :data:`MODEL_KINDS` key; eval mode): bundled name, ``.safetensors``
    file, or run folder / checkpoint of that kind.

    Raises:
        TypeError: ``name_or_path`` is not a str or path.
        ValueError: missing/foreign file, or weights of another kind of model.
    """
    k = MODEL_KINDS[kind]
    check_path(name_or_path, f"the {k.what} model (a bundled name, one of {', '.join(k.bundled)}, or a file)")
    name = str(name_or_path)
    other = next((o for o in MODEL_KINDS.values() if o is not k and name in o.bundled), None)
    if other is not None and name not in k.bundled and not Path(name).exists():
        raise ValueError(f"{name!r} is the bundled {other.name} model, not a {k.what} model ({', '.join(k.bundled)})")
    path = bundled_path(name) if name in k.bundled else Path(name)
    if path.is_dir() or path.suffix == ".pt":
        model = model_from_checkpoint(path)
        if not isinstance(model, k.network):
            raise ValueError(f"{path}: a {type(model).__name__} run, not a {k.what} training run")
        return model
    meta, state = _read_weights(path, k)
    try:
        net = k.network(k.config.from_dict(json.loads(meta["config"])))
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # ValueError includes json.JSONDecodeError
        raise ValueError(f"{path}: weights do not match this ssfeat version ({first_line(e)})") from e
    return net.eval()


def load_pose_model(name_or_path: str | Path = "patchpose") -> PatchPoseNet:
    """A :class:`PatchPoseNet` (eval mode): bundled name, ``.safetensors`` file or pose run folder."""
    return load_network("pose", name_or_path)


def load_scale_model(name_or_path: str | Path = "scalepose") -> LogPolarScaleNet:
    """A :class:`LogPolarScaleNet` (eval mode): bundled name, ``.safetensors`` file or scale-pose run."""
    return load_network("scalepose", name_or_path)


def load_detector_model(name_or_path: str | Path = "detector") -> OrientedKeypointNet:
    """An :class:`OrientedKeypointNet` (eval mode): bundled name, ``.safetensors`` file or detector run."""
    return load_network("detector", name_or_path)


def load_descriptor_model(name_or_path: str | Path = "descriptor") -> DescriptorNet:
    """A :class:`DescriptorNet` (eval mode): bundled name, ``.safetensors`` file or descriptor run."""
    return load_network("descriptor", name_or_path)


def load_warp_model(name_or_path: str | Path = "warp") -> WarpNet:
    """A :class:`WarpNet` (eval mode): bundled name, ``.safetensors`` file or warp training run."""
    return load_network("warp", name_or_path)


def _read_weights(path: Path, kind: ModelKind) -> tuple[dict, dict]:
    """Metadata and tensors of a safetensors file of ``kind``'s format (clear errors otherwise)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a safetensors weights file ({first_line(e)})") from e
    if meta.get("format") != kind.weights_format:
        raise ValueError(f"{path}: not an ssfeat {kind.what} weights file (format {meta.get('format')!r})")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{path}: weights contain NaN or Inf ({', '.join(bad[:3])}); the training diverged")
    return meta, state


def checkpoint_file(run: str | Path) -> Path:
    """``best.pt`` (else ``last.pt``) of a run folder, or the file itself."""
    run = Path(run)
    if run.is_dir():
        for name in ("best.pt", "last.pt"):
            if (run / name).is_file():
                return run / name
        raise ValueError(f"{run}: no best.pt or last.pt in this run folder")
    return run


def load_checkpoint(path: str | Path) -> dict:
    """Load a training checkpoint (CPU tensors) and check its version.

    Raises:
        ValueError: not an ssfeat checkpoint or written by an incompatible version.
    """
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's own messages run over many lines and suggest weights_only=False,
        # which is unsafe for files from elsewhere: name the failure instead
        raise ValueError(
            f"{path}: not an ssfeat checkpoint (truncated, or not a PyTorch file: {type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an ssfeat checkpoint")
    if ckpt.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt.get('checkpoint_version')} is not supported "
            f"(this ssfeat reads version {CHECKPOINT_VERSION})"
        )
    return ckpt


def model_from_checkpoint(run: str | Path, average: bool = True) -> nn.Module:
    """The network of a training run (eval mode; the kind its checkpoint's ``task`` names): the
    run's weight average when it kept one (``ema_decay > 0``) and ``average`` is set, else the
    trained weights of the checkpoint's step."""
    path = checkpoint_file(run)
    ckpt = load_checkpoint(path)
    task = ckpt.get("task", "pose")
    if task not in MODEL_KINDS:
        raise ValueError(f"unknown training task {task!r} in the checkpoint")
    k = MODEL_KINDS[task]
    try:
        model = k.network(k.config.from_dict(ckpt["config"].get("model", {})))
        model.load_state_dict(ckpt["ema"] if average and "ema" in ckpt else ckpt["model"], strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path}: checkpoint does not match this ssfeat version ({first_line(e)})") from e
    return model.eval()


__all__ = [
    "CHECKPOINT_VERSION",
    "bundled_path",
    "check_path",
    "checkpoint_file",
    "first_line",
    "honour_umask",
    "load_checkpoint",
    "load_descriptor_model",
    "load_detector_model",
    "load_network",
    "load_pose_model",
    "load_scale_model",
    "load_warp_model",
    "model_from_checkpoint",
    "save_weights",
    "weights_target",
]
