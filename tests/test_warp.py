"""Homography regression (GeoWarp): WarpNet, losses, training, export."""

import dataclasses
import logging

import numpy as np
import pytest
import torch

from ssfeat.cli import main
from ssfeat.data.images import list_images, read_image
from ssfeat.data.warp_pairs import WarpPairConfig, WarpPairSynthesizer
from ssfeat.evaluation.metrics import corner_metrics
from ssfeat.models.warp import FRAME, WarpConfig, WarpNet, unflip_corners, warp_to_frame
from ssfeat.models.weights import load_warp_model, save_weights
from ssfeat.training import WarpTrainConfig, fit, load_checkpoint
from ssfeat.training.losses import consistency_loss, corner_loss, features_wise_loss
from ssfeat.training.tasks import WarpTask

from .conftest import usage_error


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


def test_warpnet_refuses_bad_inputs_with_clear_errors():
    net = WarpNet(WarpConfig(size=64)).eval()
    ok = torch.rand(2, 1, 64, 64)
    nan = ok.clone()
    nan[1, 0, 5, 7] = float("nan")
    inf = ok.clone()
    inf[0, 0, 0, 0] = float("inf")
    bad = [
        (nan, ok, r"image_a contains NaN or Inf"),
        (ok, inf, r"image_b contains NaN or Inf"),
        (torch.rand(2, 64, 64), ok, r"image_a must have shape \(B, 1, H, W\) \(gray images\), got \(2, 64, 64\)"),
        (ok, torch.rand(2, 3, 64, 64), r"image_b must have shape \(B, 1, H, W\).*got \(2, 3, 64, 64\)"),
        (ok, torch.rand(3, 1, 64, 64), r"as many images, got 2 and 3"),
        (ok, torch.rand(2, 1, 6, 64), r"image_b: the 64x6 images are too small \(< 8 px\)"),
        ((ok * 255).to(torch.uint8), ok, r"image_a must be a float tensor.*torch.uint8"),
        (ok.numpy(), ok, r"image_a must be a torch.Tensor, got ndarray"),
    ]
    with torch.no_grad():
        for a, b, msg in bad:
            for call in (net, net.shared_region):
                with pytest.raises(ValueError, match=msg):
                    call(a, b)
        assert net(ok, torch.rand(2, 1, 80, 70))[0].shape == (2, 4, 2)  # other sizes are resized
    with pytest.raises(ValueError, match=r"quad must have shape \(2, 4, 2\).*got \(1, 4, 2\)"):
        warp_to_frame(ok, FRAME[None], 32)
    with pytest.raises(ValueError, match=r"image must be a \(B, C, H, W\) tensor"):
        warp_to_frame(ok[0], FRAME[None], 32)


def test_warp_reranker_refuses_bad_inputs(tmp_path):
    from ssfeat.inference.retrieval import WarpReranker

    rr = WarpReranker(WarpNet(WarpConfig(size=64)))
    q, c = torch.rand(1, 64, 64), torch.rand(3, 1, 64, 64)
    assert rr.scores(q, c).shape == (3,)
    nan = c.clone()
    nan[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="candidates contains NaN or Inf"):
        rr.scores(q, nan)
    with pytest.raises(ValueError, match="query contains NaN or Inf"):
        rr.scores(torch.full((1, 64, 64), float("nan")), c)
    with pytest.raises(ValueError, match=r"candidates must be 64x64 px \(the regressor's input size\), got 80x64"):
        rr.scores(q, torch.rand(3, 1, 64, 80))
    with pytest.raises(ValueError, match=r"query must be 64x64 px"):
        rr.scores(torch.rand(1, 32, 32), c)
    with pytest.raises(ValueError, match=r"query must be one gray image of shape \(1, 64, 64\), got \(3, 64, 64\)"):
        rr.scores(torch.rand(3, 64, 64), c)
    with pytest.raises(ValueError, match=r"candidates must have shape \(B, 1, H, W\)"):
        rr.scores(q, torch.rand(3, 64, 64))
    paths = [tmp_path / "x.png"]  # never read: the checks come first
    with pytest.raises(ValueError, match=r"predictions must have shape \(1, K\) \(a row per query\), got \(2, 3\)"):
        rr.rerank(paths, paths * 3, np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError, match=r"gallery indices in \[0, 3\)"):
        rr.rerank(paths, paths * 3, np.array([[0, 3, 1]]))
    with pytest.raises(ValueError, match=r"gallery indices"):
        rr.rerank(paths, paths * 3, np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        rr.rerank(paths, paths * 3, np.array([[0, 1, 2]]), n=0)


def test_corner_losses_and_metrics():
    t = torch.rand(3, 4, 2)
    assert corner_loss((t, t + 1), t, t + 1).item() == 0.0
    assert corner_loss((t + 0.1, t), t, t).item() == pytest.approx(0.005, rel=1e-4)
    assert consistency_loss([(t, t + 1)] * 3).item() < 1e-12
    assert consistency_loss([(t, t), (t + 0.2, t + 0.2)]).item() == pytest.approx(2 * 0.1**2, rel=1e-4)
    m = corner_metrics(t + 0.05, t, t, t)
    assert m["within_0.1"] == 100.0 and m["corner_err"] == pytest.approx(0.05 * 2**0.5 / 2, rel=1e-4)
    assert corner_metrics(t + 0.2, t, t, t)["within_0.1"] == 0.0


def test_unflip_corners_maps_flipped_quads_back():
    quad = torch.tensor([[[-0.5, -0.4], [0.7, -0.3], [0.6, 0.8], [-0.6, 0.5]]])
    flipped = torch.tensor([[[-0.7, -0.3], [0.5, -0.4], [0.6, 0.5], [-0.6, 0.8]]])  # x -> -x, TL<->TR
    assert torch.allclose(unflip_corners(flipped), quad)
    assert torch.allclose(unflip_corners(unflip_corners(quad)), quad)
    vflipped = torch.tensor([[[-0.6, -0.5], [0.6, -0.8], [0.7, 0.3], [-0.5, 0.4]]])  # y -> -y, TL<->BL
    assert torch.allclose(unflip_corners(vflipped, horizontal=False, vertical=True), quad)
    both = unflip_corners(unflip_corners(quad, True, False), False, True)
    assert torch.allclose(unflip_corners(both, True, True), quad)


def random_warpnet_and_pair():
    """An untrained WarpNet whose output layer is random (not all frames) and two random views."""
    torch.manual_seed(0)
    net = WarpNet(WarpConfig(size=64)).eval()
    torch.nn.init.normal_(net.out.weight, std=0.05)
    return net, torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)


