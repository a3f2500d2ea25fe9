"""Devices and dtypes: ``--device`` on the commands, ``device=`` on ``build_pipeline``, estimators that
follow ``.half()`` / ``.double()``, differentiable ``forward`` and inference mode in the image-level
methods."""

import copy

import cv2
import numpy as np
import pytest
import torch

from ssfeat import PatchPoseEstimator, build_pipeline, sample_images
from ssfeat.cli import build_parser, main
from ssfeat.cli.args import device_name
from ssfeat.cli.benchmark import BENCHMARKS
from ssfeat.data.images import read_image
from ssfeat.distributed import init_from_env
from ssfeat.inference.pose import check_device

from .conftest import usage_error


@pytest.fixture(scope="module")
def est():
    return PatchPoseEstimator.from_pretrained("patchpose_tiny", c4=False)


def test_auto_device_is_one_this_machine_has():
    dev = check_device("auto")
    want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert dev.type == want
    assert device_name("auto") == "auto" and device_name("cpu") == "cpu"


@pytest.mark.parametrize("cmd", [["match", "a.png", "b.png"], ["show", "a.png"], ["detect", "a.png"]])
def test_bad_device_is_a_usage_error(cmd, capsys, tmp_path):
    err = usage_error(main, [*cmd, "--out", str(tmp_path / "f.png"), "--device", "gpu0"], capsys)
    assert "unknown device 'gpu0'" in err and "Traceback" not in err
    if not torch.cuda.is_available():
        err = usage_error(main, [*cmd, "--out", str(tmp_path / "f.png"), "--device", "cuda"], capsys)
        assert "CUDA is not available" in err


# every command that runs a network, with its required arguments (the figure commands above)
TASKS = ("pose", "scalepose", "detector", "descriptor", "warp")
NETWORK_COMMANDS = [
    *(["train", task, "--images", "x", "--out", "r"] for task in TASKS),
    ["demo"],
    ["export", "run", "--out", "w.safetensors"],
    ["extract", "--images", "x", "--out", "f.h5"],
    ["pairs", "--features", "f.h5", "--out", "p.txt"],
    ["data", "warp-pair", "a.png", "--out", "f.png"],
    *(["benchmark", b, "--root", "x", "--json", "r.json"] for b in ("matching", "keypoints", "sequences")),
    *(["benchmark", b, "--root", "x", "--json", "r.json"] for b in ("detector", "descriptor", "geoloc")),
    *(["benchmark", b, "--images", "x", "--json", "r.json"] for b in ("patchpose", "warp")),
]


@pytest.mark.parametrize("cmd", NETWORK_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_network_commands_take_a_device(cmd, capsys):
    assert build_parser().parse_args([*cmd, "--device", "cpu"]).device == "cpu"
    err = usage_error(main, [*cmd, "--device", "nonsense"], capsys)
    assert "--device" in err and "unknown device 'nonsense'" in err
    assert len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err


def test_every_benchmark_takes_a_device():
    """A new benchmark gets ``--device`` (and a row in the list above) or is no network's."""
    listed = {c[1] for c in NETWORK_COMMANDS if c[0] == "benchmark"}
    assert listed == {b.name for b in BENCHMARKS}


def test_init_from_env_takes_an_explicit_device():
    assert init_from_env("cpu") == torch.device("cpu")
    want = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert init_from_env() == want  # the default: the local GPU, else the CPU


def test_build_pipeline_device_and_match_with_auto(tmp_path):
    photos = sample_images()
    fig = tmp_path / "m.png"
    argv = ["match", str(photos[0]), str(photos[0]), "--pipeline", "hndesc", "--max-keypoints", "200"]
    assert main([*argv, "--device", "auto", "--out", str(fig)]) == 0 and fig.stat().st_size > 1000
    pipe = build_pipeline("ssfeat", 100, device="cpu")
    assert pipe.orienter.estimator.device.type == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        build_pipeline("ssfeat", 100, device="nope")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_estimator_follows_half_and_double(est, dtype):
    x = torch.rand(6, 1, 32, 32)
    ref = est(x).orientation
    m = copy.deepcopy(est).to(dtype)
    assert m.dtype == dtype
    out = m(x.to(dtype))
    # float16 networks give their histograms and poses in float32, float64 ones in float64
    assert out.orientation.dtype == torch.promote_types(dtype, torch.float32)
    err = torch.remainder(out.orientation.float() - ref + torch.pi, 2 * torch.pi) - torch.pi
    assert err.abs().max() < (0.2 if dtype == torch.float16 else 1e-4)
    img = read_image(sample_images()[0])
    kps = m.estimate(img, [cv2.KeyPoint(120.0, 90.0, 8.0)], support=32.0)
    assert np.isfinite(kps[0].angle)


def test_forward_is_differentiable_and_image_methods_are_not(est):
    x = torch.rand(3, 1, 32, 32, requires_grad=True)
    out = est(x)
    assert out.orientation.requires_grad and out.ori_hist.requires_grad
    out.ori_hist[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0
    with torch.no_grad():
        assert not est(x).ori_hist.requires_grad
    # frozen weights: a plain call builds no graph; requires_grad_() makes them trainable
    assert not est(x.detach()).orientation.requires_grad
    trainable = copy.deepcopy(est).requires_grad_()
    trainable(x.detach()).ori_hist[:, 0].sum().backward()
    assert any(p.grad is not None for p in trainable.parameters())
    img = read_image(sample_images()[0])
    laf = est.estimate_laf(img, np.array([[100.0, 100.0]]), support=32.0)
    assert not laf.requires_grad


@pytest.mark.parametrize("name", ["hndesc", "hndesc_patch", "sift"])
def test_extract_batch_equals_one_image_at_a_time(name):
    photos = [read_image(p) for p in sample_images()[:3]]
    photos.append(np.ascontiguousarray(photos[0][:200, :260]))  # a second image size
    pipe = build_pipeline(name, 200)
    batch = pipe.extract_batch(photos, image_batch=2)
    assert len(batch) == len(photos)
    for im, f in zip(photos, batch):
        one = pipe.extract(im)
        assert f.image_size == im.shape and np.array_equal(f.keypoints, one.keypoints)
        np.testing.assert_allclose(f.descriptors, one.descriptors, atol=1e-4)
