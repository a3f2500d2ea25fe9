"""Features container, pipeline stages and the matching benchmark."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from ssfeat.evaluation.matching import (
    MatchingConfig,
    category_of,
    format_matching_table,
    format_paired_table,
    paired_comparison,
    plot_mma,
    ransac_orders,
    run_matching,
    score_pair,
)
from ssfeat.evaluation.metrics import corner_error, repeatability, sign_test_p
from ssfeat.features import Features, sift_octaves
from ssfeat.geometry import angle_diff, inside_image
from ssfeat.pipeline import (
    AffineViews,
    Matches,
    MutualNearestNeighbor,
    OrientationFilter,
    PatchPoseOrienter,
    RansacHomography,
    SIFTDescriptor,
    SIFTDetector,
    build_pipeline,
    pipeline_estimator,
)

from .conftest import textured_image


@pytest.fixture(scope="module")
def estimator():
    return pipeline_estimator()  # what the pipelines use by default


@pytest.fixture(scope="module")
def image():
    return textured_image(240, 320, seed=3).astype(np.float32) / 255.0


def test_features_cv2_roundtrip():
    kps = [cv2.KeyPoint(10.5, 20.0, 4.0, 30.0, 0.1), cv2.KeyPoint(5.0, 6.0, 12.0, -1, 0.2)]
    f = Features.from_cv2(kps, (50, 60))
    # OpenCV angles are clockwise degrees: 30 deg clockwise = 330 deg counter-clockwise; -1 = none -> 0
    assert f.orientations[0] == pytest.approx(math.radians(330), abs=1e-5) and f.orientations[1] == 0
    back = f.to_cv2()
    assert back[0].angle == pytest.approx(30.0, abs=1e-3) and back[0].size == pytest.approx(4.0)
    assert back[0].pt == pytest.approx((10.5, 20.0))
    laf = f.to_laf(mr_size=2.0)
    g = Features.from_laf(laf, (50, 60), mr_size=2.0)
    np.testing.assert_allclose(g.keypoints, f.keypoints, atol=1e-4)
    np.testing.assert_allclose(g.scales, f.scales, rtol=1e-5)
    assert np.abs(angle_diff(g.orientations, f.orientations)).max() < 1e-4


def test_features_validation():
    with pytest.raises(ValueError, match="NaN"):
        Features(np.array([[np.nan, 1.0]]), [1.0], [0.0], [0.0], (10, 10))
    with pytest.raises(ValueError, match="shape"):
        Features(np.zeros((3, 3)), np.zeros(3), np.zeros(3), np.zeros(3), (10, 10))
    e = Features.empty((5, 5))
    assert len(e) == 0 and e.to_cv2() == [] and e.to_laf().shape == (1, 0, 2, 3)


def test_sift_octaves_match_opencv(image):
    u8 = (image * 255).astype(np.uint8)
    kps = cv2.SIFT_create(nfeatures=300).detect(u8, None)
    packed = sift_octaves(np.array([k.size for k in kps]), u8.shape)
    # octave and layer exactly as OpenCV packed them (the sub-layer byte is not read by compute)
    assert ((packed & 0xFFFF) == np.array([k.octave & 0xFFFF for k in kps])).mean() > 0.98


def test_sift_descriptor_on_sift_pose_equals_opencv(image):
    u8 = (image * 255).astype(np.uint8)
    sift = cv2.SIFT_create(nfeatures=200)
    kps, ref = sift.detectAndCompute(u8, None)
    f = SIFTDescriptor(first_octave=-1)(image, Features.from_cv2(kps, image.shape))
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cos = (f.descriptors * ref).sum(1)
    assert np.median(cos) > 0.999 and (cos > 0.99).mean() > 0.95
    root = SIFTDescriptor(root=True)(image, Features.from_cv2(kps, image.shape)).descriptors
    np.testing.assert_allclose(np.linalg.norm(root, axis=1), 1.0, atol=1e-4)
    # the default pyramid starts at octave 0: features of OpenCV's upsampled octave -1 read the image
    # at sigma 1.6 (close, not equal), the others the same pyramid level as OpenCV
    fast = SIFTDescriptor()(image, Features.from_cv2(kps, image.shape)).descriptors
    octave = np.array([k.octave & 255 for k in kps]).astype(np.uint8).view(np.int8)
    cos = (fast * ref).sum(1)
    assert (octave < 0).sum() >= 20 and (octave >= 0).sum() >= 20
    assert np.median(cos[octave >= 0]) > 0.995 and np.median(cos[octave < 0]) > 0.9
    assert np.median(cos[octave < 0]) < 0.995  # really another level for these
    packed = sift_octaves(np.array([k.size for k in kps]), image.shape, first_octave=0)
    low = (packed & 255).astype(np.uint8).view(np.int8)
    assert low.min() == 0 and (((packed >> 8) & 255)[octave < 0] <= 1).all()
    with pytest.raises(ValueError, match="first_octave"):
        SIFTDescriptor(first_octave=1)


def test_detector_budget_and_distinct_locations(image):
    f = SIFTDetector(50)(image)
    assert len(f) == 50 and len(np.unique(f.keypoints, axis=0)) == 50
    assert np.all(np.diff(f.scores) <= 1e-9)  # strongest first
    assert len(SIFTDetector(10)(np.full((100, 100), 0.5, np.float32))) == 0


def test_patchpose_orienter_rotates_with_image(image, estimator):
    # rotating the image 90 degrees counter-clockwise on screen (np.rot90) adds 90 degrees to the
    # learned orientation at corresponding keypoints
    f = SIFTDetector(200)(image)
    f = f.subset((f.keypoints.min(1) > 20) & (f.keypoints[:, 0] < 300) & (f.keypoints[:, 1] < 220))
    o = PatchPoseOrienter(estimator)
    a = o(image, f)
    rot = np.ascontiguousarray(np.rot90(image))  # (x, y) -> (y, W - 1 - x)
    W = image.shape[1]
    fr = Features(np.stack([f.keypoints[:, 1], W - 1 - f.keypoints[:, 0]], 1), f.scales, f.orientations, f.scores,
                  rot.shape)  # fmt: skip
    b = o(rot, fr)
    d = np.abs(angle_diff(b.orientations.astype(np.float64) - a.orientations, math.pi / 2))
    assert (d < math.radians(10)).mean() > 0.9
    assert np.allclose(b.scales, f.scales)  # the detector's size is kept


def test_multipose_emits_parents(image, estimator):
    f = SIFTDetector(40)(image)
    m = PatchPoseOrienter(estimator, support=32, scale=True, k_ori=2, k_scale=2, min_ratio=0.0)(image, f)
    # two orientations at the strongest size, and the second size with the orientation read at it
    assert len(m) == 3 * len(f)
    assert np.array_equal(np.bincount(m.parents, minlength=len(f)), np.full(len(f), 3))
    one = PatchPoseOrienter(estimator)(image, f)
    assert len(one) == len(f) and np.array_equal(one.parents, np.arange(len(f)))


def test_orientation_filter_keeps_consistent_matches():
    rng = np.random.default_rng(0)
    n_in, n_out = 80, 40
    o0 = rng.uniform(0, 2 * math.pi, n_in + n_out)
    o1 = o0 + math.radians(40) + rng.normal(0, 0.05, n_in + n_out)
    o1[n_in:] += np.radians(rng.uniform(60, 300, n_out))  # outliers: at least 60 degrees off
    z = np.zeros(n_in + n_out)
    f0 = Features(np.zeros((len(z), 2)), z + 1, o0, z, (10, 10))
    f1 = Features(np.zeros((len(z), 2)), z + 1, o1, z, (10, 10))
    m = Matches(np.stack([np.arange(len(z))] * 2, 1), z)
    filt = OrientationFilter(tolerance_deg=20)
    assert abs(math.degrees(angle_diff(filt.dominant(o1 - o0), math.radians(40)))) < 2
    kept = filt(f0, f1, m)
    assert (kept.idx[:, 0] < n_in).all() and (kept.idx[:, 0] < n_in).sum() == n_in
    assert len(filt(f0, f1, Matches.empty())) == 0


def test_ransac_recovers_homography():
    rng = np.random.default_rng(1)
    H = np.array([[0.9, -0.2, 30.0], [0.25, 1.1, -10.0], [1e-4, 2e-4, 1.0]])
    x0 = rng.uniform(0, 300, (100, 2))
    x1 = cv2.perspectiveTransform(x0[None], H)[0]
    x1[:20] = rng.uniform(0, 300, (20, 2))
    Hest, inl = RansacHomography().fit(x0, x1)
    assert inl[20:].all() and not inl[:20].any()
    assert corner_error(Hest, H, (300, 300)) < 1e-3
    assert RansacHomography().fit(x0[:3], x1[:3])[0] is None
    assert corner_error(None, H, (300, 300)) == math.inf


def test_ransac_fits_with_few_inliers_are_failures():
    rng = np.random.default_rng(2)
    H = np.array([[0.9, -0.2, 30.0], [0.25, 1.1, -10.0], [1e-4, 2e-4, 1.0]])
    x0 = rng.uniform(0, 300, (400, 2))
    x1 = cv2.perspectiveTransform(x0[None], H)[0]
    x1[12:] = rng.uniform(0, 300, (388, 2))  # 12 true matches among 400: RANSAC finds them, too few to trust
    ransac = RansacHomography()
    Hest, inl = ransac.fit(x0, x1)
    assert Hest is not None and ransac.failure(Hest, inl) == (
        f"{int(inl.sum())} RANSAC inliers of 400 matches, fewer than min_inliers=15"
    )
    x1[:40] = cv2.perspectiveTransform(x0[None, :40], H)[0]  # 40 of 400 (10%): a fit to trust ...
    Hest, inl = ransac.fit(x0, x1)
    assert ransac.failure(Hest, inl) is None and corner_error(Hest, H, (300, 300)) < 1e-3
    strict = RansacHomography(min_inlier_ratio=0.2)  # ... unless a fifth of the matches must agree
    assert "under min_inlier_ratio=0.2" in strict.failure(Hest, inl)
    # as a pipeline filter: the inliers are kept, the failed homography is not stored
    f0 = Features(x0.astype(np.float32), np.ones(400), np.zeros(400), np.ones(400), (300, 300))
    f1 = Features(x1.astype(np.float32), np.ones(400), np.zeros(400), np.ones(400), (300, 300))
    m = Matches(np.stack([np.arange(400)] * 2, 1), np.zeros(400, np.float32))
    assert ransac(f0, f1, m).H_0to1 is not None and strict(f0, f1, m).H_0to1 is None
    assert len(strict(f0, f1, m)) == len(ransac(f0, f1, m)) >= 40
    assert ransac.failure(None, np.zeros(3, bool)) == "3 matches, a homography needs 4"
    with pytest.raises(ValueError, match="min_inliers must be >= 4"):
        RansacHomography(min_inliers=3)


def test_mnn_and_empty_matching():
    d = np.eye(5, dtype=np.float32)
    f = Features(np.zeros((5, 2)), np.ones(5), np.zeros(5), np.zeros(5), (10, 10), descriptors=d)
    m = MutualNearestNeighbor()(f, f.subset(np.array([4, 3, 2, 1, 0])))
    assert sorted(map(tuple, m.idx.tolist())) == [(0, 4), (1, 3), (2, 2), (3, 1), (4, 0)]
    e = Features.empty((10, 10))
    e.descriptors = np.zeros((0, 5), np.float32)
    assert len(MutualNearestNeighbor()(f, e)) == 0
    with pytest.raises(ValueError, match="descriptor"):
        MutualNearestNeighbor()(Features.empty((10, 10)), f)


def test_repeatability_analytic():
    rng = np.random.default_rng(0)
    k = rng.uniform(10, 90, (50, 2))
    f = Features(k, np.ones(50), np.zeros(50), np.zeros(50), (100, 100))
    assert repeatability(f, f, np.eye(3)) == pytest.approx(100.0)
    shifted = np.array([[1, 0, 10.0], [0, 1, 0], [0, 0, 1]])
    g = Features(k + [10.0, 0], np.ones(50), np.zeros(50), np.zeros(50), (100, 100))
    assert repeatability(f, g, shifted) == pytest.approx(100.0)
    assert repeatability(f, f, shifted) < 50


@pytest.mark.parametrize("pipe", ["upright", "ssfeat*"])
def test_pipeline_matches_rotated_pair(image, estimator, pipe):
    rot = np.ascontiguousarray(np.rot90(image))
    res = build_pipeline(pipe, 300, estimator)(image, rot)
    x0 = res.features0.keypoints[res.matches.idx[:, 0]]
    x1 = res.features1.keypoints[res.matches.idx[:, 1]]
    correct = np.linalg.norm(np.stack([x0[:, 1], image.shape[1] - 1 - x0[:, 0]], 1) - x1, axis=1) < 3
    if pipe == "upright":  # upright SIFT descriptors cannot match a 90-degree rotation
        assert correct.sum() < 20
    else:
        assert correct.sum() > 60 and correct.mean() > 0.8


def test_affine_views_map_points_and_features_back():
    img = np.zeros((200, 240), np.float32)
    p = np.array([140.0, 90.0])
    cv2.circle(img, (140, 90), 3, 1.0, -1)
    av = AffineViews(tilts=(2.0,), base_step_deg=72.0, max_keypoints=None)
    views = av.views(img)
    assert len(views) == 1 + 5 and np.array_equal(views[0][1], np.eye(3))  # longitudes 0, 36, ..., 144

    def discs(v):  # centres of the bright blobs of a view (reflected copies of the disc included)
        n, _, _, c = cv2.connectedComponentsWithStats((v > 0.5 * v.max()).astype(np.uint8))
        return c[1:n]

    for v, A in views:  # A takes image pixels to view pixels: a disc lands where A sends its centre
        q = A[:2, :2] @ p + A[:2, 2]
        assert np.linalg.norm(discs(v) - q, axis=1).min() < 1.0

    def extract(v):  # a feature at every blob, its orientation along the view's x axis
        c = discs(v)
        f = Features(c, np.full(len(c), 4.0), np.zeros(len(c)), np.full(len(c), float(v.shape[1])), v.shape)
        f.descriptors = np.ones((len(c), 8), np.float32)
        return f

    f = av(extract, img)
    # reflected copies map outside the image and are dropped: one feature per view, at the disc
    assert len(f) == len(views) and f.image_size == img.shape and len(set(f.parents.tolist())) == len(f)
    assert np.abs(f.keypoints - p).max() < 1.0
    for (_, A), theta in zip(views, f.orientations):  # orientation maps to the view's x axis
        d = A[:2, :2] @ np.array([math.cos(theta), -math.sin(theta)])
        assert abs(math.atan2(-d[1], d[0])) < 1e-4
    assert len(AffineViews(tilts=(2.0,), max_keypoints=3)(extract, img)) == 3  # strongest (widest views)
    with pytest.raises(ValueError, match="tilts"):
        AffineViews(tilts=(1.0,))


def test_asift_pipeline_matches_a_strong_tilt():
    img = textured_image(200, 260, seed=7).astype(np.float32) / 255.0
    H = np.array([[0.3, 0.0, 80.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # x shrunk 3.3x: out of SIFT's reach
    tilted = cv2.warpPerspective(img, H, (160, 200), flags=cv2.INTER_AREA)
    counts = {}
    for name in ("sift", "asift"):
        res = build_pipeline(name, 300)(img, tilted)
        x0 = res.features0.keypoints[res.matches.idx[:, 0]]
        x1 = res.features1.keypoints[res.matches.idx[:, 1]]
        proj = cv2.perspectiveTransform(x0[None].astype(np.float64), H)[0]
        counts[name] = int((np.linalg.norm(proj - x1, axis=1) < 3).sum())
    assert counts["asift"] >= 30 and counts["asift"] > 3 * counts["sift"], counts


def test_affine_views_without_keypoints_inside_the_image_are_left_out():
    img = np.zeros((240, 320), np.float32)  # texture only in a 12x12 corner: some views keep none of it
    img[:12, :12] = np.random.default_rng(0).random((12, 12))
    f = build_pipeline("asift", 300).extract(img)
    assert len(f) > 0 and len(set(f.parents.tolist())) <= len(f)
    assert inside_image(f.keypoints.astype(np.float64), img.shape).all()


def test_pipeline_inputs(estimator, tmp_path):
    rgba16 = np.repeat(textured_image(120, 160, seed=5)[..., None], 4, 2).astype(np.uint16) * 257
    p = build_pipeline("ssfeat", 100, estimator)
    f = p.extract(rgba16)
    assert len(f) > 10 and f.descriptors.shape == (len(f), 128)
    flat = p.extract(np.full((64, 64), 0.5, np.float32))
    assert len(flat) == 0 and flat.descriptors.shape == (0, 128)
    assert len(p.match_features(flat, f)) == 0
    thin = build_pipeline("ssfeat_scale", 100, estimator).extract(textured_image(20, 200, seed=1))
    assert (thin.scales > 0).all()  # the scale-covariant pose reads no fixed window
    small = p.extract(textured_image(24, 200, seed=1))  # detector-sized windows are reflected at borders
    assert small.descriptors.shape == (len(small), 128)
    with pytest.raises(ValueError, match="empty image"):
        p.extract(np.zeros((0, 10), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        p.extract(np.full((64, 64), np.nan, np.float32))
    with pytest.raises(ValueError, match="unknown pipeline"):
        build_pipeline("nope")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError):
        p.extract(bad)


def test_categories():
    assert category_of("hpatches", "v_graffiti") == "viewpoint"
    assert category_of("hpatches", "hp/i_ajuntament") == "illumination"
    assert category_of("oxford", "leuven") == "illumination" and category_of("oxford", "bikes") == "blur"
    assert category_of("evd", "evd/adam") == "viewpoint"
    assert category_of("oxford", "bark") == "zoom+rotation" == category_of("oxford", "boat")
    # sequences the benchmark does not know are not filed under a change they may not show
    assert category_of("oxford", "my_photos") == "other" == category_of("oxford", "graffiti")
    assert category_of("hpatches", "vacation") == "other" == category_of("hpatches", "ice")


def _summaries(groups: dict[str, dict[str, float]]) -> dict:
    """A matching result of two pipelines whose per-group MMA curves are given by ``groups``
    (``{"all": {"all": v}, "dataset": {name: v}, "category": {name: v}}``)."""

    def summary(v: float, offset: float) -> dict:
        return {"mma": [v + offset] * 10, "pairs": 4}

    pipes = {}
    for name, off in (("sift", 0.0), ("ssfeat", 0.1)):
        s = {g: {k: summary(v, off) for k, v in d.items()} for g, d in groups.items() if g != "all"}
        pipes[name] = {"all": summary(groups["all"]["all"], off), **s}
    return {"pipelines": pipes, "config": {"mma_thresholds": list(range(1, 11))}}


def test_tables_and_plot_panels_that_repeat_another_are_left_out():
    from ssfeat.evaluation.matching import mma_figure, mma_panels
    from ssfeat.evaluation.report import distinct_groups

    one_root = _summaries({"all": {"all": 0.5}, "dataset": {"mine": 0.5}, "category": {"other": 0.5}})
    assert distinct_groups(one_root) == ["all"]
    assert mma_panels(one_root) == [("all", None)]
    two = _summaries({"all": {"all": 0.5}, "dataset": {"mine": 0.5}, "category": {"viewpoint": 0.4, "blur": 0.6}})
    assert distinct_groups(two) == ["all", "category"]
    assert mma_panels(two) == [("all", None), ("category", "viewpoint"), ("category", "blur")]
    roots = _summaries({"all": {"all": 0.5}, "dataset": {"a": 0.4, "b": 0.6}, "category": {"a": 0.4, "b": 0.6}})
    assert distinct_groups(roots) == ["all", "dataset"]
    # the legend sits outside every panel, the curves are not under it
    fig = mma_figure(two)
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert len(fig.axes) == 3 and not any(ax.get_legend() for ax in fig.axes)
    for ax in fig.axes:
        assert ax.get_window_extent().x1 < legend.x0 and ax.get_xlabel() and ax.get_title()
    assert fig.axes[0].get_ylabel() and legend.x1 <= fig.bbox.x1 + 1


@pytest.mark.slow
def test_run_matching(oxford_dir, estimator, tmp_path):
    cfg = MatchingConfig(max_keypoints=300, timing_repeats=1)
    names = ["sift", "upright", "ssfeat", "ssfeat*", "oracle", "oracle_scale"]
    res = run_matching([oxford_dir], names, cfg, estimator, progress=False)
    assert res["n_pairs"] == 2
    s = res["pipelines"]
    for name in ("sift", "upright", "ssfeat", "ssfeat*"):
        assert len(s[name]["all"]["mma"]) == 10 and s[name]["all"]["repeatability"] > 30
    # synthetic rotations of 20 and -35 degrees: rotation-aware pipelines beat upright descriptors
    assert s["sift"]["all"]["mma"][2] > s["upright"]["all"]["mma"][2]
    assert s["ssfeat"]["all"]["mma"][2] > 0.5
    assert s["ssfeat*"]["all"]["mma"][2] >= s["ssfeat"]["all"]["mma"][2] - 1e-9
    assert s["sift"]["all"]["h_acc"][-1] == 1.0 and s["sift"]["all"]["floor_h3"] == 1.0
    for name in ("sift", "ssfeat"):  # AUC <= accuracy at every threshold, and the pairs are solved
        auc, acc = s[name]["all"]["h_auc"], s[name]["all"]["h_acc"]
        assert all(0 <= u <= a + 1e-9 for u, a in zip(auc, acc)) and auc[-1] > 0.5
    assert set(res["timing_640x480_s"]) == {"opencv_sift", "opencv_sift_detect_compute", "sift", "upright", "ssfeat"}
    assert "toy" in format_matching_table(res, "sequence")
    assert plot_mma(res, tmp_path / "mma.png").stat().st_size > 1000
    torch.testing.assert_close(
        torch.tensor(s["ssfeat"]["all"]["repeatability"]), torch.tensor(s["sift"]["all"]["repeatability"])
    )
    assert set(res["paired"]["groups"]["all"]) == {"upright", "ssfeat", "ssfeat*", "oracle", "oracle_scale"}
    # the oracle: SIFT's keypoints, orientations that agree exactly on every repeated keypoint
    assert s["oracle"]["all"]["ori_acc"][0] == 100.0 > s["sift"]["all"]["ori_acc"][0]
    assert s["oracle"]["all"]["repeatability"] == s["sift"]["all"]["repeatability"]
    assert s["oracle"]["all"]["mma"][2] >= s["sift"]["all"]["mma"][2] - 0.02 and "oracle" not in res["timing_640x480_s"]
    assert s["oracle_scale"]["all"]["ori_acc"][0] == 100.0 and s["oracle_scale"]["all"]["mma"][2] > 0.5
    assert "paired against sift" in format_paired_table(res)


def test_floor_corner_error():
    from ssfeat.evaluation.metrics import floor_corner_error

    H = np.array([[1.1, 0.05, 3.0], [-0.02, 0.95, -2.0], [1e-4, 2e-5, 1.0]])
    x0 = np.random.default_rng(0).uniform(0, 200, (30, 2))
    x1 = np.c_[x0, np.ones(30)] @ H.T
    x1 = x1[:, :2] / x1[:, 2:]
    correct = np.ones(30, bool)
    assert floor_corner_error(x0, x1, correct, H, (200, 200)) < 1e-3
    x1[:10] += 40.0  # wrong matches are left out by the mask, not fitted
    correct[:10] = False
    assert floor_corner_error(x0, x1, correct, H, (200, 200)) < 1e-3
    assert floor_corner_error(x0, x1, ~correct, H, (200, 200)) > 10
    assert floor_corner_error(x0, x1, np.arange(30) < 3, H, (200, 200)) == float("inf")
    line = np.c_[np.arange(6.0), 2 * np.arange(6.0)]  # collinear matches: a degenerate fit, not NaN
    assert floor_corner_error(line, line, np.ones(6, bool), H, (200, 200)) == float("inf")


def test_oracle_orientations_are_the_local_rotation():
    from ssfeat.evaluation.oracle import oracle_orientations

    kp = np.array([[10.0, 20.0], [160.0, 120.0], [300.0, 5.0]], np.float32)
    for angle in (20.0, -35.0, 180.0):  # cv2: positive angles turn counter-clockwise as displayed
        H = np.vstack([cv2.getRotationMatrix2D((160, 120), angle, 1.3), [0, 0, 1]])
        theta, log2s = oracle_orientations(kp, H)
        np.testing.assert_allclose(theta, np.full(3, np.radians(angle) % (2 * np.pi)), atol=1e-5)
        np.testing.assert_allclose(log2s, np.full(3, np.log2(1.3)), atol=1e-5)
    H = np.array([[1.0, 0, 0], [0, 1, 0], [0.01, 0, 1]])  # a perspective map: image-1 point (100, 0) has no preimage
    assert [a.tolist() for a in oracle_orientations(np.array([[100.0, 0.0]]), H)] == [[0.0], [0.0]]
    assert oracle_orientations(np.zeros((0, 2)), H)[0].shape == (0,)


def test_paired_comparison_and_sign_test():
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0
    assert sign_test_p(0, 5) == sign_test_p(5, 0) == 2 / 32
    assert math.isclose(sign_test_p(10, 2), 2 * (1 + 12 + 66) / 4096)

    def row(ok: bool, mma3: float, dataset: str) -> dict:
        h = {"h_acc": [0.0, float(ok), 1.0, 1.0], "h_auc": [0.0, 0.5 * ok, 1.0, 1.0]}
        return {**h, "mma": [0.0, 0.0, mma3] + [1.0] * 7, "dataset": dataset}

    base = [row(False, 0.5, "a"), row(True, 0.5, "a"), row(True, 0.2, "b"), row(False, 0.4, "b")]
    other = [row(True, 0.6, "a"), row(True, 0.7, "a"), row(False, 0.2, "b"), row(True, 0.4, "b")]
    out = paired_comparison({"sift": base, "x": other}, "sift", MatchingConfig())
    r = out["all"]["x"]
    assert r["pairs"] == 4 and r["h_wins"] == [0, 2, 0, 0] and r["h_losses"] == [0, 1, 0, 0]
    assert r["h_sign_test_p"] == [1.0, 1.0, 1.0, 1.0] and math.isclose(r["mma3_diff"], 7.5)
    assert math.isclose(r["h3_diff"], 25.0)  # solved at 3 px: 1-0, 1-1, 0-1, 1-0
    assert math.isclose(r["h3_diff_se"], np.std([100, 0, -100, 100], ddof=1) / 2, rel_tol=1e-3)
    assert math.isclose(r["mma3_diff_se"], np.std([10, 20, 0, 0], ddof=1) / 2, rel_tol=1e-3)
    # AUC@3 shares: 1 - 1.5 / 3 = 0.5 for a pair right at 3 px, 0 otherwise
    assert math.isclose(r["h_auc3_diff"], 12.5)
    assert math.isclose(r["h_auc3_diff_se"], np.std([50, 0, -50, 50], ddof=1) / 2, rel_tol=1e-3)
    # the tables report these thresholds: a config without them is refused up front
    with pytest.raises(ValueError, match="h_thresholds must include"):
        MatchingConfig(h_thresholds=(2, 5))
    with pytest.raises(ValueError, match="mma_thresholds must include"):
        MatchingConfig(mma_thresholds=(1, 2))
    with pytest.raises(ValueError, match="sift_first_octave"):
        MatchingConfig(sift_first_octave=2)
    assert (out["a"]["x"]["h_wins"][1], out["b"]["x"]["h_wins"][1], out["b"]["x"]["h_losses"][1]) == (1, 1, 1)


def test_homography_metrics_average_the_repeated_ransac_fits():
    orders = ransac_orders(50, 4)
    assert len(orders) == 4 and (orders[0] == np.arange(50)).all()
    assert all(sorted(o.tolist()) == list(range(50)) for o in orders)
    assert len({tuple(o) for o in orders}) == 4  # distinct shuffles
    assert all((a == b).all() for a, b in zip(orders, ransac_orders(50, 4)))  # the same in every run

    H = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (40, 2)).astype(np.float32)
    ones = np.ones(40, np.float32)
    f0 = Features(xy, 4 * ones, 0 * ones, ones, image_size=(200, 200))
    f1 = Features(xy + np.float32([5, -3]), 4 * ones, 0 * ones, ones, image_size=(200, 200))
    idx = np.stack([np.arange(40)] * 2, 1)

    class EveryFourthFitFails:  # fits exactly, except that every fourth call finds no model
        calls = 0

        def fit(self, x0, x1):
            self.calls += 1
            return (None, None) if self.calls % 4 == 0 else (H, None)

    r = score_pair(f0, f1, idx, H, MatchingConfig(ransac_repeats=8), EveryFourthFitFails())
    assert r["h_acc"] == [0.75] * 4 and r["corner_error"] < 1e-9 and len(r["corner_errors"]) == 8
    assert r["h_auc"] == [0.75] * 4 and r["mma"][0] == 1.0
    with pytest.raises(ValueError, match="ransac_repeats"):
        MatchingConfig(ransac_repeats=0)


@pytest.mark.slow
def test_run_matching_skips_pairs_a_pipeline_cannot_handle(tmp_path):
    seq = tmp_path / "v_tiny"
    seq.mkdir()
    img = textured_image(160, 200, seed=4)
    for k, im in ((1, img), (2, img), (3, img[:12, :12])):  # the 12x12 target is too small for the detector
        cv2.imwrite(str(seq / f"{k}.png"), im)
    for k in (2, 3):
        (seq / f"H_1_{k}").write_text("1 0 0\n0 1 0\n0 0 1")
    cfg = MatchingConfig(max_keypoints=100, timing_repeats=1)
    res = run_matching([tmp_path, tmp_path / "."], ["sift", "rekd"], cfg, progress=False)  # one root, twice
    assert res["n_pairs"] == 1 and len(res["per_pair"]["sift"]) == len(res["per_pair"]["rekd"]) == 1
    assert len(res["skipped"]) == 1 and "3.png" in res["skipped"][0] and "too small" in res["skipped"][0]


def test_benchmark_json_is_strict(tmp_path):
    import json

    from ssfeat.evaluation.report import write_json

    path = write_json({"acc": float("nan"), "err": [math.inf, 1.5], "n": 3}, tmp_path / "r.json")
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}"))
    assert strict == {"acc": None, "err": [None, 1.5], "n": 3}


def test_oracle_names_are_reserved(oxford_dir):
    with pytest.raises(ValueError, match="reserved for the ground-truth rows"):
        run_matching([oxford_dir], {"oracle*": build_pipeline("sift", 50)}, MatchingConfig(), progress=False)


# ------------------------------------------------------------------------------------------------
# bad input in the benchmarks: unreadable, tiny or blank images are skipped with a warning


BAD_IMAGES = {
    "blank": np.full((160, 200), 128, np.uint8),
    "20x20": textured_image(20, 20, seed=5),
    "1x1": np.full((1, 1), 7, np.uint8),
}


def write_pair_sequences(root, bad: np.ndarray | None = None, unreadable_reference: bool = False):
    """Two HPatches-layout sequences ``v_a`` and ``v_b`` under ``root``: a 160x200 textured reference
    and targets 2, 3 turned by 15 and -25 degrees. ``bad``: ``v_b`` also gets target 4 = ``bad``
    (identity homography); ``unreadable_reference``: ``v_a/1.png`` is not an image."""
    for s, name in enumerate(("v_a", "v_b")):
        seq = root / name
        seq.mkdir(parents=True)
        img = textured_image(160, 200, seed=10 + s)
        cv2.imwrite(str(seq / "1.png"), img)
        for k, angle in ((2, 15.0), (3, -25.0)):
            H = np.vstack([cv2.getRotationMatrix2D((100, 80), angle, 1.0), [0, 0, 1]])
            cv2.imwrite(str(seq / f"{k}.png"), cv2.warpPerspective(img, H, (200, 160), borderMode=cv2.BORDER_REFLECT))
            np.savetxt(seq / f"H_1_{k}", H)
    if bad is not None:
        cv2.imwrite(str(root / "v_b" / "4.png"), bad)
        (root / "v_b" / "H_1_4").write_text("1 0 0\n0 1 0\n0 0 1")
    if unreadable_reference:
        (root / "v_a" / "1.png").write_bytes(b"not an image")
    return root


def same_averages(a: dict, b: dict) -> None:
    """The per-pipeline averages of two benchmark results agree (overall and per category)."""
    assert a["pipelines"].keys() == b["pipelines"].keys()
    for name in a["pipelines"]:
        for g in ("all", "category"):
            assert a["pipelines"][name][g] == b["pipelines"][name][g], (name, g)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_matching_skips_tiny_and_blank_images_with_a_warning(tmp_path, kind, caplog):
    import logging

    from ssfeat.evaluation.matching import MIN_IMAGE_SIDE

    assert MIN_IMAGE_SIDE == 32  # documented in the module: the 32 px keypoint window of the patch-pose pipelines
    cfg = MatchingConfig(max_keypoints=100, timing_repeats=1, ransac_repeats=3)
    good = run_matching([write_pair_sequences(tmp_path / "good")], ["sift"], cfg, progress=False)
    with caplog.at_level(logging.WARNING):
        res = run_matching([write_pair_sequences(tmp_path / "bad", BAD_IMAGES[kind])], ["sift"], cfg, progress=False)
    reason = "blank" if kind == "blank" else "too small"
    bad_file = str(tmp_path / "bad" / "v_b" / "4.png")
    assert bad_file in caplog.text and reason in caplog.text
    pair = f"{tmp_path / 'bad' / 'v_b' / '1.png'} -> {bad_file}: "
    assert len(res["skipped"]) == 1 and res["skipped"][0].startswith(pair)
    assert res["skipped"][0][len(pair) :].startswith(f"{bad_file}: ") and reason in res["skipped"][0]
    assert res["n_pairs"] == good["n_pairs"] == 4 and len(res["per_pair"]["sift"]) == 4
    same_averages(res, good)  # the skipped pair counts nowhere, not as a 0
    assert res["pipelines"]["sift"]["all"]["mma"][2] > 0.5


def test_matching_with_every_pair_skipped_is_a_clear_error(tmp_path):
    seq = tmp_path / "v_blank"
    seq.mkdir()
    for k in (1, 2):
        cv2.imwrite(str(seq / f"{k}.png"), BAD_IMAGES["blank"])
    (seq / "H_1_2").write_text("1 0 0\n0 1 0\n0 0 1")
    with pytest.raises(ValueError, match="every image pair was skipped"):
        run_matching([tmp_path], ["sift"], MatchingConfig(max_keypoints=50, timing_repeats=1), progress=False)


def test_read_benchmark_image_refuses_tiny_and_blank_images(tmp_path):
    from ssfeat.data.images import ImageReadError
    from ssfeat.evaluation.matching import BenchmarkImageError, read_benchmark_image

    ramp = np.tile(np.array([100, 102], np.uint8), (32, 16))  # 2 gray levels from darkest to brightest: not blank
    faint = ramp.clip(0, 101)  # 1 level: blank, as in load_textured
    for name, im in {**BAD_IMAGES, "ramp": ramp, "faint": faint, "32x32": textured_image(32, 32)}.items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), im)
    for name in ("blank", "faint"):
        with pytest.raises(BenchmarkImageError, match=rf"{name}\.png: blank image"):
            read_benchmark_image(tmp_path / f"{name}.png")
    for name, size in (("20x20", "20x20"), ("1x1", "1x1")):
        with pytest.raises(BenchmarkImageError, match=rf"{name}\.png: {size} px is too small"):
            read_benchmark_image(tmp_path / f"{name}.png")
    assert read_benchmark_image(tmp_path / "ramp.png").shape == (32, 32)
    assert read_benchmark_image(tmp_path / "32x32.png").shape == (32, 32)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ImageReadError, match="junk.png"):
        read_benchmark_image(tmp_path / "junk.png")
