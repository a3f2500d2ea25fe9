import logging
import math

import cv2
import numpy as np
import pytest
import torch

from ssfeat.data.images import ImageReadError, list_images, load_folder, read_image, to_gray_float
from ssfeat.data.synthesis import (
    PairConfig,
    PairSynthesizer,
    _paper_log2_scale,
    _tilt_views,
    _zoomed_out_reference,
    split_by_image,
)
from ssfeat.evaluation.patchpose import paper_protocol
from ssfeat.geometry import angle_diff, linear_rotation_scale, rotation_matrix

from .conftest import textured_image


def test_read_all_image_kinds(tmp_path):
    g = textured_image(64, 80)
    cv2.imwrite(str(tmp_path / "gray.png"), g)
    cv2.imwrite(str(tmp_path / "rgb.jpg"), np.dstack([g, g, g]))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([g, g, g, np.full_like(g, 128)]))
    cv2.imwrite(str(tmp_path / "deep.png"), g.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "deep.tif"), g.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "img.ppm"), np.dstack([g, g, g]))
    cv2.imwrite(str(tmp_path / "img.pgm"), g)
    cv2.imwrite(str(tmp_path / "img.bmp"), g)
    ref = g.astype(np.float32) / 255
    for p in list_images(tmp_path):
        img = read_image(p)
        assert img.shape == (64, 80) and img.dtype == np.float32, p
        tol = 0.05 if p.suffix == ".jpg" else 2e-3
        assert np.abs(img - ref).mean() < tol, p


def test_shallow_16_bit_images_warn(tmp_path, caplog):
    g = textured_image(64, 80).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "twelve.png"), g * 16)  # 12-bit data in a 16-bit file
    cv2.imwrite(str(tmp_path / "full.png"), g * 257)
    with caplog.at_level(logging.WARNING):
        dark = read_image(tmp_path / "twelve.png")
    assert "below 4096" in caplog.text and "twelve.png" in caplog.text
    assert np.allclose(dark, g * 16 / 65535.0, atol=1e-6)  # read as stored: a warning, no guess
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read_image(tmp_path / "full.png")
    assert caplog.text == ""


def test_unreadable_files_are_reported_and_skipped(tmp_path):
    cv2.imwrite(str(tmp_path / "ok.png"), textured_image(40, 40))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    good = cv2.imencode(".jpg", textured_image(40, 40))[1].tobytes()
    (tmp_path / "truncated.jpg").write_bytes(good[:20])
    (tmp_path / "readme.txt").write_text("ignored: not an image extension")
    paths, images, skipped = load_folder(tmp_path)
    assert [p.name for p in paths] == ["ok.png"]
    assert len(skipped) == 3 and any("empty.png" in s for s in skipped)
    with pytest.raises(ImageReadError, match="notes.jpg"):
        read_image(tmp_path / "notes.jpg")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="a folder, not an image"):
        read_image(tmp_path)


