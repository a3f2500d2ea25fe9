"""Pipeline detectors ``(image) -> Features``: OpenCV SIFT, ssfeat's learned detector, kornia's
Hessian blobs."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..data.images import to_uint8
from ..features import Features, strongest_distinct
from ..inference.detector import DetectConfig, KeypointDetector


class SIFTDetector:
    """OpenCV SIFT keypoints: the ``max_keypoints`` strongest distinct locations, with SIFT's size,
    its dominant orientation and response. (SIFT repeats a location once per secondary orientation
    peak; only the strongest entry is kept so that every pipeline gets the same keypoint budget.)"""

    def __init__(self, max_keypoints: int = 1000, contrast_threshold: float = 0.04) -> None:
        if max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
        self.max_keypoints = max_keypoints
        self.sift = cv2.SIFT_create(nfeatures=0, contrastThreshold=contrast_threshold)

    def __call__(self, image: np.ndarray) -> Features:
        keep = strongest_distinct(self.sift.detect(to_uint8(image), None), self.max_keypoints)
        return Features.from_cv2(keep, image.shape)


class LearnedDetector:
    """ssfeat's equivariant keypoint detector (:class:`ssfeat.inference.detector.KeypointDetector`): keypoints
    with the network's own orientation and the pyramid level's size."""

    def __init__(
        self, max_keypoints: int = 1000, weights: str = "detector", detector=None, device: str | torch.device = "cpu"
    ) -> None:
        if max_keypoints < 1:
            raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
        self.max_keypoints = max_keypoints
        cfg = DetectConfig(max_keypoints=max_keypoints)
        self.detector = detector or KeypointDetector.from_pretrained(weights, cfg, device=device)
        self.detector.config.max_keypoints = max_keypoints

    def __call__(self, image: np.ndarray) -> Features:
        return self.detector(image)


class KorniaHessianDetector:
    """kornia's ``ScaleSpaceDetector`` (Hessian blobs, scale-space NMS) with kornia's dominant
    gradient orientation (``LAFOrienter``); no learned weights."""

    def __init__(self, max_keypoints: int = 1000, mr_size: float = 6.0) -> None:
        from kornia.feature import BlobHessian, LAFOrienter, ScaleSpaceDetector

        self.max_keypoints, self.mr_size = max_keypoints, mr_size
        self.op = ScaleSpaceDetector(
            max_keypoints, mr_size=mr_size, resp_module=BlobHessian(), ori_module=LAFOrienter(32)
        ).eval()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Features:
        lafs, resp = self.op(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None])
        keep = resp[0] > 0
        f = Features.from_laf(lafs[:, keep], image.shape, self.mr_size)
        f.scores = resp[0, keep].float().numpy()
        return f


__all__ = ["KorniaHessianDetector", "LearnedDetector", "SIFTDetector"]
