"""Geolocalization datasets: file-name parsing, layout, positives, synthetic dataset builder."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from ssfeat.cli import main
from ssfeat.data.geoloc import GeolocMakeConfig, load_geoloc_split, make_geoloc_dataset, parse_utm
from ssfeat.models.weights import load_warp_model

from .conftest import textured_image, usage_error


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


def test_tiny_photos_are_upsampled_with_a_warning(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "big.png"), textured_image(200, 300))
    cv2.imwrite(str(src / "tiny.png"), textured_image(20, 30))
    cv2.imwrite(str(src / "blank.png"), np.full((200, 300), 90, np.uint8))
    cv2.imwrite(str(src / "speck.png"), textured_image(10, 10))
    with caplog.at_level(logging.WARNING):
        meta = make_geoloc_dataset(src, tmp_path / "geo", GeolocMakeConfig(size=(96, 64)))
    assert "1 photos are smaller than half the 96x64 views" in caplog.text and "tiny.png" in caplog.text
    assert "big.png" not in caplog.text
    # blank photos and photos under 16 px are no places: skipped, named, listed
    assert any("blank.png: blank image" in s for s in meta["skipped"])
    assert any("speck.png: 10x10 px is too small" in s for s in meta["skipped"])
    assert "blank.png" in caplog.text and "speck.png" in caplog.text
    assert sum(c["places"] for c in meta["counts"].values()) == 2


def test_make_geoloc_cli(image_dir, tmp_path, capsys):
    out = tmp_path / "g"
    args = ["data", "make-geoloc", "--images", str(image_dir), "--out", str(out), "--k", "0.8"]
    assert main(args) == 0
    assert "synthetic" in capsys.readouterr().out
    bad_k = ["data", "make-geoloc", "--images", str(image_dir), "--out", str(tmp_path / "h"), "--k", "2"]
    assert "argument --k: must lie in [0, 1], got 2" in usage_error(main, bad_k, capsys)
    bad = ["data", "make-geoloc", "--images", str(image_dir), "--out", str(tmp_path / "i"), "--splits", "0.5,0.6,0"]
    assert main(bad) == 2
    assert "splits" in capsys.readouterr().err


def test_gem_retrieve_and_recall():
    import torch

    from ssfeat.inference.retrieval import gem, recall_at, retrieve

    x = torch.rand(2, 3, 4, 5)
    assert torch.allclose(gem(x, p=1.0), x.mean((-2, -1)), atol=1e-6)
    assert torch.allclose(gem(torch.full((1, 2, 3, 3), 0.5)), torch.full((1, 2), 0.5))
    assert (gem(x, p=8.0) <= x.amax((-2, -1)) + 1e-6).all() and (gem(x, p=8.0) >= gem(x, p=1.0)).all()
    db = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    q = torch.nn.functional.normalize(db[[3, 7]] + 0.05 * torch.randn(2, 8), dim=1)
    idx, sim = retrieve(db, q, 5)
    assert idx.shape == (2, 5) and list(idx[:, 0]) == [3, 7] and (np.diff(sim, axis=1) <= 1e-6).all()
    assert retrieve(db, q, 100)[0].shape == (2, 30)
    preds = np.array([[3, 1, 2], [5, 7, 0]])
    r = recall_at(preds, [np.array([3]), np.array([7])], ns=(1, 2))
    assert r == {"R@1": 50.0, "R@2": 100.0}
    assert recall_at(preds, [np.array([], np.int64), np.array([9])], ns=(1,)) == {"R@1": 0.0}


def test_global_descriptor_names_a_too_small_file(tmp_path):
    from ssfeat.inference.retrieval import GlobalDescriptor

    ok, tiny = tmp_path / "ok.png", tmp_path / "tiny.png"
    cv2.imwrite(str(ok), (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    cv2.imwrite(str(tiny), np.full((5, 30), 90, np.uint8))
    desc = GlobalDescriptor()
    assert desc.describe_paths([ok]).shape[0] == 1
    with pytest.raises(ValueError, match=r"tiny\.png: the 30x5 image is too small"):
        desc.describe_paths([ok, tiny])


@pytest.fixture(scope="module")
def big_geo_dir(tmp_path_factory):
    """30 test places of 1 gallery view and 1 query each (k = 0.8): GeM retrieval with the bundled
    descriptor is far from perfect here (measured R@1 37, R@5 67, R@10 77, R@20 90)."""
    d = tmp_path_factory.mktemp("big_geo")
    (d / "photos").mkdir()
    for i in range(30):
        cv2.imwrite(str(d / "photos" / f"p{i:02d}.png"), textured_image(120, 160, seed=100 + i))
    cfg = GeolocMakeConfig(n_gallery=1, n_queries=1, size=(96, 64), k=0.8, splits=(0.0, 0.0, 1.0))
    make_geoloc_dataset(d / "photos", d / "geo", cfg)
    return d / "geo"


def _place(name: str) -> str:
    return name.split("@")[4]  # the synthetic datasets' positives are exactly the views of the same place


def _run_geoloc_cli(root, tmp_path, *extra: str) -> dict:
    js = tmp_path / "g.json"
    assert main(["benchmark", "geoloc", "--root", str(root), "--json", str(js), "--no-progress", *extra]) == 0
    return json.loads(js.read_text())


def _check_reranking_permutes_the_first(res: dict, n: int) -> None:
    """Re-ranking the first ``n`` (< 5) candidates keeps them (as a set) and the rest of the list, so
    recall@5 and beyond equal the plain list's; recall@1 is consistent with the predictions."""
    names = list(res["methods"])
    assert names[1:] == [f"+ re-rank top-{n}, warped (GeoWarp)", f"+ re-rank top-{n}, no warp (ablation)"]
    plain = res["methods"][names[0]]
    for name in names:
        r = res["methods"][name]
        assert all(isinstance(r[k], float) for k in ("R@1", "R@5", "R@10", "R@20"))
        assert 0.0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= r["R@20"] <= 100.0
        assert (r["R@5"], r["R@10"], r["R@20"]) == (plain["R@5"], plain["R@10"], plain["R@20"]), name
        first = [_place(p[name][0]) == _place(p["query"]) for p in res["predictions"]]
        assert r["R@1"] == pytest.approx(100.0 * np.mean(first), abs=0.01), name
    for p in res["predictions"]:
        ref = p[names[0]]
        assert len(ref) == 5
        for name in names[1:]:
            assert sorted(p[name][:n]) == sorted(ref[:n]) and p[name][n:] == ref[n:], (p["query"], name)