def _png_header_only(path, w: int, h: int) -> None:
    """A PNG whose header says ``w x h`` followed by a few rows of data (kilobytes on disk)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = zlib.compress(b"".join(b"\0" + bytes(w) for _ in range(4)))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def test_images_over_the_pixel_budget_are_refused_from_their_header(tmp_path, monkeypatch, capsys):
    from ssfeat.cli import main

    big, huge = tmp_path / "big.png", tmp_path / "huge.png"
    _png_header_only(big, 12000, 9000)  # 108 MP, over the default budget of 100 MP
    _png_header_only(huge, 20000, 20000)  # also over Pillow's own limit
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(a))  # nothing may be decoded
    with pytest.raises(ImageReadError, match=r"big\.png: 12000x9000 px, over the pixel budget of 100 MP"):
        read_image(big)
    with pytest.raises(ImageReadError, match=r"huge\.png: more than \d+ MP, over the pixel budget"):
        read_image(huge)
    assert main(["show", str(huge), "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "over the pixel budget" in err and not decoded
    monkeypatch.undo()
    cv2.imwrite(str(big), textured_image(60, 80))
    monkeypatch.setenv("SSFEAT_MAX_PIXELS", "4000")
    with pytest.raises(ImageReadError, match="80x60 px, over the pixel budget of 0.004 MP"):
        read_image(big)
    monkeypatch.setenv("SSFEAT_MAX_PIXELS", "1e4")
    assert read_image(big).shape == (60, 80)
    monkeypatch.setenv("SSFEAT_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="SSFEAT_MAX_PIXELS must be a positive number of pixels, got 'lots'"):
        read_image(big)


def test_to_gray_float_rejects_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        to_gray_float(np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_gray_float(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match=r"must be in \[0, 1\], found \[0, 255\]"):  # a float image of 0..255
        to_gray_float(np.linspace(0, 255, 16, dtype=np.float32).reshape(4, 4))
    assert to_gray_float(np.full((4, 4), 1.0005, np.float32)).max() == 1.0  # rounding noise is clipped


def test_pairs_are_reproducible_and_labels_match_the_warp(image_dir):
    cfg = PairConfig(photometric=False, ref_random_pose=False, ori_log2_jitter=0.0, n_random=20)
    s = PairSynthesizer.from_folder(image_dir, cfg)
    a0, a1, rot, lsc = s.sample("ori", 5)
    b0, b1, rot2, _ = s.sample("ori", 5)
    assert np.array_equal(a0, b0) and np.array_equal(a1, b1) and rot == rot2 and lsc == 0.0
    assert s.sample("ori", 6)[2] != rot
    # rotate patch 0 by the label (CCW on screen) and compare inside the inscribed disc
    yy, xx = np.mgrid[:32, :32]
    disc = (xx - 15.5) ** 2 + (yy - 15.5) ** 2 < 12**2
    checked = 0
    for i in range(30):
        a0, a1, rot, _ = s.sample("ori", i)
        if a0[disc].std() < 0.03:  # flat patch: nothing to compare
            continue
        r0 = cv2.warpAffine(a0, cv2.getRotationMatrix2D((15.5, 15.5), np.degrees(rot), 1.0), (32, 32))
        assert np.corrcoef(r0[disc], a1[disc])[0, 1] > 0.95
        checked += 1
    assert checked >= 10
    assert scale_pairs_match_their_labels(s, 40, 0.9) >= 3


def scale_pairs_match_their_labels(s: PairSynthesizer, n: int, min_corr: float) -> int:
    """Check that patch 1 of the first ``n`` unrotated scale pairs is patch 0 magnified by
    ``2**lsc`` about the centre (compared where both exist); returns how many pairs were textured
    enough to compare."""
    checked = 0
    for i in range(n):
        p0, p1, rot, lsc = s.sample("scale", i)
        if rot != 0.0 or not 0.4 < lsc < 1.5 or p0.std() < 0.03:
            continue
        zoom = cv2.warpAffine(p0, cv2.getRotationMatrix2D((15.5, 15.5), 0.0, 2.0**lsc), (32, 32))
        if zoom[8:24, 8:24].std() < 0.03:
            continue
        assert np.corrcoef(zoom[8:24, 8:24].ravel(), p1[8:24, 8:24].ravel())[0, 1] > min_corr
        checked += 1
    return checked


def test_tilted_pairs_labels_match_the_content():
    """With viewpoint tilts, the label is the polar rotation / scale of the relative map; an affine
    ECC alignment of the two patches (started from the label's pure rotation) recovers it."""
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.random((700, 700)).astype(np.float32), (0, 0), 4)
    img = (img - img.min()) / (img.max() - img.min())
    cfg = PairConfig(
        patch_size=64, support=64, max_tilt=3.0, ref_random_pose=False, photometric=False, n_sift=0, n_harris=0
    )
    s = PairSynthesizer([img], cfg)
    c = np.array([31.5, 31.5])
    errs, anisotropic = [], 0
    for i in range(16):
        p0, p1, rot, lsc = s.sample("ori", i)
        Winv = rotation_matrix(torch.tensor(-rot, dtype=torch.float64)).numpy()  # patch 1 -> patch 0 guess
        W = np.concatenate([Winv, (c - Winv @ c)[:, None]], 1).astype(np.float32)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-6)
        try:
            _, W = cv2.findTransformECC(p1, p0, W, cv2.MOTION_AFFINE, crit, None, 5)
        except cv2.error:
            continue
        J = np.linalg.inv(W[:, :2].astype(np.float64))  # patch-0 offsets -> patch-1 offsets
        sv = np.linalg.svd(J)[1]
        anisotropic += sv[0] / sv[1] > 1.2
        r, ls = linear_rotation_scale(torch.from_numpy(J))
        errs.append((abs(math.degrees(angle_diff(float(r), rot))), abs(float(ls) - lsc)))
    errs = np.array(errs)
    assert anisotropic >= 5  # the views really are tilted
    good = (errs[:, 0] < 1.0) & (errs[:, 1] < 0.02)
    assert good.sum() >= 0.75 * 16, errs


