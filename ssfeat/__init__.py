"""ssfeat: self-supervised learning of local image-feature geometry.

Public API::

    from ssfeat import PatchPoseEstimator, build_pipeline, read_image, sample_images
    est = PatchPoseEstimator.from_pretrained()   # bundled patch-pose weights, offline
    photos = sample_images()                     # the bundled sample photos (paths)
    pipe = build_pipeline("ssfeat")              # detect -> orient -> describe -> match
    result = pipe(read_image(photos[0]), read_image(photos[1]))  # result.matches.idx: (M, 2)

The four model kinds and their inference APIs:

- patch pose (scale and orientation of a patch): ``PatchPoseEstimator`` over ``PatchPoseNet``
- oriented keypoints: ``KeypointDetector`` (``DetectConfig``)
- local descriptors: ``LearnedDescriptor``
- homography regression (warp): ``WarpReranker``, used with ``GlobalDescriptor`` for retrieval
"""

__version__ = "0.1.0"

from .data.images import read_image, sample_images  # noqa: E402
from .detector import DetectConfig, KeypointDetector  # noqa: E402
from .estimator import PatchPoseEstimator, PoseOutput, TopKPoses  # noqa: E402
from .features import Features  # noqa: E402
from .models import PatchPoseConfig, PatchPoseNet  # noqa: E402
from .pipeline import LearnedDescriptor, Pipeline, build_pipeline  # noqa: E402
from .retrieval import GlobalDescriptor, WarpReranker  # noqa: E402

__all__ = [
    "DetectConfig",
    "Features",
    "GlobalDescriptor",
    "KeypointDetector",
    "LearnedDescriptor",
    "PatchPoseConfig",
    "PatchPoseEstimator",
    "PatchPoseNet",
    "Pipeline",
    "PoseOutput",
    "TopKPoses",
    "WarpReranker",
    "__version__",
    "build_pipeline",
    "read_image",
    "sample_images",
]