def test_flip_averaging_is_consistent_with_flipped_inputs():
    """With flips, the prediction for a flipped pair is the flipped prediction (exact symmetry)."""
    net, a, b = random_warpnet_and_pair()
    with torch.no_grad():
        qa, qb = net.shared_region(a, b, flips=True)
        fa, fb = net.shared_region(a.flip(-1), b.flip(-1), flips=True)
        plain = net.shared_region(a, b)[0]
    assert torch.allclose(unflip_corners(fa), qa, atol=1e-5) and torch.allclose(unflip_corners(fb), qb, atol=1e-5)
    assert not torch.allclose(plain, qa, atol=1e-4)


def test_warp_to_frame_identity_and_crop():
    img = torch.rand(2, 1, 32, 32)
    assert torch.allclose(warp_to_frame(img, FRAME.expand(2, 4, 2), 32), img, atol=1e-4)
    left = torch.tensor([[-1.0, -1.0], [0.0, -1.0], [0.0, 1.0], [-1.0, 1.0]]).expand(2, 4, 2)  # left half
    ramp = torch.linspace(0, 1, 33)[:32].expand(2, 1, 32, 32).contiguous()
    out = warp_to_frame(ramp, left, 32)
    assert out.shape == (2, 1, 32, 32) and out.max() < 0.55 and out.min() < 0.01


def test_both_orders_and_shared_region_average_the_two_orders():
    net, a, b = random_warpnet_and_pair()
    with torch.no_grad():
        first, second = net(a, b, both_orders=True)
        ab, ba = net(a, b), net(b, a)
        qa, qb = net.shared_region(a, b)
    assert first.shape == (4, 4, 2)
    assert torch.allclose(first[:2], ab[0], atol=1e-5) and torch.allclose(first[2:], ba[0], atol=1e-5)
    assert torch.allclose(qa, 0.5 * (ab[0] + ba[1]), atol=1e-5) and torch.allclose(qb, 0.5 * (ab[1] + ba[0]), atol=1e-5)
    assert not torch.allclose(ab[0], ba[1])  # the average is not trivial


def test_features_wise_loss_is_zero_for_matching_regions_and_reaches_the_corners():
    net = WarpNet(WarpConfig(size=64)).eval()
    img = torch.rand(1, 1, 64, 64)
    quad = FRAME[None].clone().requires_grad_(True)
    assert features_wise_loss(net.features, img, img, quad, FRAME[None]).item() < 1e-8
    other = quad * 0.5
    loss = features_wise_loss(net.features, img, img, other, FRAME[None])
    loss.backward()
    assert loss.item() > 0 and quad.grad.abs().sum() > 0


