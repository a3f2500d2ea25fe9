"""hloc's file layouts: features (``extract --format hloc``), pairs (``pairs``) and matches
(``match-pairs``), read exactly as hloc's own functions read them.

The readers below follow hloc's ``utils/io.py`` (``list_h5_names``, ``get_matches``, ``find_pair``),
``utils/parsers.py`` (``names_to_pair``), ``match_features.py`` (``FeaturePairsDataset``) and its
``nearest_neighbor`` matcher (NN-mutual); they are written here, hloc is not a dependency.
"""

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from ssfeat.cli import main
from ssfeat.files import OutputLock, OutputLockedError
from ssfeat.pipeline import match_pairs as mp
from ssfeat.pipeline import matching_stages
from ssfeat.pipeline.extract import ExtractConfig, extract_folder, read_features
from ssfeat.pipeline.h5io import names_to_pair, read_pairs
from ssfeat.pipeline.match_pairs import MatchPairsConfig, match_pairs
from ssfeat.pipeline.pairs import PairsConfig, make_pairs

# --- hloc's readers, re-written ------------------------------------------------------------------


def hloc_list_h5_names(path):
    names = []
    with h5py.File(str(path), "r", libver="latest") as fd:

        def visit_fn(_, obj):
            if isinstance(obj, h5py.Dataset):
                names.append(obj.parent.name.strip("/"))

        fd.visititems(visit_fn)
    return list(set(names))


def hloc_pair_data(path, name0, name1):
    """``FeaturePairsDataset.__getitem__`` with the batch dimension the DataLoader adds."""
    data = {}
    with h5py.File(path, "r") as fd:
        for i, name in enumerate((name0, name1)):
            grp = fd[name]
            for k, v in grp.items():
                data[f"{k}{i}"] = torch.from_numpy(v.__array__()).float()[None]
            data[f"image{i}"] = torch.empty((1,) + tuple(grp["image_size"])[::-1])[None]
    return data


def hloc_nn_mutual(data):
    """hloc's ``NearestNeighbor`` with ``do_mutual_check`` and no thresholds: ``matches0`` (1, N0)."""
    sim = torch.einsum("bdn,bdm->bnm", data["descriptors0"], data["descriptors1"])
    m0 = sim.topk(1, dim=-1).indices[..., 0]
    m1 = sim.transpose(1, 2).topk(1, dim=-1).indices[..., 0]
    loop = torch.gather(m1, -1, m0)
    return torch.where(torch.arange(m0.shape[-1]) == loop, m0, m0.new_tensor(-1))


def hloc_names_to_pair(name0, name1, separator="/"):
    return separator.join((name0.replace("/", "-"), name1.replace("/", "-")))


def hloc_get_matches(path, name0, name1):
    with h5py.File(str(path), "r", libver="latest") as hfile:
        for a, b, rev in ((name0, name1, False), (name1, name0, True)):
            if hloc_names_to_pair(a, b) in hfile:
                pair, reverse = hloc_names_to_pair(a, b), rev
                break
        else:
            raise ValueError(f"Could not find pair {(name0, name1)}")
        matches = hfile[pair]["matches0"].__array__()
        scores = hfile[pair]["matching_scores0"].__array__()
    idx = np.where(matches != -1)[0]
    matches = np.stack([idx, matches[idx]], -1)
    if reverse:
        matches = np.flip(matches, -1)
    return matches, scores[idx]


# --- fixtures --------------------------------------------------------------------------------------


def _homographies(seq: Path) -> dict[str, np.ndarray]:
    out = {"img1.png": np.eye(3)}
    for k in (2, 3):
        fs = cv2.FileStorage(str(seq / f"H1to{k}p.xml"), cv2.FILE_STORAGE_READ)
        out[f"img{k}.png"] = fs.getFirstTopLevelNode().mat()
        fs.release()
    return out


