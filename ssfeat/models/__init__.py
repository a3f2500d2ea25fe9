"""Networks."""

from .patch_pose import PatchPoseConfig, PatchPoseNet

MODELS = {"patch_pose": PatchPoseNet}

__all__ = ["MODELS", "PatchPoseConfig", "PatchPoseNet"]