@pytest.mark.slow
def test_geoloc_benchmark_cli_with_and_without_reranking(big_geo_dir, geo_dir, warp_run, tmp_path, capsys):
    res = _run_geoloc_cli(big_geo_dir, tmp_path, "--warp-weights", str(warp_run), "--rerank-n", "3")
    assert res["flips"] is False and res["rerank_n"] == 3
    assert res["n_gallery"] == res["n_queries"] == 30 and res["queries_without_positive"] == 0
    plain = res["methods"]["retrieval (GeM, ssfeat descriptor)"]
    assert plain["R@1"] < plain["R@5"] < 100.0  # not trivially 100 at the k compared below
    _check_reranking_permutes_the_first(res, 3)
    for name in list(res["methods"])[1:]:  # re-ranking does re-order some lists
        assert any(p[name][:3] != p[list(res["methods"])[0]][:3] for p in res["predictions"]), name
    assert "R@1" in capsys.readouterr().out
    # flip-averaged regressor, on the small dataset (4x the cost)
    res = _run_geoloc_cli(geo_dir, tmp_path, "--warp-weights", str(warp_run), "--rerank-n", "2", "--flips")
    assert res["flips"] is True and res["n_queries"] == 3 and res["queries_without_positive"] == 0
    _check_reranking_permutes_the_first(res, 2)
    js = tmp_path / "g.json"
    args = ["benchmark", "geoloc", "--root", str(geo_dir), "--json", str(js), "--no-progress"]
    assert main([*args, "--no-rerank"]) == 0
    assert list(json.loads(js.read_text())["methods"]) == ["retrieval (GeM, ssfeat descriptor)"]
    assert main(["benchmark", "geoloc", "--root", str(tmp_path / "nope"), "--json", str(js)]) == 2


