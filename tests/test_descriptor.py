"""Descriptor learning (HNDesc): pair synthesis, network conventions, losses, training, inference."""

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssfeat.cli import main
from ssfeat.data.descriptor_pairs import DescriptorPairConfig, DescriptorPairSynthesizer
from ssfeat.features import Features
from ssfeat.models.descriptor import DescriptorConfig, DescriptorNet, sample_descriptors
from ssfeat.models.weights import load_descriptor_model, load_detector_model, save_weights
from ssfeat.pipeline import LearnedDescriptor, build_pipeline
from ssfeat.training import DescriptorTrainConfig, fit, load_checkpoint
from ssfeat.training.losses import ap_loss, hard_negatives, quantized_ap, triplet_loss
from ssfeat.training.tasks import DescriptorTask
from ssfeat.training.tasks.descriptor import DetectorKeypoints

from .conftest import textured_image

TINY_NET = DescriptorConfig(channels=(4, 8, 8, 16), decoder_channels=8, dim=16)


def tiny_pairs(**kw) -> DescriptorPairConfig:
    return DescriptorPairConfig(**{"size": 64, "max_keypoints": 16, "random_fill": 16, **kw})


def tiny_desc_cfg(images, steps=4, **kw) -> DescriptorTrainConfig:
    base = dict(batch_size=2, val_pairs=4, val_every=2, ckpt_every=2, warmup_steps=2, workers=0)
    base.update(model=TINY_NET, pairs=tiny_pairs())
    return DescriptorTrainConfig(images=str(images), steps=steps, **{**base, **kw})


def _images(n=4):
    return [textured_image(200, 240, seed=s) for s in range(n)]


