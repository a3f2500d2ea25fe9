import math

import cv2
import numpy as np
import pytest
import torch

from ssfeat import PatchPoseEstimator
from ssfeat.data.images import read_image, samples_dir
from ssfeat.geometry import angle_from_cv2
from ssfeat.inference.pose import detect_sift
from ssfeat.models import MODEL_KINDS, PatchPoseConfig, PatchPoseNet
from ssfeat.models.layers import fuse_batchnorm
from ssfeat.models.patch_pose import circular_window, histogram_peaks, standardize
from ssfeat.models.weights import load_pose_model, save_weights
from ssfeat.pipeline import build_pipeline, pipeline_estimator

from .conftest import textured_image

BUNDLED = MODEL_KINDS["pose"].bundled


@pytest.fixture(scope="module", params=sorted({v: k for k, v in BUNDLED.items()}.values()))
def bundled(request):
    """Every bundled patch-pose file (one name each) must satisfy the conventions tested here."""
    return PatchPoseEstimator.from_pretrained(request.param)


@pytest.fixture(scope="module")
def sample_patches(bundled):
    """Patches at SIFT keypoints of the bundled sample photos (never used for training)."""
    out = []
    for p in sorted(samples_dir().iterdir())[:2]:
        img = read_image(p)
        H, W = img.shape
        kps = [k for k in detect_sift(img, 300) if 30 < k.pt[0] < W - 30 and 30 < k.pt[1] < H - 30][:100]
        out.append(bundled.extract(img, np.array([k.pt for k in kps])))
    return torch.cat(out)


@pytest.mark.parametrize("backbone", ["fast", "small", "resnet18"])
def test_shapes(backbone):
    net = PatchPoseNet(PatchPoseConfig(backbone=backbone)).eval()
    o, s = net(torch.rand(3, 1, 32, 32))
    assert o.shape == (3, 36) and s.shape == (3, 13)
    assert torch.allclose(o.norm(dim=-1), torch.full((3,), 12.0), atol=1e-4)  # fixed logit norm


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_fused_batchnorm_keeps_the_outputs(backbone):
    torch.manual_seed(0)
    net = PatchPoseNet(PatchPoseConfig(backbone=backbone))
    with torch.no_grad():  # non-trivial statistics and affine parameters in every batch norm
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        ref = net.eval()(x)
        fused = fuse_batchnorm(net)(x)
    n_bn = sum(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for m in net.modules())
    assert n_bn == 0  # every batch norm of these backbones follows a convolution or linear layer
    assert torch.allclose(ref[0], fused[0], atol=1e-4) and torch.allclose(ref[1], fused[1], atol=1e-4)


def test_separate_backbones_decouple_the_heads(tmp_path):
    torch.manual_seed(0)
    net = PatchPoseNet(PatchPoseConfig(backbone="tiny", separate_backbones=True)).eval()
    shared = PatchPoseNet(PatchPoseConfig(backbone="tiny"))
    n_backbone = sum(p.numel() for p in shared.backbone.parameters())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in shared.parameters()) + n_backbone
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        o, s = net(x)
        for p in net.backbone.parameters():  # the orientation backbone only feeds the orientation head
            p.add_(torch.randn_like(p))
        o2, s2 = net(x)
    assert torch.equal(s, s2) and not torch.allclose(o, o2)
    assert torch.equal(load_pose_model(save_weights(net, tmp_path / "w.safetensors"))(x)[1], s2)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="unknown backbone"):
        PatchPoseNet(PatchPoseConfig(backbone="vgg"))


@pytest.mark.parametrize("window", [0.0, 1.0])
def test_c4_model_is_exactly_equivariant(window):
    net = PatchPoseNet(PatchPoseConfig(c4_symmetric=True, window=window)).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        o0, s0 = net(x)
        o1, s1 = net(torch.rot90(x, 1, (-2, -1)))  # content CCW by 90 degrees
    assert torch.allclose(o1, torch.roll(o0, 9, -1), atol=1e-4)
    assert torch.allclose(s1, s0, atol=1e-4)


