"""Features' conversions to OpenCV, kornia and LightGlue: shapes, units, signs, round trips."""

import math

import cv2
import numpy as np
import pytest
import torch
from kornia.feature import get_laf_orientation

from ssfeat import Features, sample_images
from ssfeat.data.images import read_image


@pytest.fixture(scope="module")
def photo():
    return read_image(sample_images()[1])


def _sift(img: np.ndarray):
    kps, desc = cv2.SIFT_create(nfeatures=300).detectAndCompute((img * 255).astype(np.uint8), None)
    return kps, desc


def _feats(n: int = 7, d: int = 4) -> Features:
    rng = np.random.default_rng(0)
    return Features(
        rng.uniform(0, 90, (n, 2)),
        rng.uniform(2, 30, n),
        rng.uniform(0, 2 * math.pi, n),
        rng.uniform(0, 1, n),
        (100, 120),
        rng.normal(size=(n, d)),
    )


def test_lightglue_layout_and_round_trip():
    f = _feats()
    lg = f.to_lightglue()
    assert lg["keypoints"].shape == (1, 7, 2) and lg["descriptors"].shape == (1, 7, 4)
    assert lg["keypoint_scores"].shape == lg["scales"].shape == lg["oris"].shape == (1, 7)
    assert lg["image_size"].tolist() == [[120.0, 100.0]]  # (W, H)
    assert all(v.dtype == torch.float32 for v in lg.values())
    assert np.allclose(lg["oris"][0].numpy(), np.mod(-f.orientations, 2 * np.pi), atol=1e-5)
    back = Features.from_lightglue(lg)
    assert back.image_size == (100, 120)
    for name in ("keypoints", "scales", "scores", "descriptors"):
        assert np.allclose(getattr(back, name), getattr(f, name), atol=1e-6)
    d = np.abs(np.angle(np.exp(1j * (back.orientations - f.orientations))))
    assert d.max() < 1e-5
    # unbatched and without descriptors, image size given
    f.descriptors = None
    lg = {k: v[0] for k, v in f.to_lightglue().items() if k != "image_size"}
    assert "descriptors" not in f.to_lightglue()
    assert Features.from_lightglue(lg, (100, 120)).descriptors is None
    with pytest.raises(ValueError, match="image_size"):
        Features.from_lightglue(lg)


def test_lightglue_oris_are_what_lightglue_sift_builds(photo):
    """LightGlue's SIFT extractor (OpenCV backend) sets ``oris = deg2rad(KeyPoint.angle)`` and
    ``scales = KeyPoint.size``; Features from the same keypoints give the same values."""
    kps, desc = _sift(photo)
    lg = Features.from_cv2(kps, photo.shape, desc).to_lightglue()
    want = np.deg2rad(np.array([k.angle for k in kps]))
    assert np.allclose(np.angle(np.exp(1j * (lg["oris"][0].numpy() - want))), 0, atol=1e-4)
    assert np.allclose(lg["scales"][0].numpy(), [k.size for k in kps])
    assert np.allclose(lg["keypoints"][0].numpy(), [k.pt for k in kps])


def test_kornia_outputs_and_round_trip():
    f = _feats()
    lafs, resp, desc = f.to_kornia(mr_size=6.0)
    assert lafs.shape == (1, 7, 2, 3) and resp.shape == (1, 7) and desc.shape == (1, 7, 4)
    assert torch.allclose(lafs, f.to_laf(6.0))
    back = Features.from_laf(lafs, f.image_size, 6.0, resp[0].numpy(), desc[0].numpy())
    assert np.allclose(back.scales, f.scales, rtol=1e-5) and np.allclose(back.scores, f.scores)
    assert np.allclose(np.angle(np.exp(1j * (back.orientations - f.orientations))), 0, atol=1e-4)
    f.descriptors = None
    assert f.to_kornia()[2] is None


def test_cv2_round_trip():
    f = _feats()
    back = Features.from_cv2(f.to_cv2(), f.image_size)
    assert np.allclose(back.keypoints, f.keypoints) and np.allclose(back.scales, f.scales)
    assert np.allclose(np.angle(np.exp(1j * (back.orientations - f.orientations))), 0, atol=1e-4)


def test_units_and_signs_on_a_rotated_photo(photo):
    """SIFT on the photo and on the photo turned 90 degrees counter-clockwise (np.rot90): at the
    same points ssfeat's orientation and kornia's LAF angle grow by 90 degrees, OpenCV's angle and
    LightGlue's oris shrink by 90 degrees (radians for LightGlue)."""
    H, W = photo.shape
    kps0, _ = _sift(photo)
    kps1, _ = _sift(np.ascontiguousarray(np.rot90(photo)))
    f0, f1 = Features.from_cv2(kps0, photo.shape), Features.from_cv2(kps1, (W, H))
    xy0 = np.stack([f0.keypoints[:, 1], W - 1 - f0.keypoints[:, 0]], 1)  # positions of f0 in the turned photo
    dist = np.linalg.norm(xy0[:, None] - f1.keypoints[None], axis=2)
    i0 = np.flatnonzero(dist.min(1) < 0.5)
    i1 = dist[i0].argmin(1)
    same_size = np.abs(np.log2(f1.scales[i1] / f0.scales[i0])) < 0.1
    i0, i1 = i0[same_size], i1[same_size]
    assert len(i0) > 50

    def agree(delta: np.ndarray, want: float) -> float:
        return float(np.mean(np.abs(np.angle(np.exp(1j * (delta - want)))) < math.radians(10)))

    assert agree(f1.orientations[i1] - f0.orientations[i0], math.pi / 2) > 0.8
    cv0 = np.array([kps0[i].angle for i in i0])
    cv1 = np.array([f1.to_cv2()[i].angle for i in i1])
    assert agree(np.deg2rad(cv1 - cv0), -math.pi / 2) > 0.8
    lg0, lg1 = f0.to_lightglue()["oris"][0].numpy(), f1.to_lightglue()["oris"][0].numpy()
    assert agree(lg1[i1] - lg0[i0], -math.pi / 2) > 0.8
    k0 = get_laf_orientation(f0.to_kornia()[0])[0, :, 0].numpy()
    k1 = get_laf_orientation(f1.to_kornia()[0])[0, :, 0].numpy()
    assert agree(np.deg2rad(k1[i1] - k0[i0]), math.pi / 2) > 0.8
