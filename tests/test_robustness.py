"""Every command that reads images against one table of bad inputs.

Single-image commands (``show``, ``detect``, ``match``) must end with a one-line ``ssfeat: error:``
(exit status 2) or give the documented result; folder commands must skip the bad file with a logged
reason naming it (``extract`` records it as skipped) while the good images are processed. The bad
files are built once per module; the pixel budget is lowered (``SSFEAT_MAX_PIXELS``) so the "very
large image" stays cheap.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssfeat.cli import main
from ssfeat.pipeline.extract import done_images

from .conftest import textured_image

# input class -> (file name, works): ``works`` inputs must be read correctly, the others refused
BAD_INPUTS = {
    "zero-byte": ("zero.jpg", False),
    "truncated": ("truncated.jpg", False),
    "random-bytes": ("random.png", False),
    "folder": ("folder.jpg", False),
    "symlink-loop": ("loop.jpg", False),
    "1x1": ("one.png", False),
    "very-large": ("large.png", False),
    "16-bit": ("deep.png", True),
    "rgba": ("rgba.png", True),
    "cmyk": ("cmyk.jpg", True),
    "exif-rotated": ("exif.jpg", True),
    "non-ascii": ("fotó 写真.png", True),
}
BUDGET = 1_000_000  # pixels; the "very large" image is 1000x1100


def make_input(case: str, path: Path) -> None:
    """Write the bad input ``case`` at ``path`` (a 200x240 textured photo for the readable ones)."""
    good = textured_image(200, 240, seed=11)
    if case == "zero-byte":
        path.write_bytes(b"")
    elif case == "truncated":
        data = cv2.imencode(".jpg", good)[1].tobytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "random-bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "folder":
        path.mkdir()
    elif case == "symlink-loop":
        os.symlink(path.name, path)
    elif case == "1x1":
        cv2.imwrite(str(path), np.full((1, 1), 128, np.uint8))
    elif case == "very-large":
        cv2.imwrite(str(path), textured_image(1100, 1000, seed=4))
    elif case == "16-bit":
        cv2.imwrite(str(path), good.astype(np.uint16) * 257)
    elif case == "rgba":
        cv2.imwrite(str(path), np.dstack([cv2.cvtColor(good, cv2.COLOR_GRAY2BGR), np.full_like(good, 200)]))
    elif case in ("cmyk", "exif-rotated"):
        from PIL import Image

        im = Image.fromarray(good)
        if case == "cmyk":
            im.convert("CMYK").save(path)
        else:
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 degrees to display
            im.save(path, exif=exif)
    else:
        cv2.imwrite(str(path), good)


@pytest.fixture(autouse=True)
def _budget(monkeypatch):
    monkeypatch.setenv("SSFEAT_MAX_PIXELS", str(BUDGET))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One file per input class, in its own folder (``bad/<case>/<name>``), plus ``good.png``."""
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for case, (name, _) in BAD_INPUTS.items():
        (root / case).mkdir()
        make_input(case, root / case / name)
        out[case] = root / case / name
    cv2.imwrite(str(root / "good.png"), textured_image(200, 240, seed=12))
    out["good"] = root / "good.png"
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Per input class, a folder of three good 200x240 photos and the bad file."""
    root = tmp_path_factory.mktemp("folders")
    out = {}
    for case, (name, _) in BAD_INPUTS.items():
        d = root / case
        d.mkdir()
        for i in range(3):
            cv2.imwrite(str(d / f"good{i}.{'jpg' if i % 2 else 'png'}"), textured_image(300, 320, seed=20 + i))
        make_input(case, d / name)
        out[case] = d
    return out


@pytest.fixture(scope="module")
def sequence_roots(tmp_path_factory) -> dict[str, Path]:
    """Per input class, an Oxford-layout root: a good sequence and one whose third image is the bad file
    (named ``img3`` with the class's extension; the non-ASCII class names the sequence folder instead)."""
    base = tmp_path_factory.mktemp("seqs")
    img = textured_image(200, 240, seed=7)
    out = {}
    for case, (name, _) in BAD_INPUTS.items():
        root = base / case
        for seq in ("good", "fotó 写真" if case == "non-ascii" else "bad"):
            d = root / seq
            d.mkdir(parents=True)
            cv2.imwrite(str(d / "img1.png"), img)
            for k, angle in ((2, 15.0), (3, -25.0)):
                H = np.vstack([cv2.getRotationMatrix2D((120, 100), angle, 1.0), [0, 0, 1]])
                target = d / f"img{k}.png"
                if seq == "bad" and k == 3:
                    target = d / f"img3{Path(name).suffix}"
                    make_input(case, target)
                else:
                    cv2.imwrite(str(target), cv2.warpPerspective(img, H, (240, 200), borderMode=cv2.BORDER_REFLECT))
                fs = cv2.FileStorage(str(d / f"H1to{k}p.xml"), cv2.FILE_STORAGE_WRITE)
                fs.write(f"H1{k}", H)
                fs.release()
        out[case] = root
    return out


def check_one_line_error(rc: int, err: str, name: str) -> None:
    """A refused input: exit status 2 and one ``ssfeat: error:`` line naming the file."""
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ssfeat: error:"), err
    assert name in lines[0] and "Traceback" not in err


SINGLE = {
    "show": lambda p, good, out: ["show", str(p), "--n", "8", "--out", str(out)],
    "detect": lambda p, good, out: ["detect", str(p), "--max-keypoints", "50", "--out", str(out)],
    "match": lambda p, good, out: ["match", str(good), str(p), "--pipeline", "sift", "--out", str(out)],
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("command", list(SINGLE))
def test_single_image_commands(command, case, inputs, tmp_path, capsys):
    path = inputs[case]
    fig = tmp_path / "fig.png"
    rc = main(SINGLE[command](path, inputs["good"], fig))
    out, err = capsys.readouterr()
    if BAD_INPUTS[case][1]:
        assert rc == 0 and fig.is_file() and "Traceback" not in err, err
    else:
        check_one_line_error(rc, err, path.name)
        assert not fig.exists()


def test_images_read_as_documented(inputs):
    """16-bit keeps its depth (scaled to [0, 1]), alpha and CMYK read as gray, EXIF orientation is applied."""
    from ssfeat.data.images import read_image

    good = read_image(inputs["non-ascii"])
    assert good.shape == (200, 240)
    assert np.abs(read_image(inputs["16-bit"]) - good).max() < 1e-3
    assert np.abs(read_image(inputs["rgba"]) - good).max() < 2 / 255
    assert np.abs(read_image(inputs["cmyk"]) - good).mean() < 4 / 255  # JPEG loss
    rotated = read_image(inputs["exif-rotated"])
    assert rotated.shape == (240, 200)  # shown upright, as a viewer shows it: turned 90 degrees clockwise
    assert np.abs(rotated - np.rot90(good, -1)).mean() < 4 / 255


def check_folder_result(case: str, folder: Path, rc: int, log: str) -> None:
    """A folder command ran on the good photos; a refused file is named in the log with its reason."""
    assert rc == 0, log
    assert "Traceback" not in log
    name, works = BAD_INPUTS[case]
    if not works and case != "folder":  # a folder named like an image is searched like any folder
        assert name in log, log


def cases(fast=("zero-byte", "cmyk"), heavy=False):
    """The input classes as parameters, all but ``fast`` marked slow."""
    for case in BAD_INPUTS:
        marks = []
        if heavy or case not in fast:
            marks.append(pytest.mark.slow)
        yield pytest.param(case, marks=marks, id=case)


@pytest.mark.parametrize("case", list(cases(fast=tuple(BAD_INPUTS))))
def test_extract_skips_and_records_bad_files(case, folders, tmp_path, caplog, capsys):
    caplog.set_level(logging.WARNING)
    out = tmp_path / "f.h5"
    argv = ["extract", "--images", str(folders[case]), "--out", str(out), "--pipeline", "sift", "--max-keypoints", "64"]
    rc = main(argv)
    err = capsys.readouterr().err
    check_folder_result(case, folders[case], rc, caplog.text + err)
    keys, skipped = done_images(out)
    name, works = BAD_INPUTS[case]
    assert {"good0.png", "good1.jpg", "good2.png"} <= keys
    if works:
        assert name in keys and not skipped
    elif case == "folder":
        assert not skipped and name not in keys
    else:
        assert [k for k, _ in skipped] == [name] and name not in keys


def tiny_train(task: str, folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        task,
        "--images",
        str(folder),
        "--out",
        str(out),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--val-every",
        "1",
        *extra,
    ]


FOLDER = {
    "train pose": lambda f, o: tiny_train("pose", f, o),
    "train scalepose": lambda f, o: tiny_train("scalepose", f, o),
    "train detector": lambda f, o: tiny_train("detector", f, o, "--size", "64"),
    "train descriptor": lambda f, o: tiny_train("descriptor", f, o, "--size", "64", "--keypoints", "random"),
    "train warp": lambda f, o: tiny_train("warp", f, o, "--size", "64"),
    "benchmark patchpose": lambda f, o: [
        "benchmark",
        "patchpose",
        "--images",
        str(f),
        "--n-pairs",
        "8",
        "--json",
        str(o / "r.json"),
    ],
    "benchmark keypoints": lambda f, o: [
        "benchmark",
        "keypoints",
        "--images",
        str(f),
        "--limit",
        "8",
        "--max-keypoints",
        "64",
        "--json",
        str(o / "r.json"),
        "--no-progress",
    ],
    "benchmark warp": lambda f, o: [
        "benchmark",
        "warp",
        "--images",
        str(f),
        "--pairs",
        "4",
        "--json",
        str(o / "r.json"),
        "--no-progress",
    ],
    "data make-sequences": lambda f, o: [
        "data",
        "make-sequences",
        "--images",
        str(f),
        "--out",
        str(o / "s"),
        "--n-targets",
        "1",
    ],
    "data make-geoloc": lambda f, o: [
        "data",
        "make-geoloc",
        "--images",
        str(f),
        "--out",
        str(o / "g"),
        "--n-gallery",
        "2",
        "--n-queries",
        "1",
        "--k",
        "1",
    ],
}
HEAVY = {"train pose", "train scalepose", "train detector", "train descriptor", "train warp", "benchmark warp"}


def command_cases(commands, fast_commands, fast=("zero-byte", "cmyk")):
    """``(command, case)`` parameters, all but the ``fast`` cases of ``fast_commands`` marked slow."""
    for command in commands:
        for case in BAD_INPUTS:
            marks = [] if command in fast_commands and case in fast else [pytest.mark.slow]
            yield pytest.param(command, case, marks=marks, id=f"{command}-{case}")


def run_logged(argv: list[str], caplog, capsys) -> tuple[int, str]:
    """Run the command line ``argv``: its exit code, and its warnings and printed output together."""
    caplog.set_level(logging.WARNING)
    rc = main(argv)
    printed = capsys.readouterr()
    return rc, caplog.text + printed.out + printed.err


@pytest.mark.parametrize(("command", "case"), list(command_cases(FOLDER, set(FOLDER) - HEAVY)))
def test_folder_commands_skip_bad_files(command, case, folders, tmp_path, caplog, capsys):
    out = tmp_path / "o"
    out.mkdir()
    rc, log = run_logged(FOLDER[command](folders[case], out), caplog, capsys)
    check_folder_result(case, folders[case], rc, log)


SEQUENCE = {
    "benchmark sequences": lambda r, o: [
        "benchmark",
        "sequences",
        "--root",
        str(r),
        "--max-keypoints",
        "64",
        "--json",
        str(o / "r.json"),
    ],
    "benchmark matching": lambda r, o: [
        "benchmark",
        "matching",
        "--root",
        str(r),
        "--pipelines",
        "sift",
        "--max-keypoints",
        "200",
        "--json",
        str(o / "r.json"),
        "--no-progress",
    ],
    "benchmark detector": lambda r, o: [
        "benchmark",
        "detector",
        "--root",
        str(r),
        "--pipelines",
        "sift",
        "--max-keypoints",
        "200",
        "--json",
        str(o / "r.json"),
        "--no-progress",
    ],
    "benchmark keypoints": lambda r, o: [
        "benchmark",
        "keypoints",
        "--root",
        str(r),
        "--max-keypoints",
        "64",
        "--json",
        str(o / "r.json"),
        "--no-progress",
    ],
}


@pytest.mark.parametrize(("command", "case"), list(command_cases(SEQUENCE, {"benchmark matching"})))
def test_sequence_benchmarks_skip_bad_images(command, case, sequence_roots, tmp_path, caplog, capsys):
    out = tmp_path / "o"
    out.mkdir()
    rc, log = run_logged(SEQUENCE[command](sequence_roots[case], out), caplog, capsys)
    assert rc == 0 and "Traceback" not in log, log
    name, works = BAD_INPUTS[case]
    if not works and case != "folder":
        assert f"img3{Path(name).suffix}" in log, log


def test_nothing_usable_left_is_a_clear_error(inputs, tmp_path, capsys):
    """A folder holding only bad files: a one-line error, not an empty result."""
    d = tmp_path / "only bad"
    d.mkdir()
    for case in ("zero-byte", "truncated", "1x1"):
        shutil.copy(inputs[case], d / BAD_INPUTS[case][0])
    rc = main(tiny_train("pose", d, tmp_path / "run"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ssfeat: error:") and len(err.strip().splitlines()) == 1, err
    rc = main(["benchmark", "patchpose", "--images", str(d), "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("ssfeat: error:") and len(err.strip().splitlines()) == 1, err
