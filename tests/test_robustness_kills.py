"""Killing ``extract`` and ``train`` at random moments (SIGKILL, seeded) and resuming loses nothing,
duplicates nothing and leaves no temporary file behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from .conftest import textured_image

KILLS = 20
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def timed(argv: list[str]) -> float:
    """Seconds an uninterrupted run of ``argv`` takes (it must succeed)."""
    t0 = time.monotonic()
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - t0


def run_killed(argv: list[str], full: float, seed: int, kills: int = KILLS) -> list[float]:
    """Run ``argv`` ``kills`` times, each killed (SIGKILL) after a random delay up to ``full`` (the
    length of an uninterrupted run), then once to the end. Returns the kill delays (s)."""
    rng = random.Random(seed)
    delays = []
    for _ in range(kills):
        delay = rng.uniform(0.0, full)
        p = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
        delays.append(delay)
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return delays


def h5_contents(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by name (the ``skipped`` table and attributes aside)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def write_photos(folder: Path, n: int, shape: tuple[int, int], seed: int) -> Path:
    """``folder`` with ``n`` textured photos of ``shape`` ``(H, W)``, ``p00.png``, ``p01.png``, ..."""
    folder.mkdir()
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), textured_image(*shape, seed=seed + i))
    return folder


def temp_files(folder: Path) -> list[Path]:
    """Temporary files left below ``folder`` (``.NAME.PID.RANDOM.tmp``, or ``.NAME.tmpPID`` of earlier versions)."""
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_extract_survives_random_kills(tmp_path):
    photos = write_photos(tmp_path / "photos", 12, (240, 320), seed=40)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff")  # recorded as skipped, once
    argv = [sys.executable, "-m", "ssfeat", "extract", "--images", str(photos), "--pipeline", "sift",
            "--max-keypoints", "200", "--part-size", "1"]  # fmt: skip
    reference, resumed = tmp_path / "ref" / "f.h5", tmp_path / "killed" / "f.h5"
    full = timed([*argv, "--out", str(reference)])
    delays = run_killed([*argv, "--out", str(resumed)], full, seed=1)
    assert len(delays) == KILLS
    ref, got = h5_contents(reference), h5_contents(resumed)
    assert sorted(ref) == sorted(got)
    for name in ref:
        np.testing.assert_array_equal(ref[name], got[name], err_msg=name)
    assert not temp_files(resumed.parent) and not resumed.with_name("f.h5.parts").exists()


TRAIN = """
import sys
from ssfeat.data.synthesis import PairConfig
from ssfeat.training import PoseTrainConfig, fit
cfg = PoseTrainConfig(images=sys.argv[1], steps=12, batch_size=4, val_pairs=8, val_every=3, ckpt_every=1,
                      warmup_steps=2, workers=0, pairs=PairConfig(n_sift=10, n_harris=10, n_random=10))
fit(cfg, sys.argv[2], resume=True, progress=False)
"""


def log_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_training_survives_random_kills(tmp_path):
    """A checkpoint every step, so many kills land in a checkpoint write."""
    import torch

    photos = write_photos(tmp_path / "photos", 6, (300, 300), seed=60)
    argv = [sys.executable, "-c", TRAIN, str(photos)]
    reference, resumed = tmp_path / "ref", tmp_path / "killed"
    full = timed([*argv, str(reference)])
    delays = run_killed([*argv, str(resumed)], full, seed=2)
    assert len(delays) == KILLS
    for run in (reference, resumed):
        assert torch.load(run / "last.pt", weights_only=False)["step"] == 12
    steps = log_steps(resumed)
    assert steps == sorted(set(steps)) == log_steps(reference)  # no step lost, none twice
    assert not temp_files(resumed)
