"""Networks, the model registry (:data:`MODEL_KINDS`) and weights files."""

from .descriptor import DescriptorConfig, DescriptorNet
from .detector import DetectorConfig, OrientedKeypointNet
from .patch_pose import PatchPoseConfig, PatchPoseNet
from .registry import MODEL_KINDS, ModelKind
from .scale_pose import LogPolarScaleNet, ScalePoseConfig
from .warp import WarpConfig, WarpNet

__all__ = [
    "MODEL_KINDS",
    "DescriptorConfig",
    "DescriptorNet",
    "DetectorConfig",
    "LogPolarScaleNet",
    "ModelKind",
    "OrientedKeypointNet",
    "PatchPoseConfig",
    "PatchPoseNet",
    "ScalePoseConfig",
    "WarpConfig",
    "WarpNet",
]
