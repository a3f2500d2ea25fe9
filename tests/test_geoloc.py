"""Geolocalization datasets: file-name parsing, layout, positives, synthetic dataset builder."""

import json

import numpy as np
import pytest

from ssfeat.cli import main
from ssfeat.data.geoloc import GeolocMakeConfig, load_geoloc_split, make_geoloc_dataset, parse_utm


def test_parse_utm():
    assert parse_utm("/x/@0543256.96@4178749.25@10@S@037.75@-122.51@.jpg") == (543256.96, 4178749.25)
    for bad in ("photo.jpg", "@abc@12@.jpg", "x@1@2@.jpg", "@nan@1@.jpg", "@1@.jpg"):
        with pytest.raises(ValueError, match="malformed geolocalization file name"):
            parse_utm(bad)


def test_make_geoloc_dataset_layout_positives_and_splits(image_dir, tmp_path):
    cfg = GeolocMakeConfig(n_gallery=2, n_queries=2, size=(96, 64), splits=(0.5, 0.0, 0.5))
    meta = make_geoloc_dataset(image_dir, tmp_path / "geo", cfg)
    assert meta["synthetic"] and meta["counts"]["train"]["places"] == 3 == meta["counts"]["test"]["places"]
    assert json.loads((tmp_path / "geo" / "dataset.json").read_text())["counts"] == meta["counts"]
    test = load_geoloc_split(tmp_path / "geo", "test")
    train = load_geoloc_split(tmp_path / "geo", "train")
    assert len(test.gallery) == 6 and len(test.queries) == 6 and test.gallery_utm.shape == (6, 2)
    # a query's positives (25 m) are exactly the gallery views of its own place
    place = lambda p: p.name.split("@")[4]  # noqa: E731
    for q, pos in zip(test.queries, test.positives(25.0)):
        assert sorted(test.gallery[i].name for i in pos) == sorted(g.name for g in test.gallery if place(g) == place(q))
    assert not {place(p) for p in train.gallery} & {place(p) for p in test.gallery}  # split by photo
    d = np.linalg.norm(test.gallery_utm[:, None] - test.gallery_utm[None], axis=-1)
    assert d[d > 25].min() > 50  # other places are far away
    with pytest.raises(ValueError, match="no images"):
        load_geoloc_split(tmp_path / "geo", "val")
    with pytest.raises(ValueError, match="split must be"):
        load_geoloc_split(tmp_path / "geo", "dev")
    with pytest.raises(ValueError, match="not empty"):
        make_geoloc_dataset(image_dir, tmp_path / "geo", cfg)
    (tmp_path / "geo" / "images" / "test" / "queries" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="malformed"):
        load_geoloc_split(tmp_path / "geo", "test")


def test_make_geoloc_cli(image_dir, tmp_path, capsys):
    out = tmp_path / "g"
    args = ["data", "make-geoloc", "--images", str(image_dir), "--out", str(out), "--k", "0.8"]
    assert main(args) == 0
    assert "synthetic" in capsys.readouterr().out
    assert main(["data", "make-geoloc", "--images", str(image_dir), "--out", str(tmp_path / "h"), "--k", "2"]) == 2
    assert "--k" in capsys.readouterr().err
    bad = ["data", "make-geoloc", "--images", str(image_dir), "--out", str(tmp_path / "i"), "--splits", "0.5,0.6,0"]
    assert main(bad) == 2
    assert "splits" in capsys.readouterr().err
