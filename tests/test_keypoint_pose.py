"""Scale-covariant keypoint pose: view-pair synthesis, the scale and orientation training tasks,
the estimator's keypoint API and the keypoint benchmark."""

import copy
import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssfeat.cli import main
from ssfeat.data.images import load_textured
from ssfeat.data.view_pairs import ViewPairConfig, ViewPairSynthesizer, similarity_view
from ssfeat.evaluation.baselines import KeypointPoseOnPatches
from ssfeat.evaluation.keypoints import (
    SMALLEST_SIZE,
    LoGScaleSelection,
    calibrate_size_range,
    pair_keypoints,
    score_pairs,
)
from ssfeat.features import Features
from ssfeat.inference.pose import PRIOR_WINDOW_RINGS, SIZE_PRIOR_OCTAVES, PatchPoseEstimator
from ssfeat.logpolar import sample_logpolar
from ssfeat.models import PatchPoseConfig, PatchPoseNet
from ssfeat.models.scale_pose import LogPolarScaleNet, ScalePoseConfig
from ssfeat.patches import sample_patches
from ssfeat.training import ScalePoseTrainConfig
from ssfeat.training.losses import mode_agreement_loss
from ssfeat.training.tasks.scalepose import ScalePoseTask, evaluate_scale_pairs, mean_octave

from .conftest import textured_image

TINY_SCALE = ScalePoseConfig(channels=4, hidden=8)


def tiny_scale_cfg(images, steps=4, **kw) -> ScalePoseTrainConfig:
    base = dict(batch_size=2, val_pairs=2, val_every=2, ckpt_every=2, warmup_steps=2, workers=0)
    pairs = ViewPairConfig(keypoints=6, max_side=160)
    return ScalePoseTrainConfig(images=str(images), steps=steps, model=TINY_SCALE, pairs=pairs, **{**base, **kw})


@pytest.fixture(scope="module")
def photos(image_dir):
    return load_textured(image_dir, as_uint8=False)[1]


def test_view_pairs_are_reproducible_and_labelled(photos):
    grid = TINY_SCALE.grid
    s = ViewPairSynthesizer(photos, grid, ViewPairConfig(keypoints=8, max_side=160))
    a, b = s.batch([3, 4]), s.batch([3, 4])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["lp0"].shape[1:] == (grid.n_rings, grid.n_angles) and a["lp0"].shape == a["lp1"].shape
    assert (a["log2_zoom"].abs() <= 2).all() and ((a["rotation"] >= 0) & (a["rotation"] < 2 * math.pi)).all()
    ref, view, p0, p1, sizes, lz, rot = s.views(3, crop=True)
    assert (sizes > 0).all() and len(p0) == len(p1) == len(sizes) > 0
    assert 0 <= p1[:, 0].min() and p1[:, 0].max() <= view.shape[1] - 1
    assert 0 <= p1[:, 1].min() and p1[:, 1].max() <= view.shape[0] - 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similarity_view_matches_its_homography(photos, seed):
    """The view is the photo warped by H_0to1 (up to the photometric change): correlation near 1,
    and lower for H shifted by 8 px; the view has no uncovered pixels."""
    ref, view, H = similarity_view(photos[seed], 2.0, 0.0, 256, np.random.default_rng(seed))
    warped = cv2.warpPerspective(ref, H, view.shape[::-1], borderMode=cv2.BORDER_REFLECT_101).astype(float)
    shifted = np.array([[1.0, 0, 8], [0, 1, 0], [0, 0, 1]]) @ H
    off = cv2.warpPerspective(ref, shifted, view.shape[::-1], borderMode=cv2.BORDER_REFLECT_101).astype(float)
    good = np.corrcoef(warped.ravel(), view.ravel())[0, 1]
    bad = np.corrcoef(off.ravel(), view.ravel())[0, 1]
    assert good > 0.95 and good - bad > 0.02, (good, bad)
    A = H[:2, :2]
    assert abs(0.5 * math.log2(np.linalg.det(A))) <= 2.0 and np.allclose(A @ A.T, np.linalg.det(A) * np.eye(2))


