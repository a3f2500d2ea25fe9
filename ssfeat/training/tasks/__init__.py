"""Training tasks: one module per kind of model, each a class following :class:`TrainingTask`,
registered in :data:`TASKS` (keys: the :data:`ssfeat.models.MODEL_KINDS` names, also the
checkpoint's ``"task"`` entry)."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

from ..configs import LoopConfig
from .descriptor import DescriptorTask
from .detector import DetectorTask
from .pose import PoseTask
from .scalepose import ScalePoseTask
from .warp import WarpTask


class TrainingTask(Protocol):
    """What :func:`ssfeat.training.fit` needs of a task: its model, its training and validation
    pair synthesisers, deterministic batches, the loss and the validation scores."""

    name: ClassVar[str]  # registry / checkpoint name
    config_class: ClassVar[type[LoopConfig]]  # its training config
    postfix: ClassVar[dict[str, str]]  # progress-bar label -> validation metric

    def __init__(self, cfg: Any) -> None: ...

    def build_model(self) -> torch.nn.Module:
        """A new (randomly initialised) network of ``cfg.model``."""
        ...

    def init_state(self, path: str) -> dict:
        """The state dict of fine-tuning weights ``path`` (same architecture)."""
        ...

    def synthesizers(self) -> tuple[Any, Any]:
        """Training and validation pair synthesisers (split by image)."""
        ...

    def make_batch(self, synth: Any, indices) -> dict:
        """The batch of samples ``indices`` (a pure function of them)."""
        ...

    def val_batch(self, synth: Any) -> dict:
        """The fixed validation batch."""
        ...

    def loss(self, net: torch.nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch and its named parts."""
        ...

    def evaluate(self, model: torch.nn.Module, val: dict) -> dict[str, float]:
        """Validation metrics of ``model`` on the validation batch."""
        ...

    @staticmethod
    def score(m: dict[str, float]) -> float:
        """The number ``best.pt`` maximises."""
        ...


TASKS: dict[str, type[TrainingTask]] = {
    t.name: t for t in (PoseTask, ScalePoseTask, DetectorTask, DescriptorTask, WarpTask)
}


def task_name(cfg: LoopConfig) -> str:
    """The task name of a training config (a :data:`TASKS` key)."""
    return next((k for k, t in TASKS.items() if isinstance(cfg, t.config_class)), type(cfg).__name__)


def task_for(cfg: LoopConfig) -> TrainingTask:
    """The task that trains with ``cfg``.

    Raises:
        TypeError: no task takes this config type.
    """
    for t in TASKS.values():
        if type(cfg) is t.config_class:
            return t(cfg)
    raise TypeError(f"no training task for {type(cfg).__name__}")


__all__ = [
    "TASKS",
    "DescriptorTask",
    "DetectorTask",
    "PoseTask",
    "ScalePoseTask",
    "TrainingTask",
    "WarpTask",
    "task_for",
    "task_name",
]
