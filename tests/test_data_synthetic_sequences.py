"""Synthetic HPatches-layout sequences from photos: exact homographies, layout, bad input, CLI."""

import json
import math
import shutil

import cv2
import numpy as np
import pytest
import torch

from ssfeat.cli import main
from ssfeat.data.outputs import finish_output, start_output
from ssfeat.data.sequences import find_sequences
from ssfeat.data.synthetic_sequences import SyntheticSequenceConfig, make_sequence, make_synthetic_sequences
from ssfeat.files import OutputLock, OutputLockedError
from ssfeat.geometry import local_rotation_scale

from .conftest import textured_image


def _pose_at_centre(H: np.ndarray, shape: tuple[int, int]) -> tuple[float, float]:
    """Rotation and log2 scale of ``H`` (reference -> target) at the reference image centre."""
    c = np.array([[(shape[1] - 1) / 2, (shape[0] - 1) / 2]])
    theta, log2_scale = local_rotation_scale(torch.from_numpy(c), torch.from_numpy(H))
    return float(theta[0]), float(log2_scale[0])


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_targets_are_the_reference_seen_through_their_homography():
    img = textured_image(200, 300, seed=3).astype(np.float32) / 255
    cfg = SyntheticSequenceConfig(n_targets=4, perspective=0.2)
    ref, targets, Hs = make_sequence(img, cfg, np.random.default_rng(0))
    assert ref.shape == (200, 300) and ref.dtype == np.uint8 and len(targets) == len(Hs) == 4
    unrelated = cv2.warpPerspective(ref, Hs[1], (300, 200))
    for view, H in zip(targets, Hs):
        assert view.shape == (200, 300) and view.dtype == np.uint8
        warped = cv2.warpPerspective(ref, H, (300, 200))
        seen = cv2.warpPerspective(np.ones_like(ref), H, (300, 200), flags=cv2.INTER_NEAREST) > 0
        assert seen.mean() > 0.3 and (view[~seen] == 0).all()  # the photo covers most; the rest is black
        inner = cv2.erode(seen.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        assert _ncc(warped[inner], view[inner]) > 0.9  # a photometric change only
        # magnified by 2**u, u in [-0.5, 0.5] (up to the perspective displacement of the corners)
        assert -0.5 - 0.4 < _pose_at_centre(H, ref.shape)[1] < 0.5 + 0.4
    assert _ncc(unrelated[inner], targets[0][inner]) < 0.5  # the check above can fail
    # rotations cover the circle
    angles = []
    for seed in range(40):
        _, _, (H,) = make_sequence(img, SyntheticSequenceConfig(n_targets=1), np.random.default_rng(seed))
        angles.append(_pose_at_centre(H, img.shape)[0])
    assert np.histogram(angles, bins=4, range=(0, 2 * math.pi))[0].min() >= 4


@pytest.mark.slow
def test_make_sequences_layout_bad_photos_and_cli(image_dir, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(image_dir, src)
    (src / "broken.png").write_bytes(b"not an image")
    cv2.imwrite(str(src / "tiny.png"), textured_image(40, 40))
    cv2.imwrite(str(src / "black.png"), np.zeros((200, 200), np.uint8))
    out = tmp_path / "seq"
    meta = make_synthetic_sequences(src, out, SyntheticSequenceConfig(n_targets=3, max_side=200))
    assert len(meta["sequences"]) == 6 and len(meta["skipped"]) == 3
    assert any("broken.png" in s for s in meta["skipped"]) and any("smaller than" in s for s in meta["skipped"])
    assert any("black.png" in s and "blank" in s for s in meta["skipped"])
    seqs = find_sequences(out)
    assert len(seqs) == 6 and all(s.layout == "hpatches" and len(s.targets) == 3 for s in seqs)
    assert json.loads((out / "sequences.json").read_text())["config"]["n_targets"] == 3
    ref = cv2.imread(str(seqs[0].reference), cv2.IMREAD_UNCHANGED)
    assert ref.shape == (200, 200) == cv2.imread(str(seqs[0].targets[0]), cv2.IMREAD_UNCHANGED).shape  # max_side
    # deterministic: the same seed gives the same files
    again = make_synthetic_sequences(src, tmp_path / "again", SyntheticSequenceConfig(n_targets=3, max_side=200))
    assert again["sequences"][0]["sequence"] == meta["sequences"][0]["sequence"]
    a, b = (np.loadtxt(d / meta["sequences"][0]["sequence"] / "H_1_3") for d in (out, tmp_path / "again"))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="not empty"):
        make_synthetic_sequences(src, out)
    bad_configs = (dict(n_targets=0), dict(min_log2_zoom=0.6, max_log2_zoom=0.5), dict(perspective=0.5), dict(noise=-1))
    for bad in bad_configs:
        with pytest.raises(ValueError):
            SyntheticSequenceConfig(**bad)
    # CLI: make, then the sequence benchmark reads the result
    assert main(["data", "make-sequences", "--images", str(image_dir), "--out", str(tmp_path / "c"), "--limit", "2",
                 "--n-targets", "2", "--min-log2-zoom", "-0.25", "--max-log2-zoom", "0.25"]) == 0  # fmt: skip
    assert "2 sequences, 4 pairs" in capsys.readouterr().out
    js = tmp_path / "s.json"
    assert main(["benchmark", "sequences", "--root", str(tmp_path / "c"), "--json", str(js)]) == 0
    assert json.loads(js.read_text())["n_pairs"] > 0
    bad_zoom = [
        "data",
        "make-sequences",
        "--images",
        str(image_dir),
        "--out",
        str(tmp_path / "d"),
        "--min-log2-zoom",
        "1",
    ]
    assert main(bad_zoom) == 2
    assert "min_log2_zoom" in capsys.readouterr().err


def _tree(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_disk_leaves_no_half_sequence_and_a_rerun_completes_the_folder(image_dir, tmp_path, monkeypatch, capsys):
    from .test_files import full_disk

    ref = tmp_path / "ref"
    args = ["data", "make-sequences", "--images", str(image_dir), "--n-targets", "2", "--max-side", "96"]
    assert main([*args, "--out", str(ref)]) == 0
    out = tmp_path / "seq"
    two = sum(len(v) for k, v in _tree(ref).items() if k.startswith(("v_00000", "v_00001")))
    full_disk(monkeypatch, after=two + 2000)  # the disk fills up in the third sequence
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssfeat: error: cannot write ") and err.count("\n") == 1
    made = sorted(p.name for p in out.iterdir() if p.name.startswith("v_"))
    assert len(made) == 2 and not (out / "sequences.json").exists()
    files = ["1.png", "2.png", "3.png", "H_1_2", "H_1_3"]
    assert all(sorted(q.name for q in (out / d).iterdir()) == files for d in made)
    assert not [p for p in out.iterdir() if p.name.startswith(".v_")]  # the unfinished sequence is removed
    monkeypatch.undo()
    assert main([*args, "--out", str(out), "--seed", "1"]) == 2  # other settings: refused
    assert "unfinished dataset made with other settings (config)" in capsys.readouterr().err
    assert main([*args, "--out", str(out)]) == 0  # the same command completes it
    assert _tree(out) == _tree(ref)
    assert main([*args, "--out", str(out)]) == 2 and "exists and is not empty" in capsys.readouterr().err


def test_max_rotation_gives_the_same_pairs_up_to_their_rotation():
    img = textured_image(200, 300, seed=5).astype(np.float32) / 255
    full = SyntheticSequenceConfig(n_targets=6, perspective=0.0)
    _, _, H_full = make_sequence(img, full, np.random.default_rng(4))
    for limit in (0.0, 30.0):
        cfg = SyntheticSequenceConfig(n_targets=6, perspective=0.0, max_rotation_deg=limit)
        _, _, H_lim = make_sequence(img, cfg, np.random.default_rng(4))
        for a, b in zip(H_full, H_lim):
            (ta, sa), (tb, sb) = _pose_at_centre(a, img.shape), _pose_at_centre(b, img.shape)
            assert abs(sa - sb) < 1e-6  # same zoom
            wrapped = math.remainder(ta, 2 * math.pi)  # the full draw, in [-pi, pi)
            assert abs(math.remainder(tb - wrapped * limit / 180, 2 * math.pi)) < 1e-6
            assert abs(math.degrees(math.remainder(tb, 2 * math.pi))) <= limit + 1e-6
    assert max(abs(math.remainder(_pose_at_centre(h, img.shape)[0], 2 * math.pi)) for h in H_full) > math.pi / 2
    with pytest.raises(ValueError, match="max_rotation_deg"):
        SyntheticSequenceConfig(max_rotation_deg=200)


def test_a_second_run_making_one_dataset_stops_with_one_line(image_dir, tmp_path, capsys):
    out = tmp_path / "seq"
    out.mkdir()
    args = ["data", "make-sequences", "--images", str(image_dir), "--out", str(out), "--limit", "1"]
    with OutputLock(out):  # another run is making it
        assert main(args) == 2
        assert capsys.readouterr().err == f"ssfeat: error: another ssfeat process is writing {out}\n"
        assert not any(out.iterdir())
        with pytest.raises(OutputLockedError):  # also once the folder was checked
            start_output(out, {"command": "x"})
    assert main(args) == 0 and (out / "sequences.json").is_file()
    start_output(tmp_path / "ds", {"command": "x"})  # held by this process until it is finished
    with pytest.raises(OutputLockedError):
        OutputLock(tmp_path / "ds").acquire()
    finish_output(tmp_path / "ds", "d.json", {})
    OutputLock(tmp_path / "ds").acquire().release()