def test_standardize_with_and_without_window():
    x = torch.rand(3, 1, 32, 32) * 0.5 + 0.2
    plain = standardize(x)
    assert torch.allclose(plain.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(plain.square().mean((1, 2, 3)), torch.ones(3), atol=0.05)
    w = circular_window(32, 1.0)
    assert w[16, 16] > 0.999 and w[0, 0] < 0.005 and w[16, 0] < w[16, 2]  # a disk with a soft edge
    assert torch.equal(w, torch.rot90(w, 1)) and torch.equal(w, w.flip(0))
    y = standardize(x, 1.0)
    z = y / w  # undo the window: zero weighted mean, unit weighted RMS
    assert torch.allclose((z * w).sum((1, 2, 3)) / w.sum(), torch.zeros(3), atol=1e-5)
    assert torch.allclose((z.square() * w).sum((1, 2, 3)) / w.sum(), torch.ones(3), atol=0.05)
    # brightness/contrast invariance holds with the window too
    assert torch.allclose(standardize(3 * x + 1, 1.0), y, rtol=0.02, atol=1e-3)


def test_window_defaults_and_legacy_files():
    assert PatchPoseConfig().window == 1.0  # new models read through the window
    assert PatchPoseConfig.from_dict({"backbone": "tiny"}).window == 0.0  # files from before it: off
    assert load_pose_model("patchpose").config.window == 1.0
    assert load_pose_model("patchpose_fast").config.window == 0.0
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="window"):
            PatchPoseNet(PatchPoseConfig(window=bad))


def test_bad_scale_histograms_are_rejected():
    for bins, rng in [(1, 2.0), (13, 0.0), (13, float("nan"))]:
        with pytest.raises(ValueError, match="scale histogram"):
            PatchPoseNet(PatchPoseConfig(n_scale_bins=bins, scale_range=rng))


def test_windowed_model_ignores_the_corners():
    torch.manual_seed(0)
    net = PatchPoseNet(PatchPoseConfig(window=1.0)).eval()
    x = torch.rand(8, 1, 32, 32)
    u = torch.arange(32) - 15.5
    corners = (u[None] ** 2 + u[:, None] ** 2).sqrt() > 21.0
    centre = (u[None] ** 2 + u[:, None] ** 2).sqrt() < 4.0
    with torch.no_grad():
        o = net(x)[0]
        dc = (net(torch.where(corners, torch.rand_like(x), x))[0] - o).abs().max()
        dm = (net(torch.where(centre, torch.rand_like(x), x))[0] - o).abs().max()
    assert dc < 0.01 * dm


def test_adaptive_c4_matches_full_c4_on_uncertain_patches_only():
    net = PatchPoseNet(PatchPoseConfig()).eval()
    x = torch.rand(16, 1, 32, 32)
    with torch.no_grad():
        single = net(x)
        net.set_c4(True)
        full = net(x)
        net.set_c4(False)
        peak = torch.softmax(single[0], -1).amax(-1)
        t = float(peak.median())  # about half the patches below
        net.set_c4_below(t)
        adaptive = net(x)
        alone = net(x[:3])  # a patch's output does not depend on its batch
    low = peak < t
    assert 0 < int(low.sum()) < len(x)
    for a, s, f in zip(adaptive, single, full):
        assert torch.allclose(a[low], f[low], atol=1e-5) and torch.allclose(a[~low], s[~low], atol=1e-5)
    assert torch.allclose(alone[0], adaptive[0][:3], atol=1e-5)
    net.set_c4_below(1.0)  # every patch is uncertain: exactly the C4 model
    with torch.no_grad():
        assert torch.allclose(net(x)[0], full[0], atol=1e-5)
    seen = []
    net.backbone.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    net.train()  # training always runs the single pass
    net(x)
    assert seen == [len(x)]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="c4_below"):
            net.set_c4_below(bad)


def test_bundled_adaptive_c4_and_switches():
    est = PatchPoseEstimator.from_pretrained()
    assert 0 < est.config.c4_below < 1  # calibrated on held-out photos, stored in the weights file
    assert PatchPoseEstimator.from_pretrained(c4=False).config.c4_below == 0
    assert PatchPoseEstimator.from_pretrained(c4_below=0.2).config.c4_below == 0.2
    assert est.config.backbone == "tiny" and BUNDLED["patchpose"] == BUNDLED["patchpose_tiny"]
    # the matching pipelines keep one pass per patch, also with explicit weights storing a threshold
    for weights in (None, "patchpose", "patchpose_fast"):
        single = pipeline_estimator(weights).config
        assert single.c4_below == 0 and not single.c4_symmetric
    built = build_pipeline("ssfeat").orienter.estimator.config
    assert built.backbone == "tiny" and built.c4_below == 0


