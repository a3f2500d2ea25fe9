"""ssfeat extract: one HDF5 file per folder, resumable after a kill, sharded, readable throughout."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from ssfeat.cli import main
from ssfeat.files import OutputLock, OutputLockedError
from ssfeat.pipeline import build_pipeline
from ssfeat.pipeline import extract as ex
from ssfeat.pipeline.extract import FORMATS, ExtractConfig, done_images, extract_folder, read_features

from .conftest import run_torchrun, textured_image
from .test_files import dead_pid, full_disk

CFG = ExtractConfig(pipeline="sift", max_keypoints=50, part_size=2)


@pytest.fixture
def folder(tmp_path):
    """7 readable images (one in a sub-folder, one 16-bit RGBA, one tiny), a zero-byte file, a
    truncated JPEG and a text file with an image extension."""
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    for i in range(5):
        cv2.imwrite(str(d / ("sub" if i == 4 else ".") / f"im{i}.png"), textured_image(120, 160, seed=i))
    bgr = cv2.cvtColor(textured_image(100, 100, seed=9), cv2.COLOR_GRAY2BGR)
    rgba = np.dstack([bgr, np.full((100, 100), 255, np.uint8)])
    cv2.imwrite(str(d / "rgba16.png"), rgba.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "tiny.png"), np.full((3, 3), 128, np.uint8))
    (d / "zero.jpg").write_bytes(b"")
    ok, buf = cv2.imencode(".jpg", textured_image(80, 80, seed=3))
    (d / "trunc.jpg").write_bytes(buf.tobytes()[: len(buf) // 3])
    (d / "notes.png").write_text("not an image")
    return d


def _keys(path: Path) -> set[str]:
    return done_images(path)[0]


def test_extract_writes_one_group_per_image_and_reports_skips(folder, tmp_path):
    out = tmp_path / "f.h5"
    st = extract_folder(folder, out, CFG, progress=False)
    keys = _keys(out)
    assert {"im0.png", "sub/im4.png", "rgba16.png"} <= keys
    with h5py.File(out, "r") as f:
        skipped = {k.decode(): r.decode() for k, r in f["skipped"][()]}
        assert f.attrs["pipeline"] == "sift"
    assert {"zero.jpg", "notes.png", "trunc.jpg"} <= set(skipped)
    assert "tiny.png" not in keys and skipped["tiny.png"].startswith("3x3 px is too small")
    assert st["n_done"] + st["n_skipped"] == st["n_images"] == 10
    assert not (tmp_path / "f.h5.parts").exists()
    # stored features equal the pipeline's
    img = cv2.imread(str(folder / "im1.png"), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    ref = build_pipeline("sift", 50).extract(img)
    got = read_features(out, "im1.png")
    assert np.allclose(got.keypoints, ref.keypoints) and np.allclose(got.descriptors, ref.descriptors)
    assert got.image_size == (120, 160)
    with pytest.raises(KeyError):
        read_features(out, "missing.png")
    # adding to the file needs the same settings; a file that is not ours is never overwritten
    other = ExtractConfig(pipeline="upright", max_keypoints=50, part_size=2)
    with pytest.raises(ValueError, match="pipeline='sift' \\(now 'upright'\\)"):
        extract_folder(folder, out, other, progress=False)
    opencv = dataclasses.replace(CFG, sift_first_octave=-1)  # OpenCV's own descriptors
    with pytest.raises(ValueError, match="sift_first_octave=0 \\(now -1\\)"):
        extract_folder(folder, out, opencv, progress=False)
    with h5py.File(out, "a") as f:  # a file from before the setting existed had OpenCV's descriptors
        del f.attrs["sift_first_octave"]
    with pytest.raises(ValueError, match="sift_first_octave=-1 \\(now 0\\)"):
        extract_folder(folder, out, CFG, progress=False)
    victim = tmp_path / "photo.png"
    victim.write_bytes((folder / "im0.png").read_bytes())
    with pytest.raises(ValueError, match="not an HDF5 feature file"):
        extract_folder(folder, victim, CFG, progress=False)
    assert victim.read_bytes() == (folder / "im0.png").read_bytes()
    with pytest.raises(ValueError, match="max_side"):
        ExtractConfig(max_side=1)
    with pytest.raises(ValueError, match="unknown pipeline 'nonsense'"):
        ExtractConfig(pipeline="nonsense")


def test_a_folder_named_skipped_and_other_spellings_of_the_folder(tmp_path, monkeypatch):
    d = tmp_path / "imgs"
    (d / "skipped").mkdir(parents=True)  # an image folder with the name of the skipped list
    cv2.imwrite(str(d / "skipped" / "a.png"), textured_image(120, 160, seed=1))
    cv2.imwrite(str(d / "b.png"), textured_image(120, 160, seed=2))
    (d / "bad.png").write_text("not an image")
    out = tmp_path / "f.h5"
    st = extract_folder(d, out, CFG, progress=False)
    assert _keys(out) == {"skipped/a.png", "b.png"} and st["n_skipped"] == 1
    with h5py.File(out, "r") as f:
        assert f.attrs["skipped_dataset"] == "skipped_" and f["skipped_"][()].tolist() == [
            (b"bad.png", b"not a readable image (empty, truncated or unknown format)")
        ]
    # the same folder spelled another way: nothing is retried or counted twice
    monkeypatch.chdir(tmp_path)
    st = extract_folder(Path("imgs"), out, CFG, progress=False)
    assert st["n_new"] == 0 and st["n_skipped"] == 1 and st["n_done"] == 2


@pytest.mark.parametrize("fmt, batch_size", [("ssfeat", 1), ("hloc", 1), ("ssfeat", 3)])
def test_extract_resumes_after_a_kill_without_loss_or_duplicates(folder, tmp_path, monkeypatch, fmt, batch_size):
    out = tmp_path / "f.h5"
    cfg = dataclasses.replace(CFG, format=fmt, batch_size=batch_size)
    real = ex.write_h5_atomic
    calls = {"n": 0}

    def die_on_third_part(path, fill, libver=None):
        calls["n"] += 1
        if calls["n"] == 3:  # killed while writing the third part: its temporary file is left behind
            (Path(path).parent / f".{Path(path).name}.{dead_pid()}.x.tmp").write_bytes(b"partial")
            raise KeyboardInterrupt
        real(path, fill, libver)

    monkeypatch.setattr(ex, "write_h5_atomic", die_on_third_part)
    with pytest.raises(KeyboardInterrupt):
        extract_folder(folder, out, cfg, progress=False)
    monkeypatch.setattr(ex, "write_h5_atomic", real)
    assert not out.exists()  # the output appears only when complete
    assert _keys(out) == {"im0.png", "im1.png", "im2.png", "im3.png"}  # the two finished parts
    st = extract_folder(folder, out, cfg, progress=False)
    assert st["n_new"] == 2 and st["n_done"] == 6 and st["n_skipped"] == 4  # nothing lost (tiny.png: skipped)
    assert not list(tmp_path.glob("**/.*tmp*"))  # the killed run's temporary part is cleaned up
    ref = tmp_path / "ref.h5"
    extract_folder(folder, ref, cfg, progress=False)
    assert _keys(out) == _keys(ref)
    for k in _keys(ref):
        a, b = read_features(out, k), read_features(ref, k)
        assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.descriptors, b.descriptors), k
    again = extract_folder(folder, out, cfg, progress=False)  # nothing left to do: no duplicates
    assert again["n_new"] == 0 and _keys(out) == _keys(ref)
    with h5py.File(out, "r") as f:  # hloc's layout: only image groups hold datasets (hloc lists those)
        holders = set()
        f.visititems(lambda _, o: holders.add(o.parent.name.strip("/")) if isinstance(o, h5py.Dataset) else None)
        assert (holders == _keys(ref)) == (fmt == "hloc")


@pytest.mark.parametrize("pipeline", ["hndesc", "sift"])
def test_batches_give_the_file_of_one_image_at_a_time(folder, tmp_path, pipeline):
    """The dense descriptor describes the five 120x160 images of a batch in one forward pass; the
    skipped files are found as one at a time, and the batch size is no stored setting."""
    one, four = tmp_path / "one.h5", tmp_path / "four.h5"
    cfg = ExtractConfig(pipeline=pipeline, max_keypoints=60, part_size=3)
    extract_folder(folder, one, cfg, progress=False)
    extract_folder(folder, four, dataclasses.replace(cfg, batch_size=4), progress=False)
    assert _keys(one) == _keys(four) and len(_keys(one)) == 6
    assert done_images(one)[1] == done_images(four)[1]
    for k in _keys(one):
        a, b = read_features(one, k), read_features(four, k)
        assert a.image_size == b.image_size and np.array_equal(a.keypoints, b.keypoints), k
        assert np.array_equal(a.orientations, b.orientations) and np.array_equal(a.scales, b.scales), k
        np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-5, err_msg=k)
    cv2.imwrite(str(folder / "new.png"), textured_image(120, 160, seed=42))
    st = extract_folder(folder, one, dataclasses.replace(cfg, batch_size=2), progress=False)
    assert st["n_new"] == 1 and len(_keys(one)) == 7
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        ExtractConfig(batch_size=0)


def test_readers_keep_a_consistent_view_while_new_images_are_added(folder, tmp_path):
    out = tmp_path / "f.h5"
    extract_folder(folder, out, CFG, progress=False)
    n = len(_keys(out))
    cv2.imwrite(str(folder / "new.png"), textured_image(120, 160, seed=42))
    with h5py.File(out, "r") as reader:  # opened before the update
        extract_folder(folder, out, CFG, progress=False)
        assert "new.png" not in reader and len(reader["im0.png/keypoints"][()]) > 0
    assert len(_keys(out)) == n + 1


def test_huge_images_are_shrunk_and_coordinates_mapped_back(tmp_path):
    d = tmp_path / "big"
    d.mkdir()
    img = textured_image(200, 300, seed=4)
    cv2.imwrite(str(d / "a.png"), img)
    small = ExtractConfig(pipeline="sift", max_keypoints=50, max_side=150)
    extract_folder(d, tmp_path / "s.h5", small, progress=False)
    f = read_features(tmp_path / "s.h5", "a.png")
    with h5py.File(tmp_path / "s.h5", "r") as h:
        assert h["a.png"].attrs["resize"] == pytest.approx(0.5)
    assert f.image_size == (200, 300) and f.keypoints[:, 0].max() > 150  # original pixel coordinates
    half = cv2.resize(img.astype(np.float32) / 255, (150, 100), interpolation=cv2.INTER_AREA)
    ref = build_pipeline("sift", 50).extract(half)
    assert np.allclose(f.keypoints, (ref.keypoints + 0.5) * 2 - 0.5, atol=1e-4)
    assert np.allclose(f.scales, ref.scales * 2, atol=1e-4)


@pytest.mark.slow
def test_worker_processes_give_the_same_file(folder, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    extract_folder(folder, a, CFG, progress=False)
    extract_folder(folder, b, CFG, workers=2, progress=False)
    assert _keys(a) == _keys(b)
    for k in _keys(a):
        assert np.array_equal(read_features(a, k).descriptors, read_features(b, k).descriptors), k


@pytest.mark.slow
def test_extract_cli_and_torchrun_sharding(folder, tmp_path, capsys):
    out = tmp_path / "cli.h5"
    args = ["extract", "--images", str(folder), "--out", str(out), "--pipeline", "sift", "--max-keypoints", "50"]
    assert main([*args, "--no-progress"]) == 0
    assert "6 of 10 images" in capsys.readouterr().out
    assert main(["extract", "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"  # an unknown pipeline is refused before anything is written
    assert main(["extract", "--images", str(folder), "--out", str(bad), "--pipeline", "nonsense"]) == 2
    assert "unknown pipeline 'nonsense'" in capsys.readouterr().err and not list(tmp_path.glob("bad.h5*"))
    dd = tmp_path / "ddp.h5"
    args = ["extract", "--images", str(folder), "--out", str(dd), "--pipeline", "sift"]
    r = run_torchrun([*args, "--max-keypoints", "50", "--part-size", "1", "--no-progress"])
    assert r.stdout.count("images/s") == 1  # rank 0 reports
    assert _keys(dd) == _keys(out)
    for k in _keys(out):
        assert np.array_equal(read_features(dd, k).keypoints, read_features(out, k).keypoints), k


def test_a_skipped_name_holding_colons_hides_no_image_and_old_lists_are_read(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "x.jpg: y.jpg").write_bytes(b"")  # skipped: its name reads like "key: reason"
    cv2.imwrite(str(d / "a.png"), textured_image(120, 160, seed=1))
    out = tmp_path / "c.h5"
    extract_folder(d, out, CFG, progress=False)
    cv2.imwrite(str(d / "x.jpg"), textured_image(120, 160, seed=2))
    st = extract_folder(d, out, CFG, progress=False)
    assert st["n_new"] == 1 and _keys(out) == {"a.png", "x.jpg"} and st["n_skipped"] == 1
    # a file of an earlier version: "key: reason" strings, read with the image keys
    old = tmp_path / "old.h5"
    with h5py.File(out, "r") as f, h5py.File(old, "w") as g:
        for k in ("a.png",):
            f.copy(f[k], g, name=k)
        g.attrs.update({k: f.attrs[k] for k in ("pipeline", "max_keypoints", "max_side", "sift_first_octave")})
        g.create_dataset("skipped", data=["x.jpg: y.jpg: not a readable image"], dtype=h5py.string_dtype())
    st = extract_folder(d, old, CFG, progress=False)
    assert st["n_new"] == 1 and _keys(old) == {"a.png", "x.jpg"}
    assert done_images(old)[1] == [("x.jpg: y.jpg", "not a readable image")]


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(tmp_path, capsys):
    d = tmp_path / "u"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), textured_image(120, 160, seed=1))
    (Path(os.fsdecode(bytes(d) + b"/b\xff.png"))).write_bytes((d / "a.png").read_bytes())
    out = tmp_path / "u.h5"
    argv = ["extract", "--images", str(d), "--out", str(out), "--pipeline", "sift", "--max-keypoints", "50"]
    assert main([*argv, "--part-size", "2", "--no-progress"]) == 0
    assert "1 of 2 images" in capsys.readouterr().out
    assert done_images(out)[1] == [("b\\xff.png", ex.NOT_UTF8)]
    st = extract_folder(d, out, CFG, progress=False)  # a rerun does not retry it
    assert st["n_new"] == 0 and st["n_skipped"] == 1


def test_images_over_the_pixel_budget_are_skipped_undecoded(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SSFEAT_MAX_PIXELS", str(150 * 150))  # the 120x160 images fit, rgba16.png too
    cv2.imwrite(str(folder / "big.png"), textured_image(200, 200, seed=5))
    out = tmp_path / "f.h5"
    st = extract_folder(folder, out, CFG, progress=False)
    skipped = dict(done_images(out)[1])
    assert skipped["big.png"].startswith("200x200 px, over the pixel budget of 0.0225 MP")
    assert "im0.png" in _keys(out) and st["n_done"] == 6


def test_a_full_disk_in_the_merge_is_one_error_and_leaves_no_temporary_file(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "f.h5"
    extract_folder(folder, out, dataclasses.replace(CFG, part_size=100), progress=False)
    before = out.read_bytes()
    cv2.imwrite(str(folder / "new.png"), textured_image(120, 160, seed=7))
    real = ex.write_h5_atomic

    def full_in_merge(path, fill, libver=None):
        if Path(path) == out:
            full_disk(monkeypatch, after=4096)
        real(path, fill, libver)

    monkeypatch.setattr(ex, "write_h5_atomic", full_in_merge)
    argv = ["extract", "--images", str(folder), "--out", str(out), "--pipeline", "sift", "--max-keypoints", "50"]
    assert main([*argv, "--part-size", "100", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ssfeat: error: cannot write ") and err.endswith("f.h5: No space left on device")
    assert out.read_bytes() == before and not list(tmp_path.glob(".f.h5.*"))
    monkeypatch.undo()
    st = extract_folder(folder, out, dataclasses.replace(CFG, part_size=100), progress=False)  # the parts are kept
    assert st["n_new"] == 0 and "new.png" in _keys(out)


def test_a_second_extract_on_one_output_stops_with_one_line(folder, tmp_path, capsys):
    out = tmp_path / "o" / "f.h5"
    args = ["extract", "--images", str(folder), "--out", str(out), "--pipeline", "sift", "--max-keypoints", "50"]
    args += ["--no-progress"]
    with OutputLock(out):  # another run is writing it
        assert main(args) == 2
        assert capsys.readouterr().err == f"ssfeat: error: another ssfeat process is writing {out}\n"
        assert not out.exists() and not ex.parts_dir(out).exists()
        with pytest.raises(OutputLockedError):
            extract_folder(folder, out, CFG, progress=False)
    assert main(args) == 0 and out.is_file()  # the lock is released with its holder
    extract_folder(folder, out, CFG, progress=False)  # and by every call


@pytest.mark.slow
def test_torchrun_extract_on_a_locked_output_stops_every_process(folder, tmp_path):
    out = tmp_path / "f.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ssfeat"]
    cmd += ["extract", "--images", str(folder), "--out", str(out), "--pipeline", "sift", "--no-progress"]
    with OutputLock(out):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert r.stderr.count(f"ssfeat: error: another ssfeat process is writing {out}") == 2  # both ranks
    assert not out.exists() and not ex.parts_dir(out).exists()


def test_symbolic_link_loops_and_broken_links_are_skipped_by_name(tmp_path):
    d = tmp_path / "l"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), textured_image(120, 160, seed=1))
    (d / "loop.jpg").symlink_to("loop.jpg")
    (d / "gone.png").symlink_to("missing.png")
    (d / "ok.png").symlink_to("a.png")
    out = tmp_path / "l.h5"
    st = extract_folder(d, out, CFG, progress=False)
    assert st["n_images"] == 4 and st["n_done"] == 2 and st["n_skipped"] == 2
    _, skipped = done_images(out)
    assert dict(skipped) == {"loop.jpg": "a symbolic link loop", "gone.png": "a symbolic link to a missing file"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_image_without_keypoints_is_stored_as_empty_arrays_not_skipped(tmp_path, fmt):
    d = tmp_path / "flat"
    d.mkdir()
    ramp = np.tile(np.linspace(100, 110, 160), (120, 1)).astype(np.uint8)  # not blank, but no SIFT keypoint
    cv2.imwrite(str(d / "ramp.png"), ramp)
    out = tmp_path / "f.h5"
    st = extract_folder(d, out, dataclasses.replace(CFG, format=fmt), progress=False)
    assert (st["n_done"], st["n_skipped"]) == (1, 0) and done_images(out) == ({"ramp.png"}, [])
    f = read_features(out, "ramp.png")
    assert f.keypoints.shape == (0, 2) and f.descriptors.shape == (0, 128) and f.image_size == (120, 160)
    with h5py.File(out) as h:
        assert h["ramp.png/descriptors"].shape == ((0, 128) if fmt == "ssfeat" else (128, 0))
