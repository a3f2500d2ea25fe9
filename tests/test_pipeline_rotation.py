"""Rotation compensation: the relative-rotation estimate, upright extraction mapped back, the
compensating pipeline and its benchmark rows."""

import math

import cv2
import numpy as np
import pytest

from ssfeat import build_pipeline, estimate_relative_rotation, sample_images
from ssfeat.data.images import read_image
from ssfeat.data.synthetic_sequences import SyntheticSequenceConfig, make_synthetic_sequences
from ssfeat.evaluation.matching import MatchingConfig, run_matching
from ssfeat.features import Features
from ssfeat.geometry import warp_xy
from ssfeat.pipeline import SIFTDetector, extract_rotated
from ssfeat.pipeline.rotation import upright_affine, vote_rotation


@pytest.fixture(scope="module")
def photo():
    return read_image(sample_images()[2])


def _turn(img: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``img`` turned counter-clockwise on screen by ``deg`` about its centre (same size) and the
    ``(3, 3)`` homography of that turn."""
    H, W = img.shape
    M = np.vstack([cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), deg, 1.0), [0, 0, 1]])
    return cv2.warpAffine(img, M[:2], (W, H), flags=cv2.INTER_LINEAR), M


def _circ_deg(a: float, b: float) -> float:
    return abs(math.degrees(math.remainder(a - b, 2 * math.pi)))


def test_vote_finds_the_peak_among_wrong_votes():
    rng = np.random.default_rng(0)
    good = 2.5 + rng.normal(0, 0.03, 120)
    diffs = np.mod(np.concatenate([good, rng.uniform(0, 2 * math.pi, 300)]), 2 * math.pi)
    r = vote_rotation(diffs)
    assert _circ_deg(r.angle, 2.5) < 1.0 and 0.25 < r.confidence < 0.45 and r.n_matches == 420
    near_zero = vote_rotation(np.mod(rng.normal(0, 0.02, 50), 2 * math.pi))  # straddles 0 / 2pi
    assert _circ_deg(near_zero.angle, 0.0) < 1.0 and near_zero.confidence == 1.0


@pytest.mark.parametrize("deg", [90.0, -140.0, 37.0])
def test_estimate_relative_rotation_on_a_turned_photo(photo, deg):
    turned, _ = _turn(photo, deg) if deg != 90.0 else (np.ascontiguousarray(np.rot90(photo)), None)
    angle, conf = estimate_relative_rotation(photo, turned, max_keypoints=500)
    assert _circ_deg(angle, math.radians(deg)) < 5.0
    assert conf > 0.3


def test_unrelated_photos_get_a_low_confidence(photo):
    _, conf = estimate_relative_rotation(photo, read_image(sample_images()[0]), max_keypoints=500)
    assert conf < 0.2


def test_upright_affine_and_extract_rotated_map_features_back(photo):
    A, (Hc, Wc) = upright_affine((100, 200), math.radians(90))
    assert (Hc, Wc) == (200, 100)  # the whole turned image fits
    assert np.allclose(A[:, :2] @ [1.0, 0.0], [0.0, 1.0])  # turned clockwise on screen (y down)
    # a feature found on the canvas with orientation 0 maps back with the image's turn
    H, W = photo.shape

    A, _ = upright_affine(photo.shape, 0.7)

    def fake(canvas):  # one feature where image point (50, 70) lands on the canvas
        return Features((A[:, :2] @ [50.0, 70.0] + A[:, 2])[None], [10.0], [0.0], [1.0], canvas.shape)

    f = extract_rotated(fake, photo, 0.7)
    assert f.image_size == photo.shape and np.allclose(f.keypoints, [[50.0, 70.0]], atol=1e-3)
    assert np.isclose(f.orientations[0], 0.7, atol=1e-6)
    # SIFT on the upright canvas of a turned photo finds the keypoints of the turned photo itself
    turned, M = _turn(photo, 50.0)
    det = SIFTDetector(300)
    f_up = extract_rotated(det, turned, math.radians(50.0))
    f_ref = det(photo)
    xy = warp_xy(f_ref.keypoints.astype(np.float64), M)
    d = np.linalg.norm(f_up.keypoints[:, None] - xy[None], axis=2).min(1)
    assert np.mean(d < 1.5) > 0.5
    assert f_up.keypoints.min() >= 3.0 and (f_up.keypoints.max(0) <= [W - 4, H - 4]).all()


def test_compensated_pipeline_matches_a_turned_photo(photo):
    turned, M = _turn(photo, 120.0)
    correct = {}
    for name in ("hndesc", "hndesc_rc"):
        res = build_pipeline(name, 500)(photo, turned)
        x0 = res.features0.keypoints[res.matches.idx[:, 0]].astype(np.float64)
        x1 = res.features1.keypoints[res.matches.idx[:, 1]]
        correct[name] = np.mean(np.linalg.norm(warp_xy(x0, M) - x1, axis=1) < 3)
        assert (res.rotation is None) == (name == "hndesc")
    assert correct["hndesc_rc"] > 0.6 > 0.2 > correct["hndesc"]
    assert build_pipeline("hndesc", 100, compensate_rotation=True).rotation is not None
    assert build_pipeline("hndesc_rc", 100, compensate_rotation=False).rotation is None


@pytest.mark.slow
def test_benchmark_reports_the_rotation_error(tmp_path):
    cfg = SyntheticSequenceConfig(n_targets=2, max_side=320)
    make_synthetic_sequences(sample_images()[0].parent, tmp_path / "seq", cfg, limit=2)
    res = run_matching([tmp_path / "seq"], ["sift", "hndesc_rc"], MatchingConfig(max_keypoints=300, timing_repeats=1))
    rows = res["per_pair"]["hndesc_rc"]
    assert len(rows) == 4 and all(r["rotation_error_deg"] < 10 for r in rows)
    assert res["pipelines"]["hndesc_rc"]["all"]["rotation_acc"] == [1.0, 1.0]
    assert "rotation_acc" not in res["pipelines"]["sift"]["all"]


def test_small_turns_and_unsure_estimates_leave_image_1_as_it_is(photo):
    from ssfeat.pipeline import RelativeRotation

    pipe = build_pipeline("hndesc_rc", 300)
    plain = pipe.extract(photo)
    for r in (RelativeRotation(math.radians(6.0), 0.9, 100), RelativeRotation(math.radians(60.0), 0.05, 100)):
        f = pipe.extract_upright(photo, r)
        assert np.array_equal(f.keypoints, plain.keypoints) and np.array_equal(f.descriptors, plain.descriptors)
    turned = pipe.extract_upright(photo, RelativeRotation(math.radians(60.0), 0.9, 100))
    assert len(turned) != len(plain) or not np.array_equal(turned.keypoints, plain.keypoints)


def test_match_command_compensates_rotation(photo, tmp_path, capsys):
    from ssfeat.cli import main

    turned, _ = _turn(photo, 100.0)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for p, im in zip(paths, (photo, turned)):
        cv2.imwrite(str(p), (im * 255).astype(np.uint8))
    argv = ["match", *map(str, paths), "--pipeline", "hndesc", "--max-keypoints", "300", "--compensate-rotation"]
    assert main([*argv, "--out", str(tmp_path / "m.png")]) == 0
    out = capsys.readouterr().out
    turn = float(out.split("image 1 turned ")[1].split(" deg")[0])
    assert abs(turn - 100.0) < 5
