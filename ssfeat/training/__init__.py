"""Self-supervised training of the four kinds of model: configs (:mod:`.configs`), checkpoints
(:mod:`.checkpoint`), the loop (:func:`fit`), the losses and one task per model
(:data:`~ssfeat.training.tasks.TASKS`)."""

from .checkpoint import config_from_checkpoint, load_checkpoint
from .configs import (
    DescriptorTrainConfig,
    DetectorTrainConfig,
    LoopConfig,
    PoseTrainConfig,
    ScalePoseTrainConfig,
    WarpTrainConfig,
)
from .inputs import split_images
from .loop import fit
from .tasks import TASKS, TrainingTask, task_for

__all__ = [
    "TASKS",
    "DescriptorTrainConfig",
    "DetectorTrainConfig",
    "LoopConfig",
    "PoseTrainConfig",
    "ScalePoseTrainConfig",
    "TrainingTask",
    "WarpTrainConfig",
    "config_from_checkpoint",
    "fit",
    "load_checkpoint",
    "split_images",
    "task_for",
]
