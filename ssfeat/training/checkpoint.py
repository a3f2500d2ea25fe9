"""Training checkpoints (``last.pt``, ``best.pt``): written atomically, with the task name, the typed
config and the ssfeat version. Reading one back (and the model in it) is
:mod:`ssfeat.models.weights`' job; this module adds the typed training config."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.weights import CHECKPOINT_VERSION, checkpoint_file, load_checkpoint
from .configs import LoopConfig
from .tasks import TASKS


def config_from_checkpoint(ckpt: dict) -> LoopConfig:
    """The typed training config stored in a checkpoint (``task`` "pose", the default, "detector"
    or "descriptor")."""
    task = ckpt.get("task", "pose")
    if task not in TASKS:
        raise ValueError(f"unknown training task {task!r} in the checkpoint")
    try:
        return TASKS[task].config_class.from_dict(ckpt["config"])
    except ValueError as e:  # a stored value this version refuses
        raise ValueError(f"the checkpoint's {task} config is not valid for this ssfeat version: {e}") from e


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = [
    "CHECKPOINT_VERSION",
    "checkpoint_file",
    "config_from_checkpoint",
    "load_checkpoint",
    "save_atomic",
]