@pytest.mark.slow
def test_reranking_with_a_perfect_similarity_puts_a_positive_first(big_geo_dir, warp_run, tmp_path, monkeypatch):
    """A stub score (minus the distance between the two images' UTM positions) is a perfect
    similarity: re-ranking the top 5 with it puts a positive first whenever one is among them, so
    recall@1 after re-ranking equals recall@5 before."""
    import ssfeat.inference.retrieval as retrieval

    def utm_image(path, size):  # the positions stand in for the image content
        x = torch.zeros(1, size, size)
        x[0, 0, :2] = torch.tensor(parse_utm(path)) - torch.tensor([500000.0, 4000000.0])
        return x

    def utm_scores(self, query, candidates):
        return -(candidates[:, 0, 0, :2] - query[0, 0, :2]).norm(dim=1)

    monkeypatch.setattr(retrieval, "load_resized", utm_image)
    monkeypatch.setattr(retrieval.WarpReranker, "scores", utm_scores)
    res = _run_geoloc_cli(big_geo_dir, tmp_path, "--warp-weights", str(warp_run), "--rerank-n", "5")
    names = list(res["methods"])
    plain = res["methods"][names[0]]
    assert plain["R@1"] < plain["R@5"] < 100.0
    _check_reranking_permutes_the_first(res, 5)
    for name in names[1:]:
        assert res["methods"][name]["R@1"] == plain["R@5"], name
        for p in res["predictions"]:
            hit = any(_place(g) == _place(p["query"]) for g in p[names[0]])
            assert hit == (_place(p[name][0]) == _place(p["query"])), (p["query"], name)


@pytest.mark.slow
def test_warp_reranker_puts_the_query_itself_first(warp_run, geo_dir):
    import torch

    from ssfeat.inference.retrieval import WarpReranker, load_resized
    from ssfeat.models.weights import load_warp_model

    test = load_geoloc_split(geo_dir, "test")
    gallery = [*test.gallery[:4], test.queries[0]]
    preds = np.array([[0, 1, 2, 4, 3]])
    for warp in (True, False):
        rr = WarpReranker(load_warp_model(warp_run), warp=warp, cache_size=2)  # cache smaller than n
        ranked = rr.rerank(test.queries[:1], gallery, preds, n=4)[0]
        assert ranked[0] == 4 and ranked[4] == 3 and sorted(ranked) == [0, 1, 2, 3, 4]  # beyond n: untouched
        cands = torch.stack([load_resized(gallery[g], 64) for g in ranked[:4]])
        s = rr.scores(load_resized(test.queries[0], 64), cands)
        assert (s[:-1] >= s[1:] - 1e-6).all()
    # an untrained regressor predicts the whole frames: warping changes nothing
    from ssfeat.models.warp import WarpConfig, WarpNet

    net = WarpNet(WarpConfig(size=64))
    q, c = load_resized(test.queries[0], 64), torch.stack([load_resized(g, 64) for g in test.gallery[:3]])
    assert torch.allclose(WarpReranker(net).scores(q, c), WarpReranker(net, warp=False).scores(q, c), atol=1e-3)
    assert WarpReranker(net).scores(q, q[None]).item() == pytest.approx(1.0, abs=1e-3)


def test_mine_query_positives(geo_dir):
    from ssfeat.inference.retrieval import mine_query_positives
    from ssfeat.models.weights import load_descriptor_model

    pairs = mine_query_positives(geo_dir, "train", load_descriptor_model(), min_similarity=0.0)
    place = lambda p: p.name.split("@")[4]  # noqa: E731
    assert pairs and all(place(q) == place(p) for q, p in pairs)  # positives only (same place)
    assert len(pairs) == 6  # 3 queries x 2 gallery views each
    assert mine_query_positives(geo_dir, "train", load_descriptor_model(), min_similarity=1.01) == []