def test_scale_network_overfits_a_batch(photos):
    """The scale histograms of one batch of view pairs align within a third of an octave for most
    keypoint pairs after 80 steps (from about a quarter at the start)."""
    torch.manual_seed(0)
    s = ViewPairSynthesizer(photos, ScalePoseConfig().grid, ViewPairConfig(keypoints=16, max_side=200))
    batch = s.batch(range(4))
    cfg = ScalePoseTrainConfig(model=ScalePoseConfig())
    task, net = ScalePoseTask(cfg), LogPolarScaleNet(cfg.model)
    before = evaluate_scale_pairs(net, batch)["scale_acc@0.333"]
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(80):
        loss, _ = task.loss(net, batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_scale_pairs(net, batch)["scale_acc@0.333"]
    assert before < 60 and after >= 85, (before, after)


@pytest.mark.parametrize("field, log_key", [("locality", "mean_octave"), ("mode_weight", "loss_mode")])
def test_weighted_scale_loss_terms(photos, field, log_key):
    """``locality`` adds the histograms' mean ring in octaves (logged as ``mean_octave``),
    ``mode_weight`` the mode-agreement cross-entropy (``loss_mode``): each is logged, added to the
    alignment loss with its weight, and off by default; negative weights are refused."""
    s = ViewPairSynthesizer(photos, TINY_SCALE.grid, ViewPairConfig(keypoints=4, max_side=160))
    batch = s.batch(range(2))
    torch.manual_seed(0)
    net = LogPolarScaleNet(TINY_SCALE)
    plain, logs = ScalePoseTask(ScalePoseTrainConfig(model=TINY_SCALE)).loss(net, batch, 0)
    assert log_key not in logs
    both, logs = ScalePoseTask(ScalePoseTrainConfig(model=TINY_SCALE, **{field: 0.5})).loss(net, batch, 0)
    z = net(torch.cat([batch["lp0"], batch["lp1"]]))
    if field == "locality":
        expected = (F.softmax(z, -1) * torch.arange(z.shape[1]) / TINY_SCALE.rings_per_octave).sum(-1).mean()
    else:
        shift = batch["log2_zoom"] * TINY_SCALE.rings_per_octave
        expected = mode_agreement_loss(*z.chunk(2), shift, circular=False)
    assert logs[log_key] > 0 and math.isclose(logs[log_key], expected.item(), rel_tol=1e-5)
    assert math.isclose(both.item(), plain.item() + 0.5 * expected.item(), rel_tol=1e-5)
    with pytest.raises(ValueError, match=field):
        ScalePoseTrainConfig(**{field: -0.1})


def test_locality_term_pulls_the_histograms_to_smaller_rings():
    logits = torch.zeros(3, 9, requires_grad=True)
    mean_octave(logits, 4).backward()
    assert (logits.grad[:, :4] < 0).all() and (logits.grad[:, 5:] > 0).all()  # descent raises small rings


@pytest.fixture(scope="module")
def estimator():
    torch.manual_seed(0)
    return PatchPoseEstimator(PatchPoseNet(PatchPoseConfig()), scale_model=LogPolarScaleNet(ScalePoseConfig()))


def test_keypoint_poses_shapes_prior_and_errors(estimator):
    img = textured_image(200, 240, seed=3)
    xy = np.array([[10.0, 20.0], [120.0, 100.0], [239.0, 199.0]])
    p = estimator.keypoint_poses(img, xy, k=2)
    for t in (p.orientation, p.size, p.ori_score, p.size_score, p.ori_at_size):
        assert t.shape == (3, 2) and torch.isfinite(t).all()
    # the orientation that goes with each size is the one read at that size
    assert torch.equal(p.ori_at_size[:, 0], p.orientation[:, 0])
    c_window = estimator.scale_model.config.ori_window
    for j in range(2):
        P = estimator.config.patch_size
        side = (c_window * p.size[:, j]).numpy()
        patches = sample_patches(img.astype(np.float32) / 255, xy, (side / P)[:, None, None] * np.eye(2), P)[:, None]
        assert torch.allclose(estimator(patches).orientation, p.ori_at_size[:, j], atol=1e-5)
    assert ((p.orientation >= 0) & (p.orientation < 2 * math.pi)).all() and (p.size > 0).all()
    # a tight prior pulls every size towards the given one
    c = estimator.scale_model.config
    target = np.full(3, c.size_factor * c.min_radius * 2.0**3)
    q = estimator.keypoint_poses(img, xy, sizes=target)
    assert (torch.log2(q.size[:, 0] / torch.from_numpy(target)).abs() <= 1.5).all()
    assert estimator.keypoint_poses(img, np.zeros((0, 2))).size.shape == (0, 1)
    with pytest.raises(ValueError, match="outside"):
        estimator.keypoint_poses(img, np.array([[500.0, 10.0]]))
    with pytest.raises(ValueError, match="sizes"):
        estimator.keypoint_poses(img, xy, sizes=np.array([1.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="NaN"):
        estimator.keypoint_poses(img, np.array([[np.nan, 1.0]]))
    kps = estimator.estimate(img, [cv2.KeyPoint(50.0, 60.0, 7.0)])
    assert len(kps) == 1 and kps[0].pt == (50.0, 60.0) and kps[0].size > 0
    fixed = estimator.estimate(img, [cv2.KeyPoint(50.0, 60.0, 7.0)], support=32.0)  # the patch protocol
    assert fixed[0].size > 0
    assert estimator.estimate_laf(img, xy).shape == (1, 3, 2, 3)
    no_scale = PatchPoseEstimator(estimator.model)
    with pytest.raises(ValueError, match="no scale model"):
        no_scale.keypoint_poses(img, xy)


def test_size_prior_reads_only_the_rings_near_the_prior(bundled, photos):
    """With sizes given, only the histogram rings around each prior are computed (the logits' norm
    extrapolated from them): the sizes stay those of the whole histogram with the same prior."""
    est = PatchPoseEstimator(bundled.model, scale_model=bundled.scale_model)
    sm, c = est.scale_model, est.scale_model.config
    img = photos[0]
    kps = cv2.SIFT_create(200).detect((img * 255).astype(np.uint8), None)
    xy, sizes = np.array([k.pt for k in kps]), np.array([k.size for k in kps])
    sizes[:3] = [0.1, 500.0, 2000.0]  # priors beyond either end of the histogram
    got = est.keypoint_poses(img, xy, sizes)
    with torch.inference_mode():
        logits = sm(sample_logpolar(img, xy, c.grid))
    ring = torch.arange(c.n_rings) / c.rings_per_octave
    prior = torch.from_numpy(np.log2(sizes / (c.size_factor * c.min_radius))).float()
    logp = F.log_softmax(logits - 0.5 * ((ring - prior[:, None]) / SIZE_PRIOR_OCTAVES) ** 2, -1)
    whole = sm.sizes(logp)[0][:, 0]
    err = torch.log2(got.size[:, 0] / whole).abs()
    assert (err <= 1 / 6).float().mean() >= 0.97 and err.median() < 0.05, err
    assert torch.allclose(got.size_hist.sum(1), torch.ones(len(xy)), atol=1e-5)
    assert (got.size_hist > 0).sum(1).max() <= 2 * PRIOR_WINDOW_RINGS + 1


def test_pair_keypoints_is_mutual_and_within_the_radius():
    H = np.array([[1.0, 0, 5], [0, 1, 0], [0, 0, 1]])
    xy0 = np.array([[0.0, 0], [10, 10], [30, 30]])
    xy1 = np.array([[5.5, 0], [15, 13.5], [35.2, 30.1], [36, 30]])
    idx = pair_keypoints(xy0, xy1, H, 2.0)
    assert idx.tolist() == [[0, 0], [2, 2]]
    assert pair_keypoints(xy0[:0], xy1, H, 2.0).shape == (0, 2)


def test_log_scale_selection_follows_a_zoom():
    """LoG scale selection at the centre of a Gaussian blob: twice the blob, twice the size."""
    y, x = np.mgrid[0:200, 0:200]
    sizes = []
    for s in (4.0, 8.0):
        img = np.exp(-((x - 100.0) ** 2 + (y - 100.0) ** 2) / (2 * s * s)).astype(np.float32)
        f = Features(np.array([[100.0, 100.0]], np.float32), np.ones(1), np.zeros(1), np.ones(1), (200, 200))
        sizes.append(LoGScaleSelection()(img, f)[1][0])
    assert abs(math.log2(sizes[1] / sizes[0]) - 1.0) < 0.2


def test_score_pairs_bins_by_zoom():
    rec = {
        "zoom": np.array([-1.8, 0.2, 1.9]),
        "methods": {"m": (np.radians([1.0, 20.0, 3.0]), np.array([0.1, 0.5, 0.0]))},
    }
    out = score_pairs([rec])
    assert out["n"] == 3 and out["methods"]["m"]["ori@10"] == pytest.approx(200 / 3)
    assert out["methods"]["m"]["size@1/3"] == pytest.approx(200 / 3)
    assert set(out["by_zoom"]) == {"-2.0..-1.5", "+0.0..+0.5", "+1.5..+2.0"}


def test_benchmark_keypoints_cli(oxford_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "k.json"
    argv = ["benchmark", "keypoints", "--root", str(oxford_dir), "--images", str(image_dir), "--limit", "2"]
    assert main([*argv, "--max-keypoints", "200", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {oxford_dir.name, "similarity:" + image_dir.name, "all"} <= set(res["datasets"])
    toy = res["datasets"][oxford_dir.name]  # one dataset per --root
    assert toy["pairs"] == 2 and toy["n"] > 20
    assert {"detector", "kornia", "log", "ssfeat_fixed", "ssfeat_orienter", "ssfeat", "ssfeat_prior"} == set(
        toy["methods"]
    )
    # the toy pairs are exact rotations (+ a 1.3x zoom): SIFT's own pose is mostly right on them
    assert toy["methods"]["detector"]["ori@10"] > 50
    assert "sift_detect_and_compute" in res["timing"]["seconds"]
    assert "ssfeat" in capsys.readouterr().out
    assert main(["benchmark", "keypoints", "--json", str(out)]) == 2


@pytest.fixture(scope="module")
def bundled():
    return PatchPoseEstimator.from_pretrained()


def test_keypoint_pose_on_patches_turns_with_an_exact_quarter_turn(bundled, photos):
    """The patch benchmark's keypoint-pose method: photo patches turned by exactly 90 degrees (no
    resampling) get the same sizes and orientations 90 degrees further, counter-clockwise."""
    im = torch.from_numpy(photos[0]).float()
    h, w = im.shape
    corners = ((0, 0), (h - 65, w - 65), (h // 3, w // 2))
    patches = torch.stack([im[y : y + 65, x : x + 65] for y, x in corners])[:, None]
    turned = torch.rot90(patches, 1, (2, 3))  # counter-clockwise as displayed
    out = KeypointPoseOnPatches(bundled)(torch.cat([patches, turned]), k=2)
    assert out["orientation"].shape == (6, 2) and out["log2_scale"].shape == (6, 2)
    assert (out["log2_scale"][3:, 0] - out["log2_scale"][:3, 0]).abs().max() < 0.1
    d = out["orientation"][3:, 0] - out["orientation"][:3, 0] - math.pi / 2
    assert (torch.remainder(d + math.pi, 2 * math.pi) - math.pi).abs().max() < math.radians(12)
    with pytest.raises(ValueError, match="scale model"):
        KeypointPoseOnPatches(PatchPoseEstimator(bundled.model))


def test_moving_the_ring_range_shifts_the_histogram_and_calibration_places_it(bundled, photos):
    """The scale network is convolutional along the rings: rings k steps further out give the same
    logits k rings earlier. Calibration sets the smallest reported size to SMALLEST_SIZE."""
    model = copy.deepcopy(bundled.scale_model)
    c = model.config
    img = photos[0].astype(np.float32)
    xy = np.array([[img.shape[1] / 2, img.shape[0] / 2], [40.0, 50.0]])
    with torch.inference_mode():
        z0 = model(sample_logpolar(img, xy, c.grid))
        c.min_radius *= 2.0 ** (3 / c.rings_per_octave)
        z1 = model(sample_logpolar(img, xy, c.grid))
    # the logits are centred and rescaled over the whole range: compare the shapes of the overlap
    a, b = z0[:, 3:], z1[:, :-3]
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    assert (F.cosine_similarity(a, b, -1) > 0.995).all()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    factor, radius = calibrate_size_range(model, photos[:2])
    assert factor > 0 and math.isclose(factor * radius, SMALLEST_SIZE) and c.min_radius == radius
