"""Shared fixtures: small synthetic photos written to tmp folders (no external data needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch


def usage_error(main, argv: list[str], capsys) -> str:
    """Run the CLI ``main(argv)``, check that argparse refuses the arguments (exit code 2) and
    return its message."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def textured_image(h: int = 300, w: int = 300, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 gray image: multi-scale smooth noise plus random shapes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for s in (4, 8, 16, 32):
        n = rng.standard_normal((h // s + 2, w // s + 2)).astype(np.float32)
        img += cv2.resize(n, (w, h), interpolation=cv2.INTER_CUBIC) * s**0.5
    img = (img - img.min()) / (img.max() - img.min()) * 200 + 20
    for _ in range(25):
        c = tuple(int(v) for v in rng.integers(0, [w, h]))
        color = int(rng.integers(0, 255))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(4, 30)), color, -1)
        else:
            d = rng.integers(5, 40, 2)
            cv2.rectangle(img, c, (c[0] + int(d[0]), c[1] + int(d[1])), color, -1)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """A folder of 6 textured 300x300 images (jpg and png, one in a sub-folder)."""
    d = tmp_path_factory.mktemp("images")
    (d / "sub").mkdir()
    for i in range(6):
        path = d / ("sub" if i == 5 else ".") / f"img{i}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(path), textured_image(300, 300, seed=i))
    return d


@pytest.fixture(scope="session")
def oxford_dir(tmp_path_factory):
    """A tiny Oxford-layout sequence (img1..3.png + H1to{k}p.xml) made by warping a textured image."""
    d = tmp_path_factory.mktemp("oxford") / "toy"
    d.mkdir()
    img = textured_image(240, 320, seed=7)
    cv2.imwrite(str(d / "img1.png"), img)
    for k, (angle, scale) in enumerate([(20.0, 1.0), (-35.0, 1.3)], start=2):
        M = cv2.getRotationMatrix2D((160, 120), angle, scale)
        H = np.vstack([M, [0, 0, 1]])
        cv2.imwrite(str(d / f"img{k}.png"), cv2.warpPerspective(img, H, (320, 240), borderMode=cv2.BORDER_REFLECT))
        fs = cv2.FileStorage(str(d / f"H1to{k}p.xml"), cv2.FILE_STORAGE_WRITE)
        fs.write(f"H1{k}", H)
        fs.release()
    return d.parent


def run_torchrun(args: list[str], nproc: int = 2, script: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc -m ssfeat ARGS`` (or ``torchrun ... SCRIPT ARGS``)
    on CPU (gloo, one thread per process; ``--standalone`` lets the rendezvous pick a free port itself,
    so parallel runs cannot race for one); fails the test with the tail of stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    target = [str(script)] if script is not None else ["-m", "ssfeat"]
    r = subprocess.run([*cmd, *target, *args], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="session")
def geo_dir(image_dir, tmp_path_factory):
    """A tiny synthetic geolocalization dataset (3 train and 3 test places, 96x64 views)."""
    from ssfeat.data.geoloc import GeolocMakeConfig, make_geoloc_dataset

    root = tmp_path_factory.mktemp("geo") / "geo"
    make_geoloc_dataset(image_dir, root, GeolocMakeConfig(size=(96, 64), splits=(0.5, 0.0, 0.5)))
    return root


@pytest.fixture(scope="session")
def warp_run(image_dir, tmp_path_factory):
    """A warping regressor (64 px views) trained for 4 steps: a run folder."""
    from ssfeat.data.warp_pairs import WarpPairConfig
    from ssfeat.models.warp import WarpConfig
    from ssfeat.training import WarpTrainConfig, fit

    run = tmp_path_factory.mktemp("warp") / "run"
    cfg = WarpTrainConfig(
        images=str(image_dir),
        steps=4,
        batch_size=4,
        val_pairs=8,
        val_every=2,
        ckpt_every=2,
        warmup_steps=2,
        workers=0,
        model=WarpConfig(size=64),
        pairs=WarpPairConfig(size=64),
    )
    fit(cfg, run, progress=False)
    return run
