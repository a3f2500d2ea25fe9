"""Affine view synthesis (ASIFT-style) around any feature extractor."""

from __future__ import annotations

import math
from dataclasses import replace

import cv2
import numpy as np
import torch

from ..features import Features, concat_features
from ..geometry import inside_image, map_orientations, warp_points


class AffineViews:
    """Affine view synthesis (ASIFT-style): run a whole extractor on simulated tilted views of the
    image and map the features back, so that similarity-covariant features also match across strong
    viewpoint changes.

    A view of tilt ``t`` and longitude ``phi`` rotates the image by ``phi`` (about its centre, on a
    canvas that holds all of it), blurs it along x by ``0.8 sqrt(t^2 - 1)`` px (antialiasing) and
    shrinks x by ``t``. Tilts ``tilts`` (plus the original image) and, per tilt, ``phi`` in
    ``[0, 180)`` degrees in steps of ``base_step_deg / t`` (ASIFT's sampling). Descriptors are
    computed in the view; keypoints are mapped back to the image and those falling outside it are
    dropped; orientations map through the view's linear part (the direction of the orientation
    vector) and sizes by the square root of its area change, approximations used only by
    orientation-based filters. The ``max_keypoints`` features of largest score are kept.

    Args:
        tilts: tilts ``t > 1`` simulated in addition to the original view.
        base_step_deg: longitude step of tilt 1 (ASIFT: 72 degrees).
        max_keypoints: features kept over all views (``None``: all).
    """

    def __init__(self, tilts=(2.0, 4.0), base_step_deg: float = 72.0, max_keypoints: int | None = 4000) -> None:
        if any(t <= 1 for t in tilts):
            raise ValueError(f"tilts must be > 1, got {tilts}")
        if base_step_deg <= 0:
            raise ValueError(f"base_step_deg must be > 0, got {base_step_deg}")
        self.tilts = tuple(float(t) for t in tilts)
        self.base_step_deg = base_step_deg
        self.max_keypoints = max_keypoints

    def views(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(view, A)`` pairs: the float32 view images and the ``(3, 3)`` affine maps ``A`` taking
        image pixel coordinates to view pixel coordinates; the first is the image itself."""
        h, w = image.shape
        out = [(image, np.eye(3))]
        for t in self.tilts:
            for phi in np.arange(0.0, 180.0, self.base_step_deg / t):
                R = cv2.getRotationMatrix2D((w / 2, h / 2), float(phi), 1.0)  # CCW as displayed
                c, s = abs(R[0, 0]), abs(R[0, 1])
                W1, H1 = int(math.ceil(h * s + w * c)), int(math.ceil(h * c + w * s))
                R[0, 2] += W1 / 2 - w / 2
                R[1, 2] += H1 / 2 - h / 2
                v = cv2.warpAffine(image, R, (W1, H1), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
                v = cv2.GaussianBlur(v, (0, 0), sigmaX=0.8 * math.sqrt(t * t - 1), sigmaY=0.01)
                Wt = max(1, int(round(W1 / t)))
                v = cv2.resize(v, (Wt, H1), interpolation=cv2.INTER_LINEAR)
                A = np.diag([Wt / W1, 1.0, 1.0]) @ np.vstack([R, [0.0, 0.0, 1.0]])
                out.append((v.astype(np.float32), A))
        return out

    def __call__(self, extract, image: np.ndarray) -> Features:
        """Features of ``image`` from ``extract(view) -> Features`` run on every view."""
        parts = []
        for v, A in self.views(image):
            f = extract(v)
            if len(f) == 0:
                continue
            if np.array_equal(A, np.eye(3)):
                parts.append(replace(f, image_size=image.shape))
                continue
            Ainv = np.linalg.inv(A)
            xy = warp_points(torch.from_numpy(f.keypoints.astype(np.float64)), torch.from_numpy(Ainv)).numpy()
            inside = inside_image(xy, image.shape)
            if not inside.any():  # every keypoint of this view lies in its padding
                continue
            g = f.subset(inside)
            parts.append(
                replace(
                    g,
                    keypoints=xy[inside].astype(np.float32),
                    orientations=map_orientations(g.orientations, Ainv[:2, :2]).astype(np.float32),
                    scales=g.scales * math.sqrt(abs(np.linalg.det(Ainv[:2, :2]))),
                    image_size=image.shape,
                )
            )
        if not parts:
            return extract(image)
        offset = 0
        for i, f in enumerate(parts):  # keypoint ids stay distinct across views
            parts[i] = replace(f, parents=f.parents + offset)
            offset += int(f.parents.max()) + 1
        f = concat_features(parts)
        if self.max_keypoints is not None and len(f) > self.max_keypoints:
            f = f.subset(np.sort(np.argsort(-f.scores, kind="stable")[: self.max_keypoints]))
        return f


__all__ = ["AffineViews"]