def _correct(kp0, kp1, H0, H1, m, tol=3.0):
    """Share of matches ``m`` (M, 2) that the homographies map within ``tol`` px."""
    H = H1 @ np.linalg.inv(H0)  # view 0 -> view 1 through the reference image
    p = np.c_[kp0[m[:, 0]], np.ones(len(m))] @ H.T
    return float((np.linalg.norm(p[:, :2] / p[:, 2:] - kp1[m[:, 1]], axis=1) < tol).mean())


@pytest.fixture(scope="module")
def hloc_features(oxford_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hloc") / "feats.h5"
    extract_folder(oxford_dir / "toy", out, ExtractConfig("sift", 300, part_size=2, format="hloc"), progress=False)
    return out


# --- tests -------------------------------------------------------------------------------------------


def test_hloc_feature_file_is_read_and_matched_as_hloc_does(hloc_features, oxford_dir):
    names = sorted(hloc_list_h5_names(hloc_features))
    assert names == ["img1.png", "img2.png", "img3.png"]  # no other names (the skipped list is an attribute)
    H = _homographies(oxford_dir / "toy")
    for n0, n1 in [("img1.png", "img2.png"), ("img1.png", "img3.png"), ("img2.png", "img3.png")]:
        data = hloc_pair_data(hloc_features, n0, n1)
        assert data["image0"].shape == (1, 1, 240, 320)  # image_size (W, H) read back as (H, W)
        assert data["descriptors0"].shape[1] == 128 and data["keypoints0"].shape[-1] == 2
        assert data["oris0"].shape == data["scales0"].shape == data["scores0"].shape
        m0 = hloc_nn_mutual(data)[0].numpy()
        m = np.stack([np.flatnonzero(m0 >= 0), m0[m0 >= 0]], -1)
        assert len(m) > 40
        assert _correct(data["keypoints0"][0].numpy(), data["keypoints1"][0].numpy(), H[n0], H[n1], m) > 0.6
    # the hloc file holds what the ssfeat layout holds, in hloc's units
    f = read_features(hloc_features, "img2.png")
    assert f.image_size == (240, 320) and f.descriptors.shape == (len(f), 128)


def test_resuming_an_hloc_extraction_needs_the_same_format(hloc_features, oxford_dir):
    with pytest.raises(ValueError, match="format='hloc' \\(now 'ssfeat'\\)"):
        extract_folder(oxford_dir / "toy", hloc_features, ExtractConfig("sift", 300, part_size=2), progress=False)


def test_pairs_exhaustive_and_retrieval(hloc_features, oxford_dir, tmp_path):
    pairs = make_pairs(hloc_features, tmp_path / "p.txt")
    expected = [("img1.png", "img2.png"), ("img1.png", "img3.png"), ("img2.png", "img3.png")]
    assert pairs == read_pairs(tmp_path / "p.txt") == expected
    top1 = make_pairs(hloc_features, tmp_path / "r.txt", PairsConfig(retrieval=1), images=oxford_dir / "toy")
    assert 2 <= len(top1) <= 3 and all(a != b for a, b in top1)
    assert {n for p in top1 for n in p} == {"img1.png", "img2.png", "img3.png"}  # every image paired
    reranked = make_pairs(hloc_features, tmp_path / "w.txt", PairsConfig(2, 2), images=oxford_dir / "toy")
    assert sorted(map(sorted, reranked)) == sorted(map(sorted, expected))
    with pytest.raises(ValueError, match="give their folder"):
        make_pairs(hloc_features, tmp_path / "x.txt", PairsConfig(retrieval=1))
    with pytest.raises(ValueError, match="retrieval > 0"):
        PairsConfig(rerank=2)


def test_pairs_file_names_and_errors(tmp_path):
    assert names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg" == hloc_names_to_pair("a/b.jpg", "c.jpg")
    (tmp_path / "bad.txt").write_text("# comment\na.jpg b.jpg\n\na.jpg\n")
    with pytest.raises(ValueError, match="bad.txt:4: expected 'name0 name1'"):
        read_pairs(tmp_path / "bad.txt")


def test_match_pairs_writes_hloc_matches_and_resumes_after_a_kill(hloc_features, oxford_dir, tmp_path, monkeypatch):
    pairs = tmp_path / "p.txt"
    # both orders and a repeat: each pair is matched once
    pairs.write_text("img1.png img2.png\nimg2.png img1.png\nimg1.png img3.png\nimg3.png img2.png\n")
    out = tmp_path / "m.h5"
    real, calls = mp._match_one, []

    def dies_on_the_second_pair(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a)

    cfg = MatchPairsConfig(orientation_filter=True, part_size=1)
    monkeypatch.setattr(mp, "_match_one", dies_on_the_second_pair)
    with pytest.raises(KeyboardInterrupt):
        match_pairs(hloc_features, pairs, out, cfg)
    assert not out.exists() and len(list((tmp_path / "m.h5.parts").glob("part-*.h5"))) == 1
    monkeypatch.setattr(mp, "_match_one", real)
    st = match_pairs(hloc_features, pairs, out, cfg)
    assert st["n_pairs"] == 3 and st["n_new"] == 2 and not (tmp_path / "m.h5.parts").exists()
    assert match_pairs(hloc_features, pairs, out, cfg)["n_new"] == 0  # all done
    # read as hloc reads it, in either order; equal to the pipeline's own matcher and filter
    matcher, filters = matching_stages("sift*")
    H = _homographies(oxford_dir / "toy")
    for n0, n1 in [("img1.png", "img2.png"), ("img1.png", "img3.png"), ("img2.png", "img3.png")]:
        m, scores = hloc_get_matches(out, n0, n1)
        f0, f1 = read_features(hloc_features, n0), read_features(hloc_features, n1)
        ref = matcher(f0, f1)
        for flt in filters:
            ref = flt(f0, f1, ref)
        assert sorted(map(tuple, m.tolist())) == sorted(map(tuple, ref.idx.tolist()))
        assert len(m) > 40 and ((scores > 0) & (scores <= 1)).all()
        assert _correct(f0.keypoints, f1.keypoints, H[n0], H[n1], m) > 0.8
        assert hloc_get_matches(out, n1, n0)[0].tolist() == m[:, ::-1].tolist()
    with pytest.raises(ValueError, match="orientation_filter=True \\(now False\\)"):
        match_pairs(hloc_features, pairs, out, MatchPairsConfig())


def test_match_pairs_refuses_unknown_images(hloc_features, tmp_path):
    (tmp_path / "p.txt").write_text("img1.png nope.png\n")
    with pytest.raises(ValueError, match="without features .* 'nope.png'"):
        match_pairs(hloc_features, tmp_path / "p.txt", tmp_path / "m.h5")


def test_extract_pairs_match_pairs_cli(oxford_dir, tmp_path, capsys):
    f, p, m = tmp_path / "f.h5", tmp_path / "p.txt", tmp_path / "m.h5"
    common = ["--no-progress"]
    argv = ["extract", "--images", str(oxford_dir / "toy"), "--out", str(f), "--pipeline", "sift", "--format", "hloc"]
    assert main([*argv, "--max-keypoints", "200", *common]) == 0
    assert main(["pairs", "--features", str(f), "--out", str(p), *common]) == 0
    assert main(["match-pairs", "--features", str(f), "--pairs", str(p), "--out", str(m), "--ransac", *common]) == 0
    out = capsys.readouterr().out
    assert "3 pairs (exhaustive)" in out and "3 pairs in" in out
    assert all(len(hloc_get_matches(m, a, b)[0]) > 20 for a, b in read_pairs(p))
    assert main(["pairs", "--features", str(tmp_path / "none.h5"), "--out", str(p)]) == 2
    assert "ssfeat: error:" in capsys.readouterr().err


def test_a_second_match_pairs_on_one_output_stops(hloc_features, tmp_path):
    pairs, out = tmp_path / "p.txt", tmp_path / "m.h5"
    pairs.write_text("img1.png img2.png\n")
    with OutputLock(out), pytest.raises(OutputLockedError, match="another ssfeat process is writing"):
        match_pairs(hloc_features, pairs, out)
    assert not out.exists()
    assert match_pairs(hloc_features, pairs, out)["n_new"] == 1
