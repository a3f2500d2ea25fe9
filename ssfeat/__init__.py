"""ssfeat: self-supervised learning of local image-feature geometry.

Public API::

    from ssfeat import PatchPoseEstimator
    est = PatchPoseEstimator.from_pretrained()   # bundled weights, offline
    photos = sample_images()                     # the bundled sample photos (paths)
"""

__version__ = "0.1.0"

from .data.images import sample_images  # noqa: E402
from .estimator import PatchPoseEstimator, PoseOutput, TopKPoses  # noqa: E402
from .models import PatchPoseConfig, PatchPoseNet  # noqa: E402

__all__ = [
    "PatchPoseConfig",
    "PatchPoseEstimator",
    "PatchPoseNet",
    "PoseOutput",
    "TopKPoses",
    "__version__",
    "sample_images",
]