def test_weights_roundtrip(tmp_path):
    net = PatchPoseNet(PatchPoseConfig(backbone="fast")).eval()
    path = save_weights(net, tmp_path / "w.safetensors")
    net2 = load_pose_model(path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x)[0], net2(x)[0])
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a safetensors") as err:
        load_pose_model(tmp_path / "bad.safetensors")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="'detector' is the bundled detector model, not a patch-pose model"):
        load_pose_model("detector")
    nan = PatchPoseNet(PatchPoseConfig()).eval()
    with torch.no_grad():
        next(nan.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_pose_model(save_weights(nan, tmp_path / "nan.safetensors"))


def test_weights_metadata_is_checked_against_the_tensors_before_a_network_is_built(tmp_path, monkeypatch):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ssfeat.models.weights import model_from_checkpoint
    from ssfeat.training.checkpoint import save_atomic

    src = save_weights(PatchPoseNet(PatchPoseConfig()), tmp_path / "w.safetensors")
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    config = {**json.loads(meta["config"]), "n_ori_bins": 20_000_000}  # a 5 GB head
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(src)), str(bad), metadata={**meta, "config": json.dumps(config)})
    real_init = PatchPoseNet.__init__

    def init(self, cfg):  # building the crafted network for real would take 5 GB
        assert torch.get_default_device().type == "meta" or cfg.n_ori_bins < 1000, "built before validation"
        real_init(self, cfg)

    monkeypatch.setattr(PatchPoseNet, "__init__", init)
    with pytest.raises(ValueError, match=r"bad\.safetensors: weights do not match their stored config \(ori_head"):
        load_pose_model(bad)
    ckpt = {"checkpoint_version": 1, "task": "pose", "config": {"model": config}, "model": load_file(str(src))}
    save_atomic(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"last\.pt: weights do not match their stored config \(ori_head"):
        model_from_checkpoint(tmp_path / "last.pt")
    ckpt["model"].pop("ori_head.3.bias")
    ckpt["config"]["model"]["n_ori_bins"] = 36
    save_atomic(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"stored config \(missing ori_head\.3\.bias\)"):
        model_from_checkpoint(tmp_path / "last.pt")


def test_every_network_can_be_laid_out_without_memory():
    from ssfeat.models.weights import check_state_shapes

    for kind in MODEL_KINDS.values():
        net = kind.network(kind.config())
        check_state_shapes(kind, kind.config(), net.state_dict(), kind.name)  # no error: the shapes agree


def test_histogram_peaks_subbin():
    K = 36
    centre = 10.3
    bins = torch.arange(K, dtype=torch.float64)
    d = torch.remainder(bins - centre + K / 2, K) - K / 2
    p = torch.softmax(-(d**2) / 2.0, 0)[None]
    pos, _ = histogram_peaks(p, 1, circular=True)
    assert pos.item() == pytest.approx(centre, abs=1e-6)  # a Gaussian in log space is a parabola


def test_bundled_model_rotation_by_90_shifts_histogram_by_9_bins(bundled, sample_patches):
    with torch.no_grad():
        h0 = bundled(sample_patches).ori_hist.argmax(-1)
        h1 = bundled(torch.rot90(sample_patches, 1, (-2, -1))).ori_hist.argmax(-1)
    d = torch.remainder(h1 - h0 - 9 + 18, 36) - 18
    assert (d.abs() <= 1).float().mean() >= 0.9


def test_bundled_model_conventions_on_rotated_and_magnified_content(bundled):
    """Content rotated CCW by 60 degrees raises the orientation by ~60 degrees; content magnified by
    sqrt(2) raises log2_scale by ~0.5 (medians over keypoints of a sample photo)."""
    from ssfeat.patches import extract_patches

    img = read_image(sorted(samples_dir().iterdir())[1])
    H, W = img.shape
    xy = np.array([k.pt for k in detect_sift(img, 400) if 60 < k.pt[0] < W - 60 and 60 < k.pt[1] < H - 60][:150])
    theta, s = math.radians(60), 2**0.5
    R_inv = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    views = [extract_patches(img, xy, A, 32) for A in (np.eye(2), R_inv, np.eye(2) / s)]
    out = [bundled(torch.from_numpy(v)[:, None]) for v in views]
    d_ori = torch.remainder(out[1].orientation - out[0].orientation - theta + math.pi, 2 * math.pi) - math.pi
    d_sca = out[2].log2_scale - out[0].log2_scale
    assert d_ori.median().abs() < math.radians(10) and (d_ori.abs() < math.radians(20)).float().mean() > 0.6
    assert abs(d_sca.median().item() - 0.5) < 0.25


