"""Rows of the matching benchmark for rotation-compensating pipelines: image-1 features turned upright
by the estimated rotation, and that estimate against the true homography."""

from __future__ import annotations

import math

import torch

from ..geometry import local_rotation_scale, wrap_angle
from ..pipeline import Pipeline


def compensated_features(pipe: Pipeline, pair, im0, im1, cache: dict) -> tuple:
    """The rotation a compensating pipeline estimates for ``pair`` and its image-1 features, turned
    upright by it (the estimator's own features cached per image in ``cache``)."""
    for path, im in ((pair.path0, im0), (pair.path1, im1)):
        if path not in cache:
            cache[path] = pipe.rotation.features(im)
    r = pipe.rotation.from_features(cache[pair.path0], cache[pair.path1])
    cache.pop(pair.path1)
    return r, pipe.extract_upright(im1, r)


def rotation_row(r, pair, shape0: tuple[int, int]) -> dict:
    """The estimated relative rotation of a pair against the true homography's local rotation at the
    centre of image 0 (degrees)."""
    H, W = shape0
    centre = torch.tensor([[(W - 1) / 2, (H - 1) / 2]], dtype=torch.float64)
    truth = local_rotation_scale(centre, torch.from_numpy(pair.H_0to1))[0]
    err = abs(wrap_angle(r.angle - float(truth[0]) + math.pi) - math.pi)
    return {
        "rotation_deg": round(math.degrees(r.angle), 2),
        "rotation_error_deg": round(math.degrees(err), 2),
        "rotation_confidence": round(r.confidence, 4),
    }


__all__ = ["compensated_features", "rotation_row"]
