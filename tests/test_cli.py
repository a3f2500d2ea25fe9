import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch

from ssfeat.cli import build_parser, figures, main
from ssfeat.cli import train as cli_train
from ssfeat.models.weights import load_pose_model, model_from_checkpoint
from ssfeat.training import load_checkpoint

from .conftest import textured_image


def _subcommands(parser=None, prefix=()) -> list[list[str]]:
    """Every command path of the CLI (``[]``, ``["train"]``, ``["train", "pose"]``, ...), read from the
    parser itself so that a new subcommand cannot go untested."""
    import argparse

    from ssfeat.cli import build_parser

    parser = parser or build_parser()
    paths = [list(prefix)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _subcommands(sub, (*prefix, name))
    return paths


def test_every_command_is_listed():
    names = {" ".join(c) for c in _subcommands()}
    expected = {"train pose", "train warp", "benchmark geoloc", "extract", "data make-geoloc", "demo"}
    assert expected <= names and len(names) > 20


@pytest.mark.parametrize("cmd", _subcommands(), ids=lambda c: " ".join(c) or "ssfeat")
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0


def test_version(capsys):
    from ssfeat.version import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ssfeat {__version__}"


def _options(parser=None):
    """Every (parser, option action) pair of the CLI."""
    import argparse

    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _options(sub)
        elif action.option_strings:
            yield parser, action


def test_help_shows_every_meaningful_default_and_no_none_noise():
    import argparse

    seen = 0
    for parser, action in _options():
        if action.help is argparse.SUPPRESS:
            continue
        text = parser._get_formatter()._expand_help(action) if action.help else ""
        assert "default: None" not in text and "default: False" not in text, (parser.prog, action.dest)
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and not isinstance(
            action, (argparse._HelpAction, argparse._VersionAction)
        )
        if shown:
            seen += 1
            assert "default" in text, (parser.prog, action.dest, text)
    assert seen > 100
    help_text = build_parser()._subparsers._group_actions[0].choices["match"].format_help()
    assert "--max-keypoints MAX_KEYPOINTS default: 1000" in " ".join(help_text.split())


def test_a_closed_output_pipe_ends_quietly(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from ssfeat import sample_images

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssfeat",
            "data",
            "warp-pair",
            str(sample_images()[0]),
            "--out",
            str(tmp_path / "p.png"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    p.stdout.close()  # as `| head -0` does: every write to stdout fails with EPIPE
    err = p.stderr.read().decode()
    assert p.wait() == 141 and err == "", err


def test_a_pipe_closed_during_a_command_is_no_error(monkeypatch, capfd):
    from ssfeat import cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli.figures, "run_detect", closed)
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)  # keep pytest's own stdout
    assert main(["detect", "x.png", "--out", "y.png"]) == 141
    assert "Broken pipe" not in capfd.readouterr().err


# earlier flag names still accepted (hidden from --help): old -> the field-named flag
OLD_FLAGS = [
    ("train pose", "--ema 0.9", "--ema-decay 0.9"),
    ("train pose", "--init w", "--init-weights w"),
    ("train pose", "--c4", "--c4-symmetric"),
    ("train pose", "--scale-bins 9", "--n-scale-bins 9"),
    ("train pose", "--ori-scale-jitter 0.2", "--ori-log2-jitter 0.2"),
    ("train pose", "--reference-pose native", "--no-ref-random-pose"),
    ("train pose", "--time-budget 3", "--time-budget-min 3"),
    ("train detector", "--max-scale 0.4", "--max-log2-scale 0.4"),
    ("train descriptor", "--max-rotation 10", "--max-rotation-deg 10"),
    ("train warp", "--backbone w", "--backbone-weights w"),
]


@pytest.mark.parametrize(("cmd", "old", "new"), OLD_FLAGS, ids=[o.split()[0] for _, o, _ in OLD_FLAGS])
def test_old_flag_names_are_hidden_aliases(cmd, old, new):
    parse = build_parser().parse_args
    base = [*cmd.split(), "--images", "i", "--out", "o"]
    assert vars(parse(base + old.split())) == vars(parse(base + new.split()))
    assert vars(parse(base + old.split())) != vars(parse(base))


def test_export_and_make_sequences_old_flag_names():
    parse = build_parser().parse_args
    assert parse(["export", "r", "--out", "w", "--no-c4"]).c4_symmetric is False
    seqs = ["data", "make-sequences", "--images", "i", "--out", "o"]
    old = parse([*seqs, "--targets", "2", "--min-zoom", "-0.5", "--max-zoom", "0.5"])
    assert (old.n_targets, old.min_log2_zoom, old.max_log2_zoom) == (2, -0.5, 0.5)


def train(images, out, *extra: str) -> int:
    """``ssfeat train pose`` with tiny settings."""
    return main(["train", "pose", "--images", str(images), "--out", str(out), "--batch-size", "8", "--workers", "0",
                 "--no-progress", *extra])  # fmt: skip


@pytest.mark.slow
def test_train_export_benchmark_show(image_dir, oxford_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(image_dir, run, "--steps", "2") == 0
    w = tmp_path / "w.safetensors"
    assert main(["export", str(run), "--out", str(w)]) == 0 and w.is_file()
    w4 = tmp_path / "w4.safetensors"
    assert main(["export", str(run), "--out", str(w4), "--c4-symmetric"]) == 0
    assert load_pose_model(w4).config.c4_symmetric and not load_pose_model(w).config.c4_symmetric
    wa = tmp_path / "wa.safetensors"  # adaptive C4 threshold calibrated on the run's validation photos
    assert main(["export", str(run), "--out", str(wa), "--c4-below", "auto"]) == 0
    assert "chosen: c4_below" in capsys.readouterr().out and 0 < load_pose_model(wa).config.c4_below <= 1
    assert main(["export", str(run), "--out", str(wa), "--c4-below", "0.3"]) == 0
    assert load_pose_model(wa).config.c4_below == 0.3
    with pytest.raises(SystemExit):
        main(["export", str(run), "--out", str(wa), "--c4-below", "2"])
    ft = tmp_path / "finetune"
    assert train(image_dir, ft, "--steps", "1", "--init-weights", str(w), "--scale-loss", "shared") == 0
    assert (
        train(image_dir, ft / "c4", "--steps", "1", "--init-weights", str(wa), "--zoom-out-pairs", "0.5") == 0
    )  # c4_below set
    assert load_checkpoint(ft / "c4" / "last.pt")["config"]["pairs"]["zoom_out_pairs"] == 0.5
    assert train(image_dir, ft / "clean", "--steps", "1", "--no-photometric") == 0
    assert load_checkpoint(ft / "clean" / "last.pt")["config"]["pairs"]["photometric"] is False
    assert train(image_dir, ft / "native", "--steps", "1", "--no-ref-random-pose") == 0
    assert load_checkpoint(ft / "native" / "last.pt")["config"]["pairs"]["ref_random_pose"] is False
    assert load_checkpoint(ft / "clean" / "last.pt")["config"]["pairs"]["ref_random_pose"] is True
    assert train(image_dir, ft / "kd", "--steps", "1", "--distill", str(w), "--distill-weight", "0.5") == 0
    kd = load_checkpoint(ft / "kd" / "last.pt")["config"]
    assert kd["distill"] == str(w) and kd["distill_weight"] == 0.5
    assert train(image_dir, ft / "kd", "--resume", "--steps", "2") == 0  # the teacher comes from the stored config
    assert load_checkpoint(ft / "kd" / "last.pt")["step"] == 2
    assert train(image_dir, ft / "kd2", "--steps", "1", "--distill", str(tmp_path / "none.safetensors")) == 2
    assert not (ft / "kd2").exists()  # refused before the run folder is made
    # architecture mismatch: a clear error
    assert train(image_dir, ft / "x", "--steps", "1", "--init-weights", str(w), "--backbone", "small") == 2
    sep = tmp_path / "sep"  # the paper's layout: one backbone per head
    wide = ("--scale-range", "3", "--n-scale-bins", "19")  # a wider scale histogram
    assert train(image_dir, sep, "--steps", "1", "--separate-backbones", *wide, "--ori-log2-jitter", "0.5") == 0
    assert load_checkpoint(sep / "last.pt")["config"]["pairs"]["ori_log2_jitter"] == 0.5
    net = model_from_checkpoint(sep)
    assert net.scale_backbone is not None and (net.config.scale_range, net.config.n_scale_bins) == (3.0, 19)
    assert net(torch.rand(2, 1, 32, 32))[1].shape == (2, 19)
    js = tmp_path / "pp.json"
    assert (
        main(
            [
                "benchmark",
                "patchpose",
                "--images",
                str(image_dir),
                "--n-pairs",
                "40",
                "--weights",
                str(w),
                "--extra",
                f"mine={run}",
                "--scale-sampling",
                "paper",
                "--json",
                str(js),
            ]
        )
        == 0
    )
    res = json.loads(js.read_text())
    assert res["config"]["scale_sampling"] == "paper"
    clash = ["benchmark", "patchpose", "--images", str(image_dir), "--extra", "log_scale=x", "--json", str(js)]
    assert main(clash) == 2 and "is empty or taken" in capsys.readouterr().err
    assert set(res["methods"]) == {"ssfeat", "ssfeat_single", "ssfeat_c4", "mine", "kornia_gradient", "log_scale"}
    assert res["methods"]["ssfeat"]["topk_recall"]["k"] == [1, 2, 3, 4]
    assert "ori_acc@10deg" in res["methods"]["kornia_gradient"] and "scale_acc@0.333" in res["methods"]["log_scale"]
    js2 = tmp_path / "seq.json"
    assert main(["benchmark", "sequences", "--root", str(oxford_dir), "--json", str(js2), "--max-keypoints", "30"]) == 0
    res2 = json.loads(js2.read_text())
    assert "toy" in res2["per_sequence"] and res2["n_pairs"] > 10
    # the toy targets are similarities (rotation and zoom): every direction turns by their rotation
    assert res2["orientation_defined"]["all"] == {"5deg": 100.0, "10deg": 100.0}
    assert res2["orientation_defined"]["per_sequence"] == {"toy": {"5deg": 100.0, "10deg": 100.0}}
    out = capsys.readouterr().out
    assert "kornia_gradient" in out and "log_scale" in out and "orientation defined within" in out
    fig = tmp_path / "fig.png"
    assert main(["show", str(image_dir / "img0.jpg"), "--out", str(fig), "--histograms", "--n", "10"]) == 0
    assert fig.stat().st_size > 1000


@pytest.mark.slow
def test_demo_on_user_images(image_dir, tmp_path, capsys, caplog):
    photos = tmp_path / "photos"
    shutil.copytree(image_dir, photos)
    cv2.imwrite(str(photos / "000_blank.png"), np.full((300, 300), 200, np.uint8))  # sorted first
    with caplog.at_level(logging.WARNING):
        assert main(["demo", "--images", str(photos), "--out", str(tmp_path / "d"), "--n-pairs", "30"]) == 0
    out = capsys.readouterr().out
    assert "ssfeat" in out and "kornia_gradient" in out
    assert len(list((tmp_path / "d").glob("*_poses.png"))) == 4
    assert "000_blank.png" in caplog.text and not list((tmp_path / "d").glob("000_blank*"))  # no figure of it
    assert len(list((tmp_path / "d").glob("*_descriptor_matches.png"))) == 1 and "hndesc" in out
    assert len(list((tmp_path / "d").glob("*_warp.png"))) == 1 and "mean corner error" in out


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    (tmp_path / "junk.png").write_text("not an image")
    assert main(["show", str(tmp_path / "junk.png"), "--out", str(tmp_path / "f.png")]) == 2
    assert "junk.png" in capsys.readouterr().err
    assert (
        main(["train", "pose", "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    )
    assert "no such" in capsys.readouterr().err
    assert main(["benchmark", "sequences", "--root", str(tmp_path), "--json", str(tmp_path / "x.json")]) == 2
    assert "no usable sequences" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "w.safetensors")]) == 2
    # outputs that could not be written at the end of a long run are refused before it starts
    root = ["--root", str(tmp_path)]
    assert main(["benchmark", "sequences", *root, "--json", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder" in capsys.readouterr().err
    plot = str(tmp_path / "junk.png" / "p.png")
    bad_plot = ["benchmark", "matching", *root, "--json", str(tmp_path / "m.json"), "--plot", plot]
    assert main(bad_plot) == 2 and "junk.png is a file" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "junk.png")]) == 2
    assert "junk.png is a file; give the folder" in capsys.readouterr().err
    # an empty path is not taken to mean the current folder
    assert main(["extract", "--images", "", "--out", str(tmp_path / "f.h5")]) == 2
    assert "--images is an empty path" in capsys.readouterr().err
    assert main(["show", " ", "--out", str(tmp_path / "f.png")]) == 2 and "image is an empty" in capsys.readouterr().err
    # a folder where nothing can be created is refused before the run
    assert main(["benchmark", "sequences", *root, "--json", "/proc/ssfeat_test.json"]) == 2
    assert "/proc is not writable" in capsys.readouterr().err


def test_blank_and_tiny_images_are_refused_by_the_single_image_commands(tmp_path, capsys):
    blank, tiny, good = tmp_path / "blank.png", tmp_path / "tiny.png", tmp_path / "good.png"
    cv2.imwrite(str(blank), np.full((200, 200), 77, np.uint8))
    cv2.imwrite(str(tiny), textured_image(12, 12))
    cv2.imwrite(str(good), textured_image(200, 200))
    fig = str(tmp_path / "f.png")
    for cmd in (["show"], ["detect"], ["match", str(good)], ["data", "warp-pair"]):
        assert main([*cmd, str(blank), "--out", fig]) == 2
        assert "blank.png: blank image" in capsys.readouterr().err, cmd
        assert main([*cmd, str(tiny), "--out", fig]) == 2
        assert "tiny.png: 12x12 px is too small" in capsys.readouterr().err, cmd
    cv2.imwrite(str(tiny), textured_image(40, 40))  # readable but no 32 px window fits
    assert main(["show", str(tiny), "--support", "32", "--out", fig]) == 2 and "too small" in capsys.readouterr().err
    cv2.imwrite(str(tiny), textured_image(17, 17))  # above 16 px, below what the detector or 32 px windows need
    assert main(["detect", str(tiny), "--out", fig]) == 2 and "tiny.png: the 17x17 image" in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()
    # the scale-covariant pose reads no fixed window: a 17x17 image is matched (no match, not an error)
    assert main(["match", str(good), str(tiny), "--pipeline", "ssfeat_scale", "--out", fig]) == 0


def test_match_reports_a_weak_homography_as_failed(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"  # two unrelated images: any homography is chance
    cv2.imwrite(str(a), textured_image(240, 240, seed=1))
    cv2.imwrite(str(b), textured_image(240, 240, seed=2))
    fig = tmp_path / "m.png"
    assert main(["match", str(a), str(b), "--pipeline", "sift", "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "homography failed (" in out.splitlines()[0] and "H_0to1" not in out and fig.is_file()
    r = figures.match(a, b, fig, "sift")
    assert r["H_0to1"] is None and r["failure"].startswith(f"{r['inliers']} RANSAC inliers of {r['matches']} matches")
    # the same image twice: every match an inlier, the homography is printed
    assert main(["match", str(a), str(a), "--pipeline", "sift", "--min-inliers", "20", "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "failed" not in out and "H_0to1 =" in out
    assert main(["match", str(a), str(a), "--min-inliers", "3", "--out", str(fig)]) == 2
    assert "min_inliers must be >= 4" in capsys.readouterr().err


@pytest.mark.slow
def test_match_and_matching_benchmark(oxford_dir, tmp_path, capsys):
    toy = oxford_dir / "toy"
    fig = tmp_path / "m.png"
    assert (
        main(["match", str(toy / "img1.png"), str(toy / "img2.png"), "--max-keypoints", "300", "--out", str(fig)]) == 0
    )
    out = capsys.readouterr().out
    assert fig.stat().st_size > 1000 and "RANSAC inliers" in out and "H_0to1" in out
    js = tmp_path / "match.json"
    args = ["benchmark", "matching", "--root", str(oxford_dir), "--pipelines", "sift,ssfeat*", "--max-keypoints", "200"]
    assert main([*args, "--json", str(js), "--no-progress"]) == 0
    res = json.loads(js.read_text())
    assert set(res["pipelines"]) == {"sift", "ssfeat*"} and res["n_pairs"] == 2
    assert js.with_suffix(".png").is_file() and res["config"]["sift_first_octave"] == 0
    # OpenCV's own descriptors: other (close) numbers, recorded in the config
    js1 = tmp_path / "match_opencv.json"
    assert main([*args, "--sift-first-octave", "-1", "--json", str(js1), "--no-progress"]) == 0
    res1 = json.loads(js1.read_text())
    assert res1["config"]["sift_first_octave"] == -1
    assert res1["per_pair"]["sift"] != res["per_pair"]["sift"]
    assert main([*args[:-4], "--pipelines", "sift,bogus", "--json", str(js)]) == 2
    assert "unknown pipeline" in capsys.readouterr().err
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    assert main(["match", str(bad), str(toy / "img2.png"), "--out", str(fig)]) == 2


@pytest.mark.slow
def test_detector_train_export_benchmark(image_dir, oxford_dir, tmp_path, capsys):
    run, w = tmp_path / "det", tmp_path / "det.safetensors"
    args = ["train", "detector", "--images", str(image_dir), "--out", str(run), "--steps", "2", "--batch-size", "2"]
    args += ["--size", "64", "--group-order", "8", "--fields", "1,1", "--workers", "0", "--no-progress"]
    assert main(args) == 0
    assert main(["export", str(run), "--out", str(w)]) == 0
    assert main(["export", str(run), "--out", str(w), "--c4-below", "auto"]) == 2  # a pose-only option
    assert "patch-pose runs only" in capsys.readouterr().err
    js = tmp_path / "det.json"
    bench = ["benchmark", "detector", "--root", str(oxford_dir), "--pipelines", "sift,rekd,rekd*", "--weights", str(w)]
    assert main([*bench, "--max-keypoints", "100", "--json", str(js), "--no-progress"]) == 0
    res = json.loads(js.read_text())
    assert set(res["pipelines"]) == {"sift", "rekd", "rekd*"} and res["n_pairs"] == 2
    assert res["equivariance_error_rot90"]["score_abs"] < 1e-4
    r = res["pipelines"]["sift"]["all"]
    assert 0 <= r["rep_oneway"] <= 100 and len(r["ori_acc"]) == 3
    out = capsys.readouterr().out
    assert "rep_1way" in out and "equivariance" in out
    assert main([*args[:-1], "--fields", "a,b"]) == 2
    assert "--fields" in capsys.readouterr().err
    fig = tmp_path / "kp.png"
    assert main(["detect", str(oxford_dir / "toy" / "img1.png"), "--weights", str(w), "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000 and "keypoints" in capsys.readouterr().out
    # a detector run is not a patch-pose model
    assert (
        main(["show", str(oxford_dir / "toy" / "img1.png"), "--weights", str(run), "--out", str(tmp_path / "s.png")])
        == 2
    )


@pytest.mark.parametrize("task", ["pose", "scalepose", "detector", "descriptor", "warp"])
def test_every_train_task_sets_the_checkpoint_interval(task, image_dir, tmp_path, monkeypatch):
    got = []
    monkeypatch.setattr(cli_train, "fit", lambda cfg, *a, **kw: got.append(cfg) or tmp_path / "last.pt")
    args = ["train", task, "--images", str(image_dir), "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--ckpt-every", "7"]) == 0 and main(args) == 0
    assert got[0].ckpt_every == 7 and got[1].ckpt_every == type(got[1]).ckpt_every
    with pytest.raises(SystemExit):
        main([*args, "--ckpt-every", "0"])