def test_estimator_api_and_bad_inputs(bundled):
    out = bundled(torch.rand(5, 3, 48, 48))  # RGB and any size
    assert out.orientation.shape == (5,) and out.log2_scale.shape == (5,)
    assert out.ori_hist.shape == (5, 36) and out.scale_hist.shape == (5, 13)
    assert ((out.orientation >= 0) & (out.orientation < 2 * math.pi)).all()
    assert torch.allclose(out.ori_hist.sum(-1), torch.ones(5))
    t = bundled.topk(torch.rand(5, 1, 32, 32), 4)
    assert t.orientation.shape == (5, 4) and (t.ori_score[:, :-1] >= t.ori_score[:, 1:] - 1e-6).all()
    assert bundled(torch.rand(0, 1, 32, 32)).orientation.shape == (0,)
    bad = torch.rand(2, 1, 32, 32)
    bad[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        bundled(bad)
    with pytest.raises(ValueError, match="shape"):
        bundled(torch.rand(2, 2, 32, 32))
    with pytest.raises(ValueError, match="float"):
        bundled(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


def test_estimate_with_cv2_keypoints_and_lafs(bundled):
    img = textured_image(200, 240, seed=2)
    kps = detect_sift(img, 40)
    out = bundled.estimate(img, kps)  # scale-covariant, from the positions
    assert len(out) == len(kps) > 0
    assert all(0 <= k.angle < 360 and k.size > 0 for k in out)
    assert [k.pt for k in out] == [k.pt for k in kps]
    poses = bundled.keypoint_poses(img, np.array([k.pt for k in kps]))
    assert np.allclose([k.size for k in out], poses.size[:, 0].numpy(), rtol=1e-5)
    fixed = bundled.estimate(img, kps, support=32.0)  # the patch protocol: 32 px windows
    ours = bundled(bundled.extract(img, np.array([k.pt for k in kps])))
    assert np.allclose(angle_from_cv2(np.array([k.angle for k in fixed])), ours.orientation.numpy(), atol=1e-4)
    assert bundled.estimate(img, []) == []
    rgba = np.dstack([img, img, img, np.full_like(img, 255)])
    assert len(bundled.estimate(rgba, kps[:3])) == 3
    laf = bundled.estimate_laf(img, np.array([k.pt for k in kps[:3]]))
    assert laf.shape == (1, 3, 2, 3)
    with pytest.raises(ValueError, match="outside"):
        bundled.estimate(img, [cv2.KeyPoint(500.0, 10.0, 5.0)])
    with pytest.raises(ValueError, match="smaller than"):
        bundled.estimate(img[:20, :20], [cv2.KeyPoint(5.0, 5.0, 5.0)], support=32.0)
    assert len(bundled.estimate(img[:20, :20], [cv2.KeyPoint(5.0, 5.0, 5.0)])) == 1  # no fixed window
    for support in (0.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="support must be a positive"):
            bundled.estimate(img, kps[:2], support=support)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):  # six numbers are not three keypoints
        bundled.estimate_laf(img, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="cv2.KeyPoint"):
        bundled.estimate(img, np.array([[80.0, 60.0]]))
    assert bundled.estimate_laf(img, np.zeros((0, 2))).shape == (1, 0, 2, 3)
    xy = np.array([k.pt for k in kps[:3]])  # kornia's (1, N, 2) and OpenCV's (N, 1, 2) layouts too
    assert torch.equal(bundled.estimate_laf(img, xy[None]), laf) and torch.equal(
        bundled.estimate_laf(img, xy[:, None]), laf
    )
    deep = img.astype(np.uint16) * 257  # 16-bit input gives the same poses as 8-bit
    same = [k.angle for k in bundled.estimate(deep, kps[:5], support=32.0)]
    assert same == pytest.approx([k.angle for k in fixed[:5]], abs=1e-3)
    # the covariant pose goes through a continuous size, so float rounding of the two inputs may move
    # an angle by a fraction of a degree (e.g. a patch at the adaptive C4 threshold), never more
    cov = np.array([k.angle for k in bundled.estimate(deep, kps[:5])])
    assert np.abs((cov - np.array([k.angle for k in out[:5]]) + 180) % 360 - 180).max() < 1.0


@pytest.mark.parametrize("c4", [False, True])
@pytest.mark.parametrize("separate", [False, True])
def test_scale_logits_are_the_forward_scale_logits(c4, separate):
    torch.manual_seed(0)
    net = PatchPoseNet(PatchPoseConfig(c4_symmetric=c4, separate_backbones=separate)).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.scale_logits(x), net(x)[1])
