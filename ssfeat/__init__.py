"""ssfeat: self-supervised learning of local image-feature geometry.

Public API::

    from ssfeat import PatchPoseEstimator
    est = PatchPoseEstimator.from_pretrained()   # bundled weights, offline
"""

__version__ = "0.1.0"

from .estimator import PatchPoseEstimator, PoseOutput, TopKPoses  # noqa: E402
from .models import PatchPoseConfig, PatchPoseNet  # noqa: E402

__all__ = ["PatchPoseConfig", "PatchPoseEstimator", "PatchPoseNet", "PoseOutput", "TopKPoses", "__version__"]