def _bilinear(im: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """``(B, 1, P, P)`` images at ``(B, K, 2)`` pixels -> ``(B, K)``."""
    P = im.shape[-1]
    return F.grid_sample(im, (xy / (P - 1) * 2 - 1)[:, None], align_corners=True)[:, 0, 0]


def test_pair_synthesis_correspondences_are_exact_and_reproducible():
    cfg = DescriptorPairConfig(size=96, max_keypoints=40, photometric=False)
    synth = DescriptorPairSynthesizer(_images(), cfg)
    b = synth.batch(range(6))
    assert b["image0"].shape == (6, 1, 96, 96) and b["kp0"].shape == (6, 40, 2)
    m = b["kp_valid"]
    assert m.sum() > 60
    # view 1 at kp1 shows what view 0 shows at kp0; shuffled pairs do not
    a, c = _bilinear(b["image0"], b["kp0"]), _bilinear(b["image1"], b["kp1"])
    assert (a - c).abs()[m].mean() < 0.03
    assert (a - c.roll(1, 1)).abs()[m].mean() > 3 * (a - c).abs()[m].mean()
    # kp1 is H_0to1 kp0, inside both views
    p = torch.cat([b["kp0"], torch.ones_like(b["kp0"][..., :1])], -1) @ b["H_0to1"].transpose(1, 2)
    assert torch.allclose((p[..., :2] / p[..., 2:])[m], b["kp1"][m], atol=1e-3)
    assert (b["kp1"][m] >= 0).all() and (b["kp1"][m] <= 95).all()
    # a pure function of the index, photometric jitter included
    s2 = DescriptorPairSynthesizer(_images(), replace(cfg, photometric=True))
    x, y = s2.sample(3), s2.sample(3)
    assert all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(s2.sample(4)["image0"], x["image0"])


def test_pair_synthesis_modes_and_bad_settings():
    rnd = DescriptorPairSynthesizer(_images(2), tiny_pairs(keypoints="random")).sample(0)
    assert rnd["kp_valid"].sum() == 16
    det = DescriptorPairSynthesizer(_images(2), tiny_pairs(keypoints="detector", size=96), DetectorKeypoints())
    assert det.sample(0)["kp_valid"].any()
    with pytest.raises(ValueError, match="needs a keypoint_source"):
        DescriptorPairSynthesizer(_images(2), tiny_pairs(keypoints="detector", size=96))
    with pytest.raises(ValueError, match="keypoints must be"):
        DescriptorPairSynthesizer(_images(2), tiny_pairs(keypoints="orb"))
    with pytest.raises(ValueError, match="no image is at least"):
        DescriptorPairSynthesizer([np.zeros((20, 20), np.uint8)], tiny_pairs())


def test_descriptor_map_stride_and_sampling_convention():
    net = DescriptorNet(TINY_NET).eval()
    for H, W in ((64, 96), (61, 70)):  # sizes that are not multiples of 8 are padded and cropped
        with torch.no_grad():
            dense = net(torch.rand(2, 1, H, W))
        assert dense.shape == (2, 16, -(-H // 4), -(-W // 4))
    # output cell (i, j) sits at input pixel (4j + 1.5, 4i + 1.5)
    dense = torch.randn(1, 16, 8, 10)
    kp = torch.tensor([[[4 * 3 + 1.5, 4 * 5 + 1.5], [1.5, 1.5]]])
    d = sample_descriptors(dense, kp, (32, 40))
    assert torch.allclose(d[0, 0], F.normalize(dense[0, :, 5, 3], dim=0), atol=1e-6)
    assert torch.allclose(d[0, 1], F.normalize(dense[0, :, 0, 0], dim=0), atol=1e-6)
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, 2))


def test_descriptors_are_translation_equivariant_by_the_stride():
    """Shifting the image by 8 px shifts the descriptors with it (away from the borders)."""
    net = DescriptorNet(TINY_NET).eval()
    img = torch.from_numpy(textured_image(96, 128, seed=2)).float()[None, None] / 255
    a, b = img[..., :, 8:120], img[..., :, :112]  # b's pixel x + 8 shows a's pixel x
    kp = torch.tensor([[[40.0, 40.0], [56.5, 50.0], [70.0, 60.0]]])
    with torch.no_grad():
        da = sample_descriptors(net(a), kp, a.shape[-2:])
        db = sample_descriptors(net(b), kp + torch.tensor([8.0, 0.0]), b.shape[-2:])
    assert (da * db).sum(-1).min() > 0.999


def test_patch_descriptors_follow_a_90_degree_rotation():
    """``mode="patch"`` turns each patch by its feature's orientation: describing the image rotated
    by 90 degrees counter-clockwise as displayed (``np.rot90``) at the mapped keypoints, with the
    orientations + pi/2 (angles are CCW as displayed, ssfeat.geometry), gives the same descriptors.
    Measured with the bundled weights: cosine >= 0.9997 (the rotation is exact up to the pyramid's
    blur); with - pi/2 (the wrong sign) or unchanged orientations the median is below 0.35."""
    img = textured_image(200, 240, seed=3)
    H, W = img.shape
    rng = np.random.default_rng(0)
    n = 60
    kp = rng.uniform([60, 60], [W - 61, H - 61], (n, 2)).astype(np.float32)  # patches (<= 80 px) inside
    sizes = rng.uniform(2.0, 8.0, n).astype(np.float32)  # patch sides 20-80 px: 32 px patches, pyramid levels
    theta = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    desc = LearnedDescriptor(mode="patch")  # bundled weights

    def describe(image, keypoints, orientations):
        feats = Features(keypoints, sizes, np.mod(orientations, 2 * np.pi), np.ones(n, np.float32), image.shape)
        return desc(image, feats).descriptors

    d0 = describe(img, kp, theta)
    rot = np.ascontiguousarray(np.rot90(img))  # pixel (x, y) moves to (y, W - 1 - x)
    assert rot[0, 0] == img[0, W - 1] and rot.shape == (W, H)
    kp_rot = np.stack([kp[:, 1], W - 1 - kp[:, 0]], 1)
    cos = (d0 * describe(rot, kp_rot, theta + np.pi / 2)).sum(1)
    assert cos.min() > 0.995 and np.median(cos) > 0.999, np.sort(cos)[:5]
    for wrong in (theta - np.pi / 2, theta):  # the other sign, or no turn: other patches, other descriptors
        assert np.median((d0 * describe(rot, kp_rot, wrong)).sum(1)) < 0.6


def test_ap_and_hard_negatives():
    labels = torch.tensor([[1.0, 0, 0, 0]])
    assert quantized_ap(torch.tensor([[0.9, 0.1, 0.2, 0.0]]), labels).item() == pytest.approx(1.0, abs=1e-5)
    assert quantized_ap(torch.tensor([[0.1, 0.9, 0.8, 0.7]]), labels).item() < 0.3
    g = torch.tensor([0, 0, 1, 1])
    a = F.normalize(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 1]]), dim=1)
    p = a.clone()
    s_pos, s_neg = hard_negatives(a, p, g, k=3)
    assert torch.allclose(s_pos, torch.ones(4))
    # anchor 0's hardest candidate is row 1 (same image): excluded; only rows 2, 3 remain, padded
    assert torch.allclose(s_neg[0], torch.stack([a[0] @ a[3], a[0] @ a[2], a[0] @ a[2]]))
    s_pos2, s_neg2 = hard_negatives(a, p, g, k=1, same_group_far=torch.ones(4, 4, dtype=torch.bool))
    assert s_neg2[0, 0] == pytest.approx((a[0] @ a[1]).item())
    assert ap_loss(s_pos, s_neg).item() < 0.05
    assert triplet_loss(torch.ones(3), -torch.ones(3, 2)).item() == 0.0
    assert triplet_loss(torch.zeros(3), torch.ones(3, 2)).item() == pytest.approx(1.0 + 2**0.5, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ap", "triplet"])
def test_descriptor_overfits_one_batch(image_dir, loss):
    cfg = tiny_desc_cfg(image_dir, loss=loss, model=DescriptorConfig(channels=(8, 16, 16, 32), dim=32))
    synth = DescriptorPairSynthesizer(_images(), replace(cfg.pairs, size=96, max_keypoints=32))
    batch = synth.batch(range(4))
    task = DescriptorTask(cfg)
    net = task.build_model()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    before = task.evaluate(net, batch)["match_acc"]
    losses = []
    for step in range(40):
        val, _ = task.loss(net, batch, step)
        opt.zero_grad()
        val.backward()
        opt.step()
        losses.append(val.item())
    assert np.mean(losses[-3:]) < 0.6 * losses[0]
    assert task.evaluate(net, batch)["match_acc"] > before + 20


def test_descriptor_training_export_and_pipeline(image_dir, tmp_path):
    cfg = tiny_desc_cfg(image_dir)
    fit(cfg, tmp_path / "full", progress=False)
    assert load_checkpoint(tmp_path / "full" / "last.pt")["task"] == "descriptor"
    assert "match_acc" in (tmp_path / "full" / "log.jsonl").read_text()
    net = load_descriptor_model(tmp_path / "full")
    path = save_weights(net, tmp_path / "d.safetensors")
    again = load_descriptor_model(path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    with pytest.raises(ValueError, match="not an ssfeat descriptor"):
        load_descriptor_model(Path(__file__).parents[1] / "ssfeat" / "weights" / "detector.safetensors")
    with pytest.raises(ValueError, match="not a detector training run"):
        load_detector_model(tmp_path / "full")
    img = textured_image(100, 120, seed=1).astype(np.float32) / 255
    feats = Features(
        np.array([[30.0, 40.0], [60.0, 50.0]], np.float32),
        np.array([4.0, 8.0], np.float32),
        np.array([0.0, 1.0], np.float32),
        np.ones(2, np.float32),
        img.shape,
    )
    for mode in ("dense", "patch"):
        d = LearnedDescriptor(str(path), mode=mode)(img, feats).descriptors
        assert d.shape == (2, 16) and d.dtype == np.float32
        assert np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
        assert LearnedDescriptor(str(path), mode=mode)(img, feats.subset(np.zeros(0, int))).descriptors.shape == (0, 16)
    with pytest.raises(ValueError, match="too small"):
        LearnedDescriptor(str(path))(
            np.zeros((6, 6), np.float32),
            Features(
                np.zeros((1, 2), np.float32),
                np.ones(1, np.float32),
                np.zeros(1, np.float32),
                np.ones(1, np.float32),
                (6, 6),
            ),
        )
    with pytest.raises(ValueError, match="NaN"):
        LearnedDescriptor(str(path))(np.full((32, 32), np.nan, np.float32), feats)
    with pytest.raises(ValueError, match="mode must be"):
        LearnedDescriptor(str(path), mode="sparse")


def test_bundled_descriptor_matches_a_warped_image():
    """The shipped weights match an image to a rotated (15 deg), zoomed and re-lit copy of itself."""
    img = textured_image(240, 320, seed=11)
    M = cv2.getRotationMatrix2D((160, 120), 15, 1.15)
    H = np.vstack([M, [0, 0, 1]])
    warped = cv2.warpPerspective(img, H, (320, 240), borderMode=cv2.BORDER_REFLECT)
    warped = np.clip(warped.astype(np.float32) * 0.7 + 30, 0, 255).astype(np.uint8)
    for name in ("hndesc", "hndesc_patch"):
        res = build_pipeline(name, 300)(img, warped)
        x0 = res.features0.keypoints[res.matches.idx[:, 0]].astype(np.float64)
        x1 = res.features1.keypoints[res.matches.idx[:, 1]].astype(np.float64)
        proj = np.concatenate([x0, np.ones((len(x0), 1))], 1) @ H.T
        err = np.linalg.norm(proj[:, :2] / proj[:, 2:] - x1, axis=1)
        assert len(err) > 50 and (err <= 3).mean() > 0.7, name


@pytest.mark.slow
def test_descriptor_cli_train_export_benchmark(image_dir, oxford_dir, tmp_path, capsys):
    run, w = tmp_path / "desc", tmp_path / "desc.safetensors"
    args = ["train", "descriptor", "--images", str(image_dir), "--out", str(run), "--steps", "2"]
    args += ["--batch-size", "2", "--size", "64", "--dim", "16", "--workers", "0", "--no-progress"]
    assert main(args) == 0
    assert main(["export", str(run), "--out", str(w)]) == 0
    js = tmp_path / "desc.json"
    names = "sift,sift_rootsift,hndesc,hndesc_patch"
    bench = ["benchmark", "descriptor", "--root", str(oxford_dir), "--pipelines", names, "--weights", str(w)]
    assert main([*bench, "--max-keypoints", "100", "--json", str(js), "--no-progress"]) == 0
    res = json.loads(js.read_text())
    assert set(res["pipelines"]) == set(names.split(",")) and res["n_pairs"] == 2
    t = res["describe_2000_640x480_s"]
    assert t["n_keypoints"] > 100 and all(t[n] > 0 for n in names.split(","))
    out = capsys.readouterr().out
    assert "describing" in out and "MMA@3" in out
    assert main([*bench[:-2], "--weights", str(tmp_path / "nope.safetensors"), "--json", str(js)]) == 2
    assert "no such weights file" in capsys.readouterr().err


def test_hard_negatives_over_gathered_positives_equal_the_single_batch():
    """Anchors of one process against the positives of all processes (``offset``) give the same
    lists as the whole batch in one process."""
    d = F.normalize(torch.randn(10, 8), dim=1)
    p = F.normalize(d + 0.3 * torch.randn(10, 8), dim=1)
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    s_pos, s_neg = hard_negatives(d, p, g, 4)
    s_pos2, s_neg2 = hard_negatives(d[5:], p, g, 4, offset=5)
    assert torch.allclose(s_pos[5:], s_pos2) and torch.allclose(s_neg[5:], s_neg2)


def _ddp_grad_worker(rank: int, init: str, batch: dict, out: str) -> None:
    """One of 2 gloo processes: the descriptor loss on this process's half of ``batch``."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    task = DescriptorTask(DescriptorTrainConfig(model=TINY_NET, negatives=5))
    net = task.build_model().eval()  # frozen batch norm: per-process statistics would differ
    half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}
    loss, _ = task.loss(net, half, 0)
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    for g in grads:  # what DDP does: average the gradients
        dist.all_reduce(g)
        g /= 2
    if rank == 0:
        torch.save(grads, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradient_equals_the_single_process_gradient(tmp_path):
    """Negatives gathered across processes (with gradients routed back) make the averaged 2-process
    gradient equal to the 1-process gradient of the whole batch."""
    import torch.multiprocessing as mp

    batch = DescriptorPairSynthesizer(_images(), tiny_pairs()).batch(range(4))
    torch.manual_seed(0)
    task = DescriptorTask(DescriptorTrainConfig(model=TINY_NET, negatives=5))
    net = task.build_model().eval()
    loss, _ = task.loss(net, batch, 0)
    loss.backward()
    n = batch["kp_valid"].sum(1)
    # DDP averages per-process means: the gradients are equal only for halves with equal keypoint counts
    assert n[:2].sum() == n[2:].sum(), f"the synthesizer gave unequal halves ({n.tolist()}): pick other pairs"
    out = tmp_path / "g.pt"
    mp.spawn(_ddp_grad_worker, args=(f"file://{tmp_path / 'init'}", batch, str(out)), nprocs=2)
    for p, g in zip(net.parameters(), torch.load(out)):
        assert torch.allclose(p.grad, g, atol=1e-6, rtol=1e-4)


def test_bad_descriptor_pair_configs_are_refused():
    with pytest.raises(ValueError, match="size must be between"):
        DescriptorPairConfig(size=8)
    with pytest.raises(ValueError, match="shift must be a finite non-negative"):
        DescriptorPairConfig(shift=float("nan"))
    with pytest.raises(ValueError, match="max_log2_zoom must be at most 2"):
        DescriptorPairConfig(max_log2_zoom=5.0)
    with pytest.raises(ValueError, match="negatives must be at most 1024"):
        DescriptorTrainConfig(negatives=100000)
    with pytest.raises(ValueError, match="negatives must be a finite positive number"):
        DescriptorTrainConfig(negatives=0)


@pytest.mark.slow
def test_descriptor_benchmark_skips_a_tiny_pair_and_times_on_a_scored_one(tmp_path, caplog, monkeypatch):
    import logging

    import ssfeat.evaluation.descriptor as descriptor
    from ssfeat.evaluation.matching import MatchingConfig, run_matching

    from .test_pipeline import BAD_IMAGES, same_averages, write_pair_sequences

    cfg = MatchingConfig(max_keypoints=100, timing_repeats=1, ransac_repeats=3)
    root = write_pair_sequences(tmp_path / "bad", BAD_IMAGES["20x20"])
    with caplog.at_level(logging.WARNING):
        res = descriptor.run_descriptor_benchmark([root], ["sift"], progress=False, cfg=cfg)
    tiny = str(root / "v_b" / "4.png")
    assert tiny in caplog.text and "too small" in caplog.text
    assert len(res["skipped"]) == 1 and tiny in res["skipped"][0] and "20x20" in res["skipped"][0]
    assert res["n_pairs"] == 4
    same_averages(res, run_matching([write_pair_sequences(tmp_path / "good")], ["sift"], cfg, progress=False))
    t = res["describe_2000_640x480_s"]
    assert t["n_keypoints"] > 100 and t["sift"] > 0 and "describe_2000_640x480_unavailable" not in res
    # no keypoint to describe (here: the scored images read back blank): no "0 keypoints in 0.000 s"
    # but the timing reported unavailable, with the reason
    with pytest.raises(ValueError, match="no SIFT keypoint"):
        descriptor.time_descriptors({"sift": build_pipeline("sift", 50)}, np.full((100, 120), 0.5, np.float32))
    monkeypatch.setattr(descriptor, "read_benchmark_image", lambda path: np.full((160, 200), 0.5, np.float32))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        res = descriptor.run_descriptor_benchmark([root], ["sift"], progress=False, cfg=cfg)
    assert res["describe_2000_640x480_s"] is None and "timing unavailable" in caplog.text
    why = res["describe_2000_640x480_unavailable"]
    assert str(root / "v_a" / "1.png") in why and "no SIFT keypoint" in why


def test_descriptor_inputs_are_converted_or_refused_in_one_line():
    net = load_descriptor_model().eval()
    img = torch.from_numpy(textured_image(64, 80, seed=3)).float()[None, None] / 255
    with torch.no_grad():
        ref = net(img)
        assert torch.allclose(net(img.double()), ref, atol=1e-5)  # float64 is cast
        assert torch.allclose(net(img.expand(1, 3, 64, 80)), ref, atol=1e-5)  # RGB of a gray image
        bad = {
            "images must be a floating-point tensor": (img * 255).to(torch.uint8),
            "images contain NaN or Inf": img.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan"))),
            r"image values must be in \[0, 1\], found": img * 2 + 0.1,
            r"images must be a \(B, 1 or 3, H, W\) tensor, got \(1, 2, 64, 80\)": img.expand(1, 2, 64, 80),
            r"images must be a \(B, 1 or 3, H, W\) tensor, got \(64, 80\)": img[0, 0],
        }
        for msg, x in bad.items():
            with pytest.raises(ValueError, match=msg):
                net(x)
        inside = torch.tensor([[[0.0, 0.0], [79.4, 63.4], [-0.5, 30.0]]])
        assert sample_descriptors(ref, inside, (64, 80)).shape == (1, 3, net.config.dim)
        for kp, msg in (([[500.0, 10.0]], "1 keypoints lie outside the 80x64 image"), ([[float("nan"), 1]], "NaN")):
            with pytest.raises(ValueError, match=msg):
                sample_descriptors(ref, torch.tensor([kp]), (64, 80))
    u8 = textured_image(64, 80, seed=3)
    for mode in ("dense", "patch"):
        desc = LearnedDescriptor(mode=mode, net=net)
        kp = np.array([[10.0, 10.0], [1000.0, 10.0]], np.float32)
        far = Features(kp, np.full(2, 8.0, np.float32), np.zeros(2, np.float32), np.ones(2, np.float32), (64, 80))
        with pytest.raises(ValueError, match="1 keypoints lie outside the 80x64 image"):
            desc(u8, far)
        with pytest.raises(ValueError, match="NaN"):
            desc(np.full((64, 80), np.nan, np.float32), far)