def test_tilted_windows_stay_within_the_margin(image_dir):
    cfg = PairConfig(max_tilt=8.0, n_random=20)
    assert cfg.margin() == PairConfig(n_random=20).margin()  # tilts are capped, not the margin widened
    rng = np.random.default_rng(0)
    max_norm = 1.0 * cfg.max_zoom_out()
    for _ in range(200):
        A = np.stack([np.eye(2) * 2.0 ** rng.uniform(-2.5, 2.5) for _ in range(2)])
        _tilt_views(A, cfg.max_tilt, max_norm, rng, 0.0, 0.0)
        assert (np.linalg.norm(A, 2, axis=(1, 2)) <= max(max_norm, 2.0**2.5) * (1 + 1e-9)).all()
    # tilts have determinant 1: scale labels are those of the untilted pairs, rotations change
    tilted = PairSynthesizer.from_folder(image_dir, cfg).batch("scale", range(40))
    plain = PairSynthesizer.from_folder(image_dir, PairConfig(n_random=20)).batch("scale", range(40))
    assert torch.allclose(tilted["log2_scale"], plain["log2_scale"], atol=1e-5)
    assert (angle_diff(tilted["rotation"], plain["rotation"]).abs() > 1e-3).sum() >= 10
    with pytest.raises(ValueError, match="max_tilt"):
        PairConfig(max_tilt=0.5)
    # the benchmark protocol (also used to calibrate a tilt-trained run) is untilted unless asked
    assert paper_protocol(cfg).max_tilt == 1.0 and paper_protocol(cfg, max_tilt=3.0).max_tilt == 3.0


def test_batch_shapes_and_photometric(image_dir):
    s = PairSynthesizer.from_folder(image_dir, PairConfig(n_random=20))
    b = s.batch("scale", range(7))
    assert b["patch0"].shape == (7, 1, 32, 32) and b["log2_scale"].shape == (7,)
    assert (b["log2_scale"].abs() <= 2).all()
    assert float(b["patch0"].min()) >= 0 and float(b["patch0"].max()) <= 1
    plain = PairSynthesizer.from_folder(image_dir, PairConfig(n_random=20, photometric=False)).batch("scale", range(7))
    assert plain["log2_scale"].equal(b["log2_scale"])  # same geometry, different intensities
    assert not torch.allclose(plain["patch0"], b["patch0"], atol=1e-3)


def test_photometric_fraction_leaves_the_other_pairs_clean(image_dir):
    """Fraction 0: every pair equals the clean synthesis; 1: the default's; 0.5: some pairs of each
    (and the geometry never changes)."""

    def batch(**kw):
        return PairSynthesizer.from_folder(image_dir, PairConfig(n_random=20, **kw)).batch("scale", range(40))

    plain, full = batch(photometric=False), batch()
    assert batch(photometric_fraction=1.0)["patch1"].equal(full["patch1"])
    assert batch(photometric_fraction=0.0)["patch1"].equal(plain["patch1"])
    half = batch(photometric_fraction=0.5)
    clean = (half["patch1"] == plain["patch1"]).flatten(1).all(1)
    assert 8 <= int(clean.sum()) <= 32 and half["log2_scale"].equal(plain["log2_scale"])
    with pytest.raises(ValueError, match="photometric_fraction"):
        PairConfig(photometric_fraction=1.5)


