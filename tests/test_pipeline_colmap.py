"""ssfeat colmap: features and matches into a COLMAP database, verified by COLMAP, on real photos."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ssfeat.cli import main
from ssfeat.pipeline.colmap import ColmapConfig, import_colmap
from ssfeat.pipeline.extract import ExtractConfig, extract_folder, read_features
from ssfeat.pipeline.h5io import read_matches
from ssfeat.pipeline.match_pairs import match_pairs
from ssfeat.pipeline.pairs import make_pairs

GRAF = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford" / "graf"  # shared/ beside the clone


@pytest.fixture(scope="module")
def graf_run(tmp_path_factory):
    """Three Graffiti photos (800x640, up to 40 degrees of viewpoint change), their features and matches."""
    if not GRAF.is_dir():
        pytest.skip("the Oxford Graffiti photos are not available")
    d = tmp_path_factory.mktemp("colmap")
    images = d / "images"
    images.mkdir()
    for k in (1, 2, 3):
        shutil.copy(GRAF / f"img{k}.png", images / f"img{k}.png")
    feats, pairs, matches = d / "f.h5", d / "pairs.txt", d / "m.h5"
    extract_folder(images, feats, ExtractConfig("sift", 1000, format="hloc"), progress=False)
    make_pairs(feats, pairs)
    match_pairs(feats, pairs, matches)
    return d, images, feats, pairs, matches


def test_colmap_import_verifies_every_pair(graf_run):
    pycolmap = pytest.importorskip("pycolmap")
    d, images, feats, pairs, matches = graf_run
    db = d / "db.db"
    st = import_colmap(images, feats, matches, db, cfg=ColmapConfig())
    assert st["n_images"] == 3 and st["n_pairs"] == 3 and st["n_verified"] == 3
    assert all(v >= 100 for v in st["inliers"].values()), st["inliers"]
    with pycolmap.Database.open(db) as database:
        ids = {im.name: im.image_id for im in database.read_all_images()}
        kp = database.read_keypoints(ids["img2.png"])
        np.testing.assert_allclose(kp[:, :2], read_features(feats, "img2.png").keypoints + 0.5, atol=1e-4)
        tvg = database.read_two_view_geometry(ids["img1.png"], ids["img2.png"])
        inl = np.asarray(tvg.inlier_matches)
        raw = read_matches(matches, "img1.png", "img2.png")[0]
        assert len(inl) == st["inliers"]["img1.png img2.png"] and set(map(tuple, inl)) <= set(map(tuple, raw))
    with pytest.raises(ValueError, match="exists"):
        import_colmap(images, feats, matches, db)


def test_colmap_cli_and_missing_pycolmap(graf_run, capsys, monkeypatch):
    pytest.importorskip("pycolmap")
    d, images, feats, pairs, matches = graf_run
    argv = ["colmap", "--images", str(images), "--features", str(feats), "--matches", str(matches)]
    assert main([*argv, "--database", str(d / "cli.db"), "--pairs", str(pairs)]) == 0
    assert "3 pairs verified" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # as if it were not installed
    assert main([*argv, "--database", str(d / "none.db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "ssfeat[colmap]"' in err
    assert not (d / "none.db").exists()
