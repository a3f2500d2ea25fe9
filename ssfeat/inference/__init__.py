"""Inference APIs of the four kinds of model: patch pose (:class:`PatchPoseEstimator`), oriented
keypoints (:class:`KeypointDetector`), local descriptors (:class:`LearnedDescriptor`) and
retrieval with homography re-ranking (:class:`GlobalDescriptor`, :class:`WarpReranker`)."""

from .descriptor import LearnedDescriptor, SIFTDescriptor
from .detector import DetectConfig, KeypointDetector
from .kornia_modules import KorniaOrientation, KorniaScale
from .pose import KeypointPoses, PatchPoseEstimator, PoseOutput, TopKPoses
from .retrieval import GlobalDescriptor, WarpReranker

__all__ = [
    "DetectConfig",
    "GlobalDescriptor",
    "KeypointDetector",
    "KeypointPoses",
    "KorniaOrientation",
    "KorniaScale",
    "LearnedDescriptor",
    "PatchPoseEstimator",
    "PoseOutput",
    "SIFTDescriptor",
    "TopKPoses",
    "WarpReranker",
]