def test_paper_scale_sampling_mixes_grid_and_linear_magnifications(image_dir):
    rng = np.random.default_rng(0)
    lsc = np.array([_paper_log2_scale(rng) for _ in range(20000)])
    on_grid = np.isclose(lsc * 3, np.round(lsc * 3), atol=1e-9)
    assert abs(on_grid.mean() - (0.5 + 0.5 / 13)) < 0.015 and (np.abs(lsc) <= 2 + 1e-9).all()  # B's 1 is on it
    assert abs((lsc == 0).mean() - 1 / 13) < 0.01  # 1/26 from each half
    linear = 2.0 ** lsc[~on_grid]  # PatchPoseB: uniform in linear [1/4, 4]
    assert abs(linear.mean() - 2.125) < 0.05 and abs((linear > 1).mean() - 0.8) < 0.02
    b = PairSynthesizer.from_folder(image_dir, PairConfig(n_random=20, scale_sampling="paper")).batch(
        "scale", range(64)
    )
    grid = torch.isclose(b["log2_scale"] * 3, torch.round(b["log2_scale"] * 3), atol=1e-5)
    assert 0 < int(grid.sum()) < 64
    with pytest.raises(ValueError, match="scale_sampling"):
        PairConfig(scale_sampling="linear")
    with pytest.raises(ValueError, match="spans log2 scales"):
        PairConfig(scale_sampling="paper", max_log2_scale=3.0)


def test_zoom_out_pairs_keep_both_views_sharp(image_dir):
    rng = np.random.default_rng(0)
    for lsc in rng.uniform(-2, 2, 500):
        l0 = _zoomed_out_reference(float(lsc), 2.0**2.5, rng)
        assert -2.5 - 1e-9 <= min(l0, l0 + lsc) and max(l0, l0 + lsc) <= 1e-9

    def sharpness_ratios(cfg):  # gradient energy of the magnified view / the reference, big magnifications
        s = PairSynthesizer.from_folder(image_dir, cfg)
        out = []
        for i in range(120):
            p0, p1, _, lsc = s.sample("scale", i)
            if lsc > 1.0 and p0.std() > 0.03:
                out.append(np.abs(cv2.Laplacian(p1, cv2.CV_32F)).mean() / np.abs(cv2.Laplacian(p0, cv2.CV_32F)).mean())
        assert len(out) >= 10
        return np.median(out)

    base = dict(photometric=False, ref_random_pose=False, n_random=20)
    plain, zoomed = PairConfig(**base), PairConfig(**base, zoom_out_pairs=1.0)
    assert sharpness_ratios(zoomed) > 1.4 * sharpness_ratios(plain)  # upsampled views are blurry, downsampled not
    # same labels as plain pairs otherwise, and the content still matches them (patch 1 = patch 0 zoomed)
    assert scale_pairs_match_their_labels(PairSynthesizer.from_folder(image_dir, zoomed), 60, 0.8) >= 3
    with pytest.raises(ValueError, match="zoom_out_pairs"):
        PairConfig(zoom_out_pairs=1.5)


def test_pair_ranges_that_would_make_endless_work_are_refused():
    for field, v in (("blur", 1e6), ("ori_log2_jitter", 12.0), ("max_log2_scale", 20.0), ("ref_log2_jitter", 5.0)):
        with pytest.raises(ValueError, match=f"{field} must be at most"):
            PairConfig(**{field: v})
    PairConfig(blur=8.0, ori_log2_jitter=2.0, max_log2_scale=4.0)  # the largest accepted


def test_split_is_by_image_and_deterministic(image_dir):
    paths = list_images(image_dir)
    t1, v1 = split_by_image(paths, 0.5, image_dir)
    t2, v2 = split_by_image(paths, 0.5, image_dir)
    assert (t1, v1) == (t2, v2) and not set(t1) & set(v1) and sorted(t1 + v1) == list(range(len(paths)))


def test_too_small_images_are_skipped_or_refused():
    cfg = PairConfig(n_random=10)
    s = PairSynthesizer([textured_image(300, 300), textured_image(40, 40)], cfg, ["big", "tiny"])
    assert len(s) == 1 and s.skipped == ["tiny"]
    with pytest.raises(ValueError, match="no usable images"):
        PairSynthesizer([textured_image(40, 40)], cfg)


