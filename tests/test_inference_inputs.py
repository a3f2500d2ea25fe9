"""Bad inputs to the Python API get a clear ValueError / TypeError / OSError, never a low-level
exception or silently wrong output."""

import cv2
import numpy as np
import pytest
import torch

from ssfeat import PatchPoseConfig, PatchPoseEstimator, PatchPoseNet
from ssfeat.models.weights import load_pose_model, save_weights


@pytest.fixture(scope="module")
def est():
    return PatchPoseEstimator.from_pretrained()


@pytest.fixture(scope="module")
def gray():
    return np.random.default_rng(0).random((80, 90)).astype(np.float32)


def test_save_weights_to_an_unwritable_place_is_an_oserror(tmp_path):
    net = PatchPoseNet(PatchPoseConfig())
    with pytest.raises(OSError, match=r"cannot write /proc/x\.safetensors"):
        save_weights(net, "/proc/x.safetensors")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write"):
        save_weights(net, blocker / "sub" / "w.safetensors")
    with pytest.raises(TypeError, match="must be a str or path"):
        save_weights(net, None)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_weights_honour_the_umask(tmp_path, umask):
    import os

    old = os.umask(umask)
    try:
        path = save_weights(PatchPoseNet(PatchPoseConfig()), tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_cli_export_to_an_unwritable_place_is_one_error_line(tmp_path, monkeypatch, capsys):
    import ssfeat.cli.export
    from ssfeat.cli import main

    monkeypatch.setattr(ssfeat.cli.export, "model_from_checkpoint", lambda run, average=True: PatchPoseNet().eval())
    assert main(["export", str(tmp_path), "--out", "/proc/x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssfeat: error: cannot write /proc/x.safetensors") and err.count("\n") == 1


@pytest.mark.parametrize(
    "patches, match",
    [
        (torch.rand(2, 1, 32, 32) * 255, r"must be in \[0, 1\].*divide 0\.\.255 data by 255"),
        (torch.rand(2, 1, 32, 32) * 1e38, r"must be in \[0, 1\]"),
        (torch.randn(2, 1, 32, 32), r"must be in \[0, 1\].*normalisation"),
        (torch.rand(2, 1, 32, 32) - 1.0, r"must be in \[0, 1\]"),
        ((torch.rand(2, 1, 32, 32) * 255).long(), "floating-point tensor.*got dtype torch.int64"),
        ((torch.rand(2, 1, 32, 32) * 255).byte(), "floating-point tensor.*got dtype torch.uint8"),
        (torch.rand(2, 1, 0, 0), r"P >= 1, got \(2, 1, 0, 0\)"),
        (torch.rand(0, 1, 0, 0), r"P >= 1"),
        (torch.rand(2, 1, 32, 16), r"\(B, 1 or 3, P, P\)"),
        (np.random.rand(2, 1, 32, 32), "must be a torch.Tensor"),
    ],
)
def test_bad_patches_are_refused(est, patches, match):
    with pytest.raises(ValueError, match=match):
        est(patches)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_patches_are_refused(est, bad):
    x = torch.rand(3, 1, 32, 32)
    x[1, 0, 4, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        est(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        est(x.half())


def test_patch_range_tolerance_and_edge_cases(est):
    x = torch.rand(3, 1, 32, 32)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.05, 1.05  # resampling overshoot is tolerated
    assert est(x).orientation.shape == (3,)
    # bicubic and Lanczos upsampling of crops of a real photo overshoot [0, 1] by up to ~0.15
    from ssfeat import sample_images
    from ssfeat.data.images import read_image

    img = read_image(sample_images()[3])
    crops = [
        img[y : y + 16, x : x + 16] for y in range(0, img.shape[0] - 16, 40) for x in range(0, img.shape[1] - 16, 40)
    ]
    for interp in (cv2.INTER_CUBIC, cv2.INTER_LANCZOS4):
        up = np.stack([cv2.resize(c, (32, 32), interpolation=interp) for c in crops])
        assert up.max() > 1.05 or up.min() < -0.05  # the case this checks
        assert est(torch.from_numpy(up)[:, None]).orientation.shape == (len(crops),)
    assert est(torch.rand(0, 1, 32, 32)).orientation.shape == (0,)  # no patches: empty output
    assert est(torch.rand(2, 3, 1, 1)).orientation.shape == (2,)  # any P >= 1 is resized
    assert est(torch.rand(2, 1, 32, 32).half()).orientation.shape == (2,)


@pytest.mark.parametrize("bs", [0, -4, 2.5, True, "8"])
def test_bad_batch_size(est, bs):
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        PatchPoseEstimator(est.model, batch_size=bs)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        est.batch_size = bs


def test_batch_size_accepts_numpy_ints_and_model_must_be_a_patch_pose_net(est):
    x = torch.rand(5, 1, 32, 32)
    small = PatchPoseEstimator(est.model, batch_size=np.int64(2))
    assert small.batch_size == 2 and torch.allclose(small(x).ori_hist, est(x).ori_hist, atol=1e-5)
    with pytest.raises(TypeError, match="model must be a PatchPoseNet"):
        PatchPoseEstimator("patchpose")


@pytest.mark.parametrize("k", [0, -1, 2.5, 37, True, "2", None])
def test_bad_topk(est, k):
    with pytest.raises(ValueError, match="k must be an int from 1 to 36"):
        est.topk(torch.rand(2, 1, 32, 32), k)


def test_topk_above_the_scale_bins_gives_every_scale_mode(est):
    t = est.topk(torch.rand(2, 1, 32, 32), np.int64(20))
    assert t.orientation.shape == (2, 20) and t.log2_scale.shape == (2, 13)


@pytest.mark.parametrize("kps", [None, 5, "kp", cv2.KeyPoint(10, 10, 5), np.zeros((3, 2))])
def test_estimate_keypoints_must_be_a_keypoint_list(est, gray, kps):
    with pytest.raises(ValueError, match="keypoints must be a list of cv2.KeyPoint.*estimate_laf"):
        est.estimate(gray, kps)


def test_estimate_checks_keypoint_elements(est, gray):
    with pytest.raises(ValueError, match="cv2.KeyPoint objects"):
        est.estimate(gray, [(10.0, 10.0)])


def test_estimate_accepts_tuples_and_object_arrays(est, gray):
    kps = (cv2.KeyPoint(40, 40, 8), cv2.KeyPoint(50, 30, 8))
    ref = est.estimate(gray, list(kps))
    for same in (kps, np.array(kps, dtype=object)):
        assert [k.angle for k in est.estimate(gray, same)] == [k.angle for k in ref]


def test_estimate_reads_the_image_before_returning_no_keypoints(est, gray, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        est.estimate(tmp_path / "nonexistent.png", [])
    with pytest.raises(ValueError, match="image is None"):
        est.estimate(None, [])
    with pytest.raises(ValueError, match="NaN or Inf"):
        est.estimate(np.full((40, 40), np.nan, np.float32), [])
    with pytest.raises(ValueError, match="support must be a positive"):
        est.estimate(gray, [], support=0)
    assert est.estimate(gray, []) == []


@pytest.mark.parametrize("name", [None, 3, ["patchpose"]])
def test_from_pretrained_name_must_be_a_path(name):
    with pytest.raises(TypeError, match="must be a str or path"):
        PatchPoseEstimator.from_pretrained(name)
    with pytest.raises(TypeError, match="must be a str or path"):
        load_pose_model(name)


def test_from_pretrained_checks_the_device_and_options():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available on this machine"):
            PatchPoseEstimator.from_pretrained(device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        PatchPoseEstimator.from_pretrained(device="gpu")
    with pytest.raises(ValueError, match="c4 must be True, False or None"):
        PatchPoseEstimator.from_pretrained(c4="yes")
    with pytest.raises(ValueError, match="c4_below must be a number"):
        PatchPoseEstimator.from_pretrained(c4_below="0.5")
    with pytest.raises(ValueError, match=r"c4_below must be in \[0, 1\]"):
        PatchPoseEstimator.from_pretrained(c4_below=1.5)


def test_from_pretrained_refuses_a_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        PatchPoseEstimator.from_pretrained(device=torch.device("cuda", 0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_ori_bins": 0}, ValueError, "orientation histogram needs >= 2 bins"),
        ({"n_ori_bins": -3}, ValueError, "orientation histogram needs >= 2 bins"),
        ({"n_ori_bins": 36.0}, TypeError, "n_ori_bins must be an int"),
        ({"n_scale_bins": "13"}, TypeError, "n_scale_bins must be an int"),
        ({"patch_size": 0}, ValueError, "reads 32x32 patches"),
        ({"patch_size": 7}, ValueError, "reads 32x32 patches"),
        ({"backbone": "resnet18", "patch_size": 4}, ValueError, "patch_size must be >= 8"),
        ({"logit_norm": float("nan")}, ValueError, "logit_norm must be a finite"),
        ({"logit_norm": -1.0}, ValueError, "logit_norm must be a finite"),
        ({"c4_below": 2.0}, ValueError, r"c4_below must be a peak probability in \[0, 1\]"),
        ({"c4_below": float("nan")}, ValueError, "c4_below must be a peak probability"),
        ({"n_ori_bins": 30, "c4_symmetric": True}, ValueError, "divisible by 4"),
        ({"c4_symmetric": "no"}, TypeError, "c4_symmetric must be True or False"),
        ({"separate_backbones": 1}, TypeError, "separate_backbones must be True or False"),
        ({"backbone": None}, ValueError, "unknown backbone"),
        ({"scale_range": "2"}, TypeError, "scale_range must be a number"),
        ({"window": float("inf")}, ValueError, "window must be a finite radius"),
    ],
)
def test_bad_configs_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        PatchPoseConfig(**kwargs)


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown PatchPoseConfig field.*bar, foo; expected some of backbone"):
        PatchPoseConfig.from_dict({"foo": 1, "bar": 2, "backbone": "tiny"})
    with pytest.raises(TypeError, match="read from a dict"):
        PatchPoseConfig.from_dict(None)
    with pytest.raises(TypeError, match="config must be a PatchPoseConfig"):
        PatchPoseNet({"backbone": "tiny"})
    assert PatchPoseConfig.from_dict({"backbone": "resnet18", "patch_size": 64}).patch_size == 64


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(2, 1, 64, 64), r"takes \(B, 1, 32, 32\) gray patches, got shape \(2, 1, 64, 64\)"),
        (torch.rand(2, 3, 32, 32), r"got shape \(2, 3, 32, 32\)"),
        (torch.rand(1, 32, 32), r"got shape \(1, 32, 32\)"),
        (np.zeros((2, 1, 32, 32), np.float32), "got ndarray"),
        (torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "takes float patches"),
        (torch.rand(2, 1, 32, 32).index_fill_(2, torch.tensor([5]), float("nan")), "NaN or Inf"),
        (torch.rand(2, 1, 32, 32).index_fill_(0, torch.tensor([1]), float("inf")), "NaN or Inf"),
    ],
)
def test_network_input_shape_is_checked(x, match):
    net = PatchPoseNet(PatchPoseConfig()).eval()
    with pytest.raises(ValueError, match=match):
        net(x)
    with pytest.raises(ValueError, match=match):
        net.scale_logits(x)


def test_half_precision_network_takes_large_batches():
    """A finite float16 batch whose float16 sum overflows is accepted (the finiteness check sums in
    float64)."""
    x = torch.rand(128, 1, 32, 32).half()
    assert x.sum().isinf()
    net = PatchPoseNet(PatchPoseConfig()).eval().half()
    with torch.no_grad():
        ori, sca = net(x)
        assert ori.dtype == torch.float16 and sca.shape == (128, 13)
        assert net.scale_logits(x).shape == (128, 13)
