"""Training checkpoints (``last.pt``, ``best.pt``): written atomically, with the task name, the typed
config and the ssfeat version. Reading one back (and the model in it) is
:mod:`ssfeat.models.weights`' job; this module adds the typed training config."""

from __future__ import annotations

from pathlib import Path

import torch

from ..files import atomic_write
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
    """``torch.save`` to ``path`` with :func:`ssfeat.files.atomic_write`: a crash or a full disk
    mid-write leaves the previous file intact and no temporary file behind.

    Raises:
        OSError: ``"cannot write PATH: REASON"``.
    """
    with atomic_write(path) as f:
        torch.save(obj, f)


__all__ = [
    "CHECKPOINT_VERSION",
    "checkpoint_file",
    "config_from_checkpoint",
    "load_checkpoint",
    "save_atomic",
]
