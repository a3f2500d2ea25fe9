"""``Features``: the one container that pipeline stages exchange, with OpenCV and kornia adapters.

Conventions (see :mod:`ssfeat.geometry`): ``keypoints`` are ``(x, y)`` pixel coordinates;
``scales`` are feature **sizes in pixels with OpenCV's meaning** (``cv2.KeyPoint.size``, the diameter
of the meaningful neighbourhood; SIFT's size is about 4x its blur sigma); ``orientations`` are radians
counter-clockwise as displayed, in ``[0, 2pi)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch

from .geometry import (
    angle_from_cv2,
    angle_from_lightglue,
    angle_to_cv2,
    angle_to_lightglue,
    laf_from_pose,
    pose_from_laf,
    wrap_angle,
)


def _f32(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).reshape(n)
    if not np.isfinite(a).all():
        raise ValueError(f"Features.{name} contains NaN or Inf")
    return a


@dataclass
class Features:
    """Local features of one image.

    Attributes:
        keypoints: ``(N, 2)`` float32 ``(x, y)`` pixels.
        scales: ``(N,)`` float32 sizes in pixels (``cv2.KeyPoint.size``).
        orientations: ``(N,)`` float32 radians CCW in ``[0, 2pi)``.
        scores: ``(N,)`` float32 detector responses (larger is better).
        descriptors: ``(N, D)`` float32 or ``None`` before description.
        parents: ``(N,)`` int64 index of the detected keypoint each feature comes from (a multi-pose
            orienter emits several features per keypoint); ``arange(N)`` by default.
        image_size: ``(H, W)`` of the image the features belong to.
    """

    keypoints: np.ndarray
    scales: np.ndarray
    orientations: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int]
    descriptors: np.ndarray | None = None
    parents: np.ndarray | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        kp = np.asarray(self.keypoints, dtype=np.float32)
        if kp.size == 0:
            kp = kp.reshape(0, 2)
        if kp.ndim != 2 or kp.shape[1] != 2:
            raise ValueError(f"Features.keypoints must have shape (N, 2), got {kp.shape}")
        if not np.isfinite(kp).all():
            raise ValueError("Features.keypoints contains NaN or Inf")
        n = len(kp)
        self.keypoints = kp
        self.scales = _f32(self.scales, n, "scales")
        self.orientations = wrap_angle(_f32(self.orientations, n, "orientations")).astype(np.float32)
        self.scores = _f32(self.scores, n, "scores")
        self.parents = np.arange(n) if self.parents is None else np.asarray(self.parents, dtype=np.int64).reshape(n)
        if self.descriptors is not None:
            d = np.asarray(self.descriptors, dtype=np.float32)
            if d.ndim != 2 or len(d) != n:
                raise ValueError(f"Features.descriptors must have shape ({n}, D), got {d.shape}")
            self.descriptors = d
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return len(self.keypoints)

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> Features:
        z = np.zeros(0, np.float32)
        return cls(np.zeros((0, 2), np.float32), z, z, z, image_size)

    def subset(self, idx: np.ndarray) -> Features:
        """The features at ``idx`` (indices or a boolean mask)."""
        return replace(
            self,
            keypoints=self.keypoints[idx],
            scales=self.scales[idx],
            orientations=self.orientations[idx],
            scores=self.scores[idx],
            descriptors=None if self.descriptors is None else self.descriptors[idx],
            parents=self.parents[idx],
            extras=dict(self.extras),
        )

    # OpenCV ------------------------------------------------------------------------------------
    @classmethod
    def from_cv2(cls, keypoints: list[cv2.KeyPoint], image_size: tuple[int, int], descriptors=None) -> Features:
        """From ``cv2.KeyPoint`` objects (``angle`` -1, "not computed", becomes 0)."""
        if len(keypoints) == 0:
            f = cls.empty(image_size)
            if descriptors is not None:
                f.descriptors = np.zeros((0, np.asarray(descriptors).reshape(0, -1).shape[1]), np.float32)
            return f
        pts = np.array([k.pt for k in keypoints], np.float32)
        ang = np.array([k.angle for k in keypoints], np.float64)
        ori = np.where(ang < 0, 0.0, angle_from_cv2(ang))
        return cls(
            pts,
            np.array([k.size for k in keypoints]),
            ori,
            np.array([k.response for k in keypoints]),
            image_size,
            descriptors,
        )

    def to_cv2(self, first_octave: int = -1) -> list[cv2.KeyPoint]:
        """``cv2.KeyPoint`` list with ``angle`` in OpenCV's clockwise degrees and ``octave`` packed
        from ``size`` the way OpenCV's SIFT does, so that ``cv2.SIFT.compute`` samples the right
        pyramid level (``first_octave``: see :func:`sift_octaves`)."""
        ang = angle_to_cv2(self.orientations) if len(self) else []
        octs = sift_octaves(self.scales, self.image_size, first_octave)
        return [
            cv2.KeyPoint(float(x), float(y), float(s), float(a), float(r), int(o))
            for (x, y), s, a, r, o in zip(self.keypoints, self.scales, ang, self.scores, octs)
        ]

    # kornia ------------------------------------------------------------------------------------
    def to_laf(self, mr_size: float = 1.0) -> torch.Tensor:
        """kornia LAFs ``(1, N, 2, 3)``; LAF scale (half the side of the region) = ``mr_size * size / 2``."""
        return laf_from_pose(
            torch.from_numpy(self.keypoints),
            torch.from_numpy(self.scales) * (mr_size / 2.0),
            torch.from_numpy(self.orientations),
        )

    def to_kornia(self, mr_size: float = 1.0, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """kornia's detector/descriptor outputs: ``(lafs, responses, descriptors)``: LAFs
        ``(1, N, 2, 3)`` (see :meth:`to_laf`: centre in pixels, orientation degrees counter-clockwise
        as displayed, scale ``mr_size * size / 2``), responses ``(1, N)`` (the scores) and descriptors
        ``(1, N, D)`` (``None`` before description), float32 on ``device``."""
        desc = None if self.descriptors is None else torch.from_numpy(self.descriptors)[None].to(device)
        return self.to_laf(mr_size).to(device), torch.from_numpy(self.scores)[None].to(device), desc

    # LightGlue ---------------------------------------------------------------------------------
    def to_lightglue(self, device=None) -> dict[str, torch.Tensor]:
        """The features as LightGlue's extractors return them (``LightGlue({"image0": f0.to_lightglue(),
        "image1": f1.to_lightglue()})``), float32 on ``device``:

        * ``keypoints`` ``(1, N, 2)`` ``(x, y)`` pixels, pixel centres at integers (LightGlue's own);
        * ``descriptors`` ``(1, N, D)`` (only when described);
        * ``keypoint_scores`` ``(1, N)``;
        * ``scales`` ``(1, N)``: sizes in pixels (``cv2.KeyPoint.size``, as LightGlue's SIFT);
        * ``oris`` ``(1, N)``: radians of OpenCV's **clockwise** angle in ``[0, 2pi)``
          (``deg2rad(KeyPoint.angle)``, as LightGlue's SIFT), i.e. minus ssfeat's orientation;
        * ``image_size`` ``(1, 2)``: ``(W, H)``.
        """
        out = {
            "keypoints": torch.from_numpy(self.keypoints)[None],
            "keypoint_scores": torch.from_numpy(self.scores)[None],
            "scales": torch.from_numpy(self.scales)[None],
            "oris": torch.from_numpy(angle_to_lightglue(self.orientations).astype(np.float32))[None],
            "image_size": torch.tensor([[self.image_size[1], self.image_size[0]]], dtype=torch.float32),
        }
        if self.descriptors is not None:
            out["descriptors"] = torch.from_numpy(self.descriptors)[None]
        return {k: v.to(device) for k, v in out.items()}

    @classmethod
    def from_lightglue(cls, feats: dict, image_size: tuple[int, int] | None = None) -> Features:
        """Inverse of :meth:`to_lightglue` for one image (batch of 1, or no batch axis); keys other
        than ``keypoints`` are optional (scores 0, sizes 1 px, orientations 0). ``image_size``
        ``(H, W)``; default: from ``feats["image_size"]`` ``(W, H)``."""

        def get(key):
            v = feats.get(key)
            if v is None:
                return None
            v = v.detach().cpu().float().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float32)
            return v[0] if v.ndim >= (3 if key in ("keypoints", "descriptors") else 2) else v

        kp = get("keypoints")
        if kp is None or kp.ndim != 2 or kp.shape[-1] != 2:
            raise ValueError("feats['keypoints'] must have shape (1, N, 2) or (N, 2)")
        if image_size is None:
            if feats.get("image_size") is None:
                raise ValueError("give image_size (H, W): feats has no 'image_size'")
            w, h = np.asarray(get("image_size")).reshape(-1)[:2]
            image_size = (int(round(h)), int(round(w)))
        n = len(kp)
        oris, scores, scales = get("oris"), get("keypoint_scores"), get("scales")
        return cls(
            kp,
            np.ones(n, np.float32) if scales is None else scales,
            np.zeros(n) if oris is None else angle_from_lightglue(oris),
            np.zeros(n, np.float32) if scores is None else scores,
            image_size,
            get("descriptors"),
        )

    @classmethod
    def from_laf(
        cls, laf: torch.Tensor, image_size: tuple[int, int], mr_size: float = 1.0, scores=None, descriptors=None
    ) -> Features:
        """Inverse of :meth:`to_laf` for ``(1, N, 2, 3)`` LAFs."""
        if laf.ndim != 4 or laf.shape[0] != 1 or laf.shape[2:] != (2, 3):
            raise ValueError(f"LAFs must have shape (1, N, 2, 3), got {tuple(laf.shape)}")
        xy, scale, ang = pose_from_laf(laf.detach().cpu().float())
        n = xy.shape[0]
        scores = np.zeros(n, np.float32) if scores is None else scores
        return cls(xy.numpy(), scale.numpy() * (2.0 / mr_size), ang.numpy(), scores, image_size, descriptors)

    # hloc ----------------------------------------------------------------------------------------
    def to_hloc(self) -> dict[str, np.ndarray]:
        """The datasets of one image group in hloc's feature-file layout (what its ``extract_features``
        writes and its ``match_features`` and COLMAP import read):

        * ``keypoints`` ``(N, 2)`` float32 ``(x, y)``, pixel centres at integers (ssfeat's convention);
        * ``descriptors`` ``(D, N)`` float32, one **column** per feature (left out before description);
        * ``scores`` ``(N,)`` float32;
        * ``image_size`` ``(2,)`` int64 **``(W, H)``** (``Features.image_size`` is ``(H, W)``);
        * ``scales`` ``(N,)`` float32 COLMAP's SIFT scale, **half** ``cv2.KeyPoint.size`` (pycolmap's
          SIFT, which hloc's ``dog`` extractor runs, gives half OpenCV's size on the same keypoints);
        * ``oris`` ``(N,)`` float32 **degrees, clockwise as displayed** in ``[0, 360)``, the unit of
          hloc's ``dog`` extractor (COLMAP's SIFT angle in degrees, which turns the way OpenCV's
          ``KeyPoint.angle`` does), read by hloc's AdaLAM matcher.

        :meth:`from_hloc` inverts it; these two methods are the one place the units are converted.
        """
        out = {
            "keypoints": self.keypoints.astype(np.float32),
            "scores": self.scores.astype(np.float32),
            "scales": (self.scales / 2.0).astype(np.float32),
            "oris": np.asarray(angle_to_cv2(self.orientations), np.float32).reshape(len(self)),
            "image_size": np.array([self.image_size[1], self.image_size[0]], np.int64),
        }
        if self.descriptors is not None:
            out["descriptors"] = np.ascontiguousarray(self.descriptors.T, np.float32)
        return out

    @classmethod
    def from_hloc(cls, group) -> Features:
        """Inverse of :meth:`to_hloc`, from a mapping of arrays (an hloc HDF5 group or a dict). Files
        of other hloc extractors may lack ``scales`` / ``oris`` / ``scores``: sizes and angles are then
        0 and scores 1."""
        kp = np.asarray(group["keypoints"][()], np.float32).reshape(-1, 2)
        n = len(kp)
        W, H = (int(v) for v in np.asarray(group["image_size"][()]).reshape(2))
        d = np.asarray(group["descriptors"][()], np.float32) if "descriptors" in group else None
        if d is not None and (d.ndim != 2 or d.shape[1] != n):
            raise ValueError(f"hloc descriptors must have shape (D, {n}), got {d.shape}")

        def get(name: str, default: float) -> np.ndarray:
            return np.asarray(group[name][()], np.float64).reshape(n) if name in group else np.full(n, default)

        ori = angle_from_cv2(get("oris", 0.0))  # any degrees, e.g. COLMAP's (-180, 180]
        return cls(kp, get("scales", 0.0) * 2.0, ori, get("scores", 1.0), (H, W), None if d is None else d.T)


def strongest_distinct(keypoints: list[cv2.KeyPoint], n: int) -> list[cv2.KeyPoint]:
    """The ``n`` strongest keypoints at distinct locations (OpenCV's SIFT repeats a location once per
    secondary orientation peak; the strongest entry is kept)."""
    seen, out = set(), []
    for k in sorted(keypoints, key=lambda k: -k.response):
        key = (round(k.pt[0], 2), round(k.pt[1], 2))
        if key not in seen:
            seen.add(key)
            out.append(k)
            if len(out) == n:
                break
    return out


# OpenCV SIFT packs (octave, layer, sub-layer offset) into KeyPoint.octave; its descriptor reads the
# Gaussian pyramid image of that (octave, layer). These constants are OpenCV's SIFT defaults.
_SIFT_SIGMA = 1.6
_SIFT_LAYERS = 3


def check_first_octave(value: int, name: str = "first_octave") -> int:
    """``value`` if it is a supported first octave of the SIFT descriptor pyramid (-1 or 0)."""
    if value not in (-1, 0):
        raise ValueError(f"{name} must be -1 or 0, got {value}")
    return value


def sift_octaves(sizes: np.ndarray, image_size: tuple[int, int], first_octave: int = -1) -> np.ndarray:
    """OpenCV ``KeyPoint.octave`` fields for keypoints of the given sizes.

    OpenCV's SIFT gives a keypoint at octave ``o`` (``-1`` = upsampled image), layer ``l`` (1..3) and
    offset ``xi`` the size ``2 * 1.6 * 2**(o + (l + xi) / 3)``; this inverts that relation (octaves
    clamped to what the image supports) and packs ``o & 255 | l << 8 | round((xi + 0.5) * 255) << 16``.

    ``first_octave=0`` places the keypoints OpenCV would put on octave -1 (sizes below
    ``2 * 1.6 * 2**(1/6)``, about 3.6 px) at octave 0, layer 0 (the image blurred to sigma 1.6), so
    that ``cv2.SIFT.compute`` does not build the upsampled octave -1, about three quarters of its
    pyramid (VLFeat's SIFT starts at octave 0 too).
    """
    check_first_octave(first_octave)
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1)
    if len(sizes) == 0:
        return np.zeros(0, np.int64)
    v = _SIFT_LAYERS * np.log2(np.maximum(sizes, 1e-3) / (2 * _SIFT_SIGMA))
    o = np.floor((v - 0.5) / _SIFT_LAYERS)
    max_oct = max(0, int(math.log2(max(min(image_size), 2))) - 3)
    o = np.clip(o, first_octave, max_oct)
    r = v - _SIFT_LAYERS * o
    layer = np.clip(np.round(r), 1 if first_octave < 0 else 0, _SIFT_LAYERS)
    xi = np.clip(r - layer, -0.5, 0.5)
    oi = o.astype(np.int64)
    return (oi & 255) | (layer.astype(np.int64) << 8) | (np.round((xi + 0.5) * 255).astype(np.int64) << 16)


__all__ = ["Features", "check_first_octave", "sift_octaves", "strongest_distinct"]


def concat_features(parts: list[Features]) -> Features:
    """Concatenate features of the same image (descriptors must be all set or all ``None``)."""
    if len(parts) == 1:
        return parts[0]
    descs = [p.descriptors for p in parts]
    return Features(
        np.concatenate([p.keypoints for p in parts]),
        np.concatenate([p.scales for p in parts]),
        np.concatenate([p.orientations for p in parts]),
        np.concatenate([p.scores for p in parts]),
        parts[0].image_size,
        None if any(d is None for d in descs) else np.concatenate(descs),
        np.concatenate([p.parents for p in parts]),
    )
