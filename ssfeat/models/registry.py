"""The model registry: one row per kind of model ssfeat trains and ships.

Adding a kind of model = its network module under :mod:`ssfeat.models`, one row of
:data:`MODEL_KINDS` here, and (to train it) one task module under :mod:`ssfeat.training.tasks`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .descriptor import DescriptorConfig, DescriptorNet
from .detector import DetectorConfig, OrientedKeypointNet
from .patch_pose import PatchPoseConfig, PatchPoseNet
from .scale_pose import LogPolarScaleNet, ScalePoseConfig
from .warp import WarpConfig, WarpNet


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: its network and config classes, the format tag of its weights files and
    its bundled weights (name -> file in ``ssfeat/weights``)."""

    name: str  # also the training task and the checkpoint's "task" entry
    what: str  # how messages name it ("patch-pose", "detector", ...)
    network: type[nn.Module]
    config: type
    weights_format: str
    bundled: dict[str, str]


MODEL_KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        ModelKind(
            "pose",
            "patch-pose",
            PatchPoseNet,
            PatchPoseConfig,
            "ssfeat-patchpose-1",
            {
                # default estimator: tiny backbone with adaptive C4, the fastest model that reaches the
                # best orientation accuracy; the matching pipelines use it in a single pass
                "patchpose": "patchpose_tiny.safetensors",
                "patchpose_tiny": "patchpose_tiny.safetensors",
                "patchpose_fast": "patchpose_fast.safetensors",  # wider backbone, 4x the FLOPs
            },
        ),
        ModelKind(
            "scalepose",
            "scale-pose",
            LogPolarScaleNet,
            ScalePoseConfig,
            "ssfeat-scalepose-1",
            # the scale network of the scale-covariant keypoint pose (PatchPoseEstimator.keypoint_poses)
            {"scalepose": "scalepose.safetensors"},
        ),
        ModelKind(
            "detector",
            "detector",
            OrientedKeypointNet,
            DetectorConfig,
            "ssfeat-detector-1",
            {"detector": "detector.safetensors"},
        ),
        ModelKind(
            "descriptor",
            "descriptor",
            DescriptorNet,
            DescriptorConfig,
            "ssfeat-descriptor-1",
            {"descriptor": "descriptor.safetensors"},
        ),
        ModelKind(
            "warp",
            "homography-regression",
            WarpNet,
            WarpConfig,
            "ssfeat-warp-1",
            {"warp": "warp.safetensors"},  # float16 on disk
        ),
    )
}


def kind_of(model: nn.Module) -> ModelKind:
    """The registry row of a network instance.

    Raises:
        TypeError: not a registered network.
    """
    for k in MODEL_KINDS.values():
        if type(model) is k.network:
            return k
    raise TypeError(f"cannot save a {type(model).__name__}")


__all__ = ["MODEL_KINDS", "ModelKind", "kind_of"]
