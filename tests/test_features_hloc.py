"""Features.to_hloc / from_hloc: hloc's layout and units (the one place they are converted)."""

import math

import numpy as np
import pytest

from ssfeat.features import Features


def _features(n=3, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return Features(
        rng.uniform(0, 50, (n, 2)),
        np.array([4.0, 10.0, 7.5])[:n],
        np.array([0.0, math.pi / 6, 3 * math.pi / 2])[:n],
        rng.uniform(0, 1, n),
        (40, 60),
        rng.standard_normal((n, d)),
    )


def test_to_hloc_layout_and_units():
    f = _features()
    h = f.to_hloc()
    assert set(h) == {"keypoints", "descriptors", "scores", "image_size", "scales", "oris"}
    assert h["keypoints"].shape == (3, 2) and h["descriptors"].shape == (8, 3)  # one column per feature
    np.testing.assert_array_equal(h["descriptors"][:, 1], f.descriptors[1].astype(np.float32))
    assert h["image_size"].tolist() == [60, 40]  # (W, H)
    np.testing.assert_allclose(h["scales"], [2.0, 5.0, 3.75])  # COLMAP's SIFT scale: half the size
    # degrees clockwise as displayed: 30 degrees counter-clockwise is 330, a quarter turn clockwise 90
    np.testing.assert_allclose(h["oris"], [0.0, 330.0, 90.0], atol=1e-4)
    np.testing.assert_allclose(h["oris"], [k.angle for k in f.to_cv2()], atol=1e-3)  # OpenCV's turn
    assert all(a.dtype in (np.float32, np.int64) for a in h.values())


def test_from_hloc_inverts_to_hloc_and_reads_other_extractors():
    f = _features()
    g = Features.from_hloc(f.to_hloc())
    for name in ("keypoints", "scales", "orientations", "scores", "descriptors"):
        np.testing.assert_allclose(getattr(g, name), getattr(f, name), atol=1e-5)
    assert g.image_size == f.image_size
    # COLMAP's angles run over (-180, 180]; a SuperPoint-like file has no scales or orientations
    h = f.to_hloc()
    h["oris"] = np.where(h["oris"] > 180, h["oris"] - 360, h["oris"])
    np.testing.assert_allclose(Features.from_hloc(h).orientations, f.orientations, atol=1e-5)
    bare = {"keypoints": h["keypoints"], "descriptors": h["descriptors"], "image_size": h["image_size"]}
    b = Features.from_hloc(bare)
    assert (b.scales == 0).all() and (b.orientations == 0).all() and (b.scores == 1).all()
    with pytest.raises(ValueError, match=r"shape \(D, 3\)"):
        Features.from_hloc({**bare, "descriptors": h["descriptors"].T})  # (N, D): refused, not misread
