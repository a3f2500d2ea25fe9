"""Homography regression (GeoWarp): WarpNet, losses, training, export."""

import numpy as np
import pytest
import torch

from ssfeat.cli import main
from ssfeat.data.images import list_images, read_image
from ssfeat.data.warp_pairs import WarpPairConfig, WarpPairSynthesizer
from ssfeat.hub import load_warp, save_weights
from ssfeat.losses import corner_loss, flip_consistency_loss
from ssfeat.models.warp import FRAME, WarpConfig, WarpNet
from ssfeat.training import WarpTask, WarpTrainConfig, corner_metrics, fit, load_checkpoint


def tiny_warp_cfg(images, steps=4, **kw) -> WarpTrainConfig:
    base = dict(batch_size=4, val_pairs=8, val_every=2, ckpt_every=2, warmup_steps=2, workers=0)
    base.update(model=WarpConfig(size=64), pairs=WarpPairConfig(size=64))
    return WarpTrainConfig(images=str(images), steps=steps, **{**base, **kw})


def test_untrained_warpnet_predicts_the_frames_and_resizes_inputs():
    net = WarpNet(WarpConfig(size=64)).eval()
    a, b = net(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 80, 70))
    assert a.shape == b.shape == (2, 4, 2)
    assert torch.allclose(a, FRAME.expand(2, 4, 2)) and torch.allclose(b, FRAME.expand(2, 4, 2))
    with pytest.raises(ValueError, match="multiple of 8"):
        WarpNet(WarpConfig(size=60))
    assert not any(p.requires_grad for p in net.backbone.parameters())


def test_corner_losses_and_metrics():
    t = torch.rand(3, 4, 2)
    assert corner_loss((t, t + 1), t, t + 1).item() == 0.0
    assert corner_loss((t + 0.1, t), t, t).item() == pytest.approx(0.005, rel=1e-4)
    assert flip_consistency_loss((t, t + 1), (t + 1, t)).item() == 0.0
    m = corner_metrics(t + 0.05, t, t, t)
    assert m["within_0.1"] == 100.0 and m["corner_err"] == pytest.approx(0.05 * 2**0.5 / 2, rel=1e-4)
    assert corner_metrics(t + 0.2, t, t, t)["within_0.1"] == 0.0


def test_warp_overfits_one_batch(image_dir):
    cfg = tiny_warp_cfg(image_dir, lr=3e-3)
    imgs = [read_image(p) for p in list_images(image_dir)]
    batch = WarpPairSynthesizer(imgs, cfg.pairs).batch(range(8))
    task = WarpTask(cfg)
    net = task.build_model()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    before = task.evaluate(net, batch)["corner_err"]
    backbone = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    for step in range(60):
        loss, _ = task.loss(net, batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.evaluate(net, batch)["corner_err"] < 0.5 * before
    for k, v in net.backbone.state_dict().items():  # frozen, batch-norm statistics included
        assert torch.equal(v, backbone[k]), k


def test_warp_training_resume_export_and_cli(image_dir, tmp_path, capsys):
    cfg = tiny_warp_cfg(image_dir)
    fit(cfg, tmp_path / "full", progress=False)
    fit(tiny_warp_cfg(image_dir, steps=2), tmp_path / "part", progress=False)
    fit(cfg, tmp_path / "part", resume=True, total_steps=4, progress=False)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "part" / "last.pt")
    assert a["task"] == "warp" and b["step"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-6), k
    assert "within_0.1" in (tmp_path / "full" / "log.jsonl").read_text()
    net = load_warp(tmp_path / "full")
    path = save_weights(net, tmp_path / "w.safetensors")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(net(x, x), load_warp(path)(x, x)))
    run = tmp_path / "cli"
    args = ["train", "warp", "--images", str(image_dir), "--out", str(run), "--steps", "2", "--batch-size", "2"]
    assert main([*args, "--size", "64", "--k", "0.8", "--workers", "0", "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "c.safetensors")]) == 0
    assert load_warp(tmp_path / "c.safetensors").config.size == 64
    assert np.isclose(load_checkpoint(run / "last.pt")["config"]["pairs"]["k"], 0.8)
    assert main([*args, "--k", "1.5"]) == 2
    assert "k must lie" in capsys.readouterr().err