def test_warp_benchmark_cli(image_dir, warp_run, tmp_path, capsys):
    js = tmp_path / "w.json"
    args = ["benchmark", "warp", "--images", str(image_dir), "--warp-weights", str(warp_run), "--pairs", "16"]
    assert main([*args, "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    net, flipped, frames = res["methods"].values()
    assert res["n_pairs"] == 16 and res["pairs"]["size"] == 64 and res["pairs"]["k"] == pytest.approx(0.6)
    assert frames["corner_err"] > 0 and 0 <= net["within_0.1"] <= net["mean_within_0.1"] <= 100
    assert flipped["corner_err"] != net["corner_err"]
    assert set(res["pairs_per_s"]) == {"ssfeat WarpNet", "ssfeat WarpNet, flip-averaged"}
    assert "all 8" in capsys.readouterr().out
    assert "--k: must lie in [0, 1]" in usage_error(main, [*args, "--json", str(js), "--k", "1.5"], capsys)
    black = tmp_path / "black"
    black.mkdir()
    cv2.imwrite(str(black / "a.png"), np.zeros((80, 80), np.uint8))
    bad = [*args[:3], str(black), *args[4:], "--json", str(tmp_path / "b.json")]
    assert main(bad) == 2  # an all-black folder is refused, not scored
    assert "every image under" in capsys.readouterr().err


def test_convex_clipping_and_four_points():
    from ssfeat.data.warp_pairs import clip_convex, four_points

    a = np.array([[0.0, 0], [2, 0], [2, 2], [0, 2]])
    b = a + 1.0
    inter = clip_convex(a, b)
    assert len(inter) == 4 and np.allclose(sorted(map(tuple, inter)), [(1, 1), (1, 2), (2, 1), (2, 2)])
    assert len(clip_convex(a, a + 5.0)) == 0
    tri_cut = clip_convex(a, np.array([[0.0, 0], [2, 0], [0, 2]])[::-1])  # clip order does not matter
    assert len(tri_cut) == 3
    q = four_points(np.array([[2.0, 2], [0, 0], [1, -0.5], [2, 0], [0, 2]]))
    assert np.allclose(q, [[0, 0], [2, 0], [2, 2], [0, 2]])  # TL, TR, BR, BL; the extra vertex dropped


def test_warp_pairs_targets_are_the_shared_region(image_dir):
    import cv2

    from ssfeat.data.images import list_images, read_image
    from ssfeat.data.warp_pairs import FRAME, WarpPairConfig, WarpPairSynthesizer, apply_h, homography, to_pixels

    imgs = [read_image(p) for p in list_images(image_dir)]
    s = WarpPairSynthesizer(imgs, WarpPairConfig(size=96, k=0.8))
    b = s.batch(range(6))
    assert b["image_a"].shape == (6, 1, 96, 96) and b["t_a"].shape == (6, 4, 2)
    diffs, shuffled = [], []
    for i in range(6):
        x = {k: v[i].numpy().astype(np.float64) for k, v in b.items()}
        # t_a is where t_z lies in view a: mapping it back through the view's trapezoid gives t_z
        assert np.allclose(apply_h(homography(FRAME, x["t_x"]), x["t_a"]), x["t_z"], atol=1e-4)
        assert np.allclose(apply_h(homography(FRAME, x["t_y"]), x["t_b"]), x["t_z"], atol=1e-4)
        # the shared region, rectified from either view, shows the same content
        crops = []
        for img, t in ((x["image_a"][0], x["t_a"]), (x["image_b"][0], x["t_b"])):
            M = homography(to_pixels(FRAME, 64, 64), to_pixels(t, 96, 96))
            crops.append(cv2.warpPerspective(img.astype(np.float32), M, (64, 64), flags=cv2.WARP_INVERSE_MAP))
        diffs.append(np.abs(crops[0] - crops[1])[8:-8, 8:-8].mean())
        shuffled.append(np.abs(crops[0] - np.rot90(crops[1]))[8:-8, 8:-8].mean())
    assert np.mean(diffs) < 0.5 * np.mean(shuffled)
    # k = 0: both trapezoids are the whole frame
    flat = WarpPairSynthesizer(imgs, WarpPairConfig(size=32, k=0.0)).sample(0)
    assert np.allclose(flat["t_a"], FRAME, atol=1e-5) and np.allclose(flat["t_b"], FRAME, atol=1e-5)
    with pytest.raises(ValueError, match="k must lie"):
        WarpPairConfig(k=1.5)
    with pytest.raises(ValueError, match="size must be between"):
        WarpPairConfig(size=1)


def test_warp_pair_figure_cli(image_dir, tmp_path, capsys):
    fig = tmp_path / "w.png"
    img = next(image_dir.glob("*.png"))
    assert main(["data", "warp-pair", str(img), "--out", str(fig), "--k", "0.8"]) == 0
    assert fig.stat().st_size > 5000 and "figure" in capsys.readouterr().out
    bad_k = ["data", "warp-pair", str(img), "--out", str(fig), "--k", "1.2"]
    assert "--k: must lie in [0, 1]" in usage_error(main, bad_k, capsys)
    bad_seed = ["data", "warp-pair", str(img), "--out", str(fig), "--seed", "-1"]
    assert "--seed: must be >= 0" in usage_error(main, bad_seed, capsys)
    # the bundled regressor reads 128 px views: another --size is refused, not silently ignored
    assert main(["data", "warp-pair", str(img), "--out", str(fig), "--weights", "warp", "--size", "64"]) == 2
    assert "reads 128 px views" in capsys.readouterr().err


def test_warp_pair_figure_with_prediction(image_dir, warp_run, tmp_path, capsys):
    from ssfeat.data.images import read_image
    from ssfeat.data.warp_pairs import FRAME, WarpPairConfig, WarpPairSynthesizer

    def corner_err(pa, pb, sample) -> float:
        return 0.5 * sum(np.linalg.norm(p - sample[t], axis=1).mean() for p, t in ((pa, "t_a"), (pb, "t_b")))

    def printed_err() -> float:
        out = capsys.readouterr().out
        assert fig.stat().st_size > 5000 and "mean corner error" in out
        return float(out.split("mean corner error ")[1].split()[0])

    fig = tmp_path / "p.png"
    img = next(image_dir.glob("*.png"))
    # the printed error is the error of the regressor's prediction on the pair drawn (seed 0, k 0.6)
    assert main(["data", "warp-pair", str(img), "--out", str(fig), "--weights", str(warp_run)]) == 0
    err = printed_err()
    net = load_warp_model(warp_run)
    sample = WarpPairSynthesizer([read_image(img)], WarpPairConfig(size=64, k=0.6, seed=0)).sample(0)
    a, b = (torch.as_tensor(sample[key])[None, None] for key in ("image_a", "image_b"))
    with torch.no_grad():
        pa, pb = (x[0].numpy() for x in net.shared_region(a, b))
    assert err == pytest.approx(corner_err(pa, pb, sample), abs=6e-4)  # printed with 3 decimals
    # the bundled regressor beats predicting the whole frames by far (measured on these photos: errors
    # 0.016-0.059 against 0.21-0.25 for the frames)
    assert main(["data", "warp-pair", str(img), "--out", str(fig), "--weights", "warp"]) == 0
    sample = WarpPairSynthesizer([read_image(img)], WarpPairConfig(size=128, k=0.6, seed=0)).sample(0)
    frames = corner_err(FRAME, FRAME, sample)
    assert frames > 0.1 and printed_err() < 0.4 * frames
    assert main(["data", "warp-pair", str(img), "--out", str(fig), "--weights", str(tmp_path / "none")]) == 2


def test_a_full_disk_is_an_error_and_a_rerun_completes_the_dataset(image_dir, tmp_path, monkeypatch, capsys):
    from .test_files import full_disk

    args = ["data", "make-geoloc", "--images", str(image_dir), "--n-gallery", "2", "--n-queries", "1"]
    full_disk(monkeypatch, after=60_000)  # some views fit
    assert main([*args, "--out", str(tmp_path / "geo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssfeat: error: cannot write ") and err.count("\n") == 1
    assert not (tmp_path / "geo" / "dataset.json").exists()
    assert not [p for p in (tmp_path / "geo").rglob(".*") if p.name != ".ssfeat-progress.json"]
    monkeypatch.undo()
    assert main([*args, "--out", str(tmp_path / "geo")]) == 0  # the same command completes it
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    meta = json.loads((tmp_path / "geo" / "dataset.json").read_text())
    views = lambda root: sorted(p.relative_to(root) for p in root.rglob("*.jpg"))  # noqa: E731
    assert views(tmp_path / "geo") == views(tmp_path / "ref")
    n = sum(c["gallery"] + c["queries"] for c in meta["counts"].values())
    assert n == len(views(tmp_path / "geo")) == 6 * 3 and not (tmp_path / "geo" / ".ssfeat-progress.json").exists()