def test_small_images_are_skipped_or_upsampled_with_warnings(caplog):
    rng = np.random.default_rng(0)
    imgs = [rng.random((200, 200), dtype=np.float32), rng.random((40, 60), dtype=np.float32)]
    imgs.append(np.zeros((8, 8), np.float32))
    with caplog.at_level(logging.WARNING):
        s = WarpPairSynthesizer(imgs, WarpPairConfig(size=128))
    assert len(s.images) == 2
    assert "1 of 3 images are smaller than 16x16 pixels, skipped" in caplog.text
    assert "1 of 2 images are smaller than the 128 px views" in caplog.text
    with pytest.raises(ValueError, match="16x16"):
        WarpPairSynthesizer([np.zeros((8, 8), np.float32)])


@pytest.mark.slow
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


@pytest.mark.slow
def test_warp_training_export_and_cli(image_dir, tmp_path, capsys):
    cfg = tiny_warp_cfg(image_dir)
    fit(cfg, tmp_path / "full", progress=False)
    assert load_checkpoint(tmp_path / "full" / "last.pt")["task"] == "warp"
    assert "within_0.1" in (tmp_path / "full" / "log.jsonl").read_text()
    net = load_warp_model(tmp_path / "full")
    path = save_weights(net, tmp_path / "w.safetensors")
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(net(x, x), load_warp_model(path)(x, x)))
    run = tmp_path / "cli"
    args = ["train", "warp", "--images", str(image_dir), "--out", str(run), "--steps", "2", "--batch-size", "2"]
    assert main([*args, "--size", "64", "--k", "0.8", "--workers", "0", "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "c.safetensors")]) == 0
    assert load_warp_model(tmp_path / "c.safetensors").config.size == 64
    assert np.isclose(load_checkpoint(run / "last.pt")["config"]["pairs"]["k"], 0.8)
    assert "--k: must lie in [0, 1]" in usage_error(main, [*args, "--k", "1.5"], capsys)


@pytest.mark.slow
def test_weakly_supervised_losses_on_query_positive_pairs(image_dir, geo_dir):
    cfg = tiny_warp_cfg(image_dir, qp_root=str(geo_dir), qp_min_similarity=0.0, qp_batch_size=2, qp_every=2)
    task = WarpTask(cfg)
    (pairs, qp), _ = task.synthesizers()
    assert qp.shape == (6, 2, 1, 64, 64)  # 3 train queries x 2 positives, (query, positive) resized
    net = task.build_model()
    torch.nn.init.normal_(net.out.weight, std=0.01)  # away from the all-frames start
    batch = task.make_batch((pairs, qp), range(4))
    assert batch["qp_q"].shape == (2, 1, 64, 64)
    assert torch.equal(task.make_batch((pairs, qp), range(4))["qp_q"], batch["qp_q"])  # reproducible
    loss, parts = task.loss(net, batch, step=0)
    assert {"loss_consistency", "loss_features"} <= set(parts) and torch.isfinite(loss)
    assert parts["loss_consistency"] > 0 and parts["loss_features"] > 0
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert set(task.loss(net, batch, step=1)[1]) == {"loss_corner"}  # qp losses every qp_every steps
    with pytest.raises(ValueError, match="no \\(query, positive\\) pair"):
        WarpTask(dataclasses.replace(cfg, qp_min_similarity=1.01)).synthesizers()


def test_half_precision_export(warp_run, tmp_path):
    full = save_weights(load_warp_model(warp_run), tmp_path / "f.safetensors")
    half = save_weights(load_warp_model(warp_run), tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        a, b = load_warp_model(full)(x, x.flip(-1))[0], load_warp_model(half)(x, x.flip(-1))[0]
    assert next(load_warp_model(half).parameters()).dtype == torch.float32
    # after 4 steps the corners sit within ~0.016 of the frames: compare what was learned (the offsets
    # from the frames), relatively, so that an export that lost the output layer (offsets 0) fails
    da, db = a - FRAME, b - FRAME
    assert da.abs().max() > 1e-3  # the offsets are not trivially zero
    assert (db - da).norm() < 1e-2 * da.norm(), ((db - da).norm(), da.norm())  # measured: ~2e-4 relative


def test_bundled_warp_model_regresses_held_out_pairs(image_dir):
    net = load_warp_model()  # bundled, float16 on disk, float32 in memory
    assert net.config.size == 128 and next(net.parameters()).dtype == torch.float32
    imgs = [read_image(p) for p in list_images(image_dir)]  # synthetic photos it never saw
    batch = WarpPairSynthesizer(imgs, WarpPairConfig(size=128, seed=5)).batch(range(32))
    with torch.no_grad():
        pa, pb = net.shared_region(batch["image_a"], batch["image_b"])
    learned = corner_metrics(pa, pb, batch["t_a"], batch["t_b"])
    frame = FRAME.expand_as(pa)
    baseline = corner_metrics(frame, frame, batch["t_a"], batch["t_b"])
    assert learned["corner_err"] < 0.5 * baseline["corner_err"], (learned, baseline)