def test_sequences_layouts_and_malformed_folders(tmp_path, oxford_dir):
    from ssfeat.data.sequences import find_sequences

    seqs = find_sequences(oxford_dir)
    assert [(q.name, q.layout, len(q.targets)) for q in seqs] == [("toy", "oxford", 2)]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "H1to2p.xml").write_text("<opencv_storage><broken")  # malformed and no img1
    hp = tmp_path / "hp"
    hp.mkdir()
    cv2.imwrite(str(hp / "1.ppm"), textured_image(50, 50))
    cv2.imwrite(str(hp / "2.ppm"), textured_image(50, 50))
    (hp / "H_1_2").write_text("1 0 0\n0 1 0\n0 0")  # not 3x3
    assert find_sequences(tmp_path) == []


def test_unreadable_homography_files_skip_their_sequence(tmp_path, oxford_dir, caplog):
    from ssfeat.data.sequences import find_sequences, read_homography

    for name, text in (("empty", ""), ("garbage", "not xml at all")):  # cv2 raises SystemError on these
        f = tmp_path / f"{name}.xml"
        f.write_text(text)
        with pytest.raises(ValueError, match="not an OpenCV FileStorage matrix"):
            read_homography(f)
    h22 = tmp_path / "H_1_2"
    h22.write_text("0 0 1\n0 1 0\n1 0 0")  # invertible, but H[2, 2] = 0 cannot be normalised
    with pytest.raises(ValueError, match="H\\[2, 2\\] is 0"):
        read_homography(h22)
    root = tmp_path / "root"
    for name in ("graf", "wall"):  # graf's H1to2p.xml is empty, wall is fine
        d = root / name
        d.mkdir(parents=True)
        for k in (1, 2):
            cv2.imwrite(str(d / f"img{k}.png"), textured_image(50, 50))
        (d / "H1to2p.xml").write_text("")
    (root / "wall" / "H1to2p.xml").write_text((oxford_dir / "toy" / "H1to2p.xml").read_text())
    with caplog.at_level("WARNING"):
        seqs = find_sequences(root)
    assert [q.name for q in seqs] == ["wall"] and "graf" in caplog.text


def test_a_missing_target_skips_only_that_pair(tmp_path, caplog):
    from ssfeat.data.sequences import find_sequences

    seq = tmp_path / "v_gap"
    seq.mkdir()
    for k in (1, 3, 4):
        cv2.imwrite(str(seq / f"{k}.png"), textured_image(50, 50))
    for k in (2, 3, 4):  # target 2 has a homography but no image
        (seq / f"H_1_{k}").write_text("1 0 0\n0 1 0\n0 0 1")
    with caplog.at_level("WARNING"):
        (s,) = find_sequences(tmp_path)
    assert [p.name for p in s.targets] == ["3.png", "4.png"] and len(s.H) == 2
    assert "target 2 has H_1_2 but no image" in caplog.text


def test_synthesizer_from_folder_skips_blank_images_by_name(image_dir, tmp_path, caplog):
    """The patch-pose benchmark's pairs (PairSynthesizer.from_folder) never come from a blank photo:
    it is skipped with a warning naming it, as in training."""
    import shutil

    folder = tmp_path / "photos"
    shutil.copytree(image_dir, folder)
    cv2.imwrite(str(folder / "zz_blank.png"), np.full((300, 300), 128, np.uint8))
    with caplog.at_level(logging.WARNING):
        s = PairSynthesizer.from_folder(folder, PairConfig(n_random=20))
    assert "zz_blank.png" in caplog.text and "blank" in caplog.text
    assert len(s) == len(list(image_dir.rglob("img*")))


def test_links_that_lead_to_no_file_are_listed_and_refused_by_name(tmp_path, caplog):
    cv2.imwrite(str(tmp_path / "a.png"), textured_image(40, 40, seed=1))
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    (tmp_path / "gone.png").symlink_to("missing.png")
    (tmp_path / "dir").symlink_to(".")  # a link to a folder is not followed
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "gone.png", "loop.jpg"]
    with pytest.raises(ImageReadError, match="loop.jpg: a symbolic link loop$"):
        read_image(tmp_path / "loop.jpg")
    with pytest.raises(ImageReadError, match="gone.png: a symbolic link to a missing file$"):
        read_image(tmp_path / "gone.png")
    with caplog.at_level(logging.WARNING):
        paths, _, skipped = load_folder(tmp_path)
    assert [p.name for p in paths] == ["a.png"] and len(skipped) == 2 and "symbolic link loop" in caplog.text
