"""Figures a user would put in a report: highlighted keypoints spread out, no nested circles, inliers
emphasised over faint outliers with a gap between the images, every colour of the warp figure named."""

import matplotlib
import numpy as np

from ssfeat.viz import MATCH_STYLE, draw_poses, lines_to_draw, match_figure, spread_out, unnested

matplotlib.use("Agg")


def _min_gap(xy):
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    return d[~np.eye(len(xy), dtype=bool)].min()


def test_highlighted_keypoints_are_spread_out():
    rng = np.random.default_rng(0)
    # the strongest keypoints sit in one corner (as SIFT's often do), the rest over the image
    xy = np.vstack([rng.uniform(10, 20, (10, 2)), rng.uniform(0, 400, (50, 2))])
    idx = spread_out(xy, 4)
    assert len(set(idx.tolist())) == 4 and idx[0] != idx[1]
    assert _min_gap(xy[idx]) > 100 > _min_gap(xy[:4])  # the first four would overlap
    assert list(xy[idx, 0]) == sorted(xy[idx, 0])  # numbered left to right
    assert spread_out(xy[:2], 4).tolist() in ([0, 1], [1, 0]) and len(spread_out(np.zeros((0, 2)), 4)) == 0


def test_nested_circles_are_drawn_once():
    xy = np.array([[50, 50], [51, 50], [50, 52], [200, 50], [120, 50]], float)
    size = np.array([10, 40, 80, 20, 20], float)
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.3])
    # three concentric detections at (50, 50): only the strongest (index 1) keeps its circle
    assert unnested(xy, size, scores).tolist() == [1, 3, 4]
    assert unnested(xy, size).tolist() == [0, 3, 4]


def test_match_figure_emphasises_inliers_and_separates_the_images():
    a, b = np.zeros((100, 120)), np.ones((80, 100))
    xy0 = np.array([[10, 10], [20, 20], [30, 30], [40, 40]], float)
    xy1 = xy0.copy()
    inl = np.array([True, False, True, False])
    fig = match_figure(a, b, xy0, xy1, inl, gap=15)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (100, 120 + 15 + 100)
    lines = ax.get_lines()
    assert [ln.get_xdata()[1] for ln in lines] == [20 + 135, 40 + 135, 10 + 135, 30 + 135]  # outliers first
    inlier_alpha, outlier_alpha = lines[-1].get_alpha(), lines[0].get_alpha()
    assert outlier_alpha <= 0.3 < 0.6 <= inlier_alpha
    assert lines[-1].get_linewidth() > lines[0].get_linewidth()
    assert MATCH_STYLE[False]["alpha"] == outlier_alpha
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["inliers (2)", "outliers (2)"]
    # too many lines: both kinds thinned in proportion, evenly
    assert len(lines_to_draw(300, 400, 200)) == 150 and len(lines_to_draw(100, 400, 200)) == 50
    assert lines_to_draw(3, 10, 400).tolist() == [0, 1, 2]
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_pose_figure_labels_its_histograms(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr("ssfeat.viz.save_figure", lambda fig, out, dpi=None: figs.append(fig) or out)
    rng = np.random.default_rng(1)
    xy = rng.uniform(20, 180, (12, 2))
    draw_poses(
        rng.random((200, 200)),
        xy,
        rng.uniform(0, 6, 12),
        np.full(12, 10.0),
        tmp_path / "p.png",
        rng.random((12, 36)),
        rng.random((12, 13)),
        scale_label="log2 size (px)",
    )
    fig = figs[0]
    scale_axes = [ax for ax in fig.axes if ax.name != "polar" and ax.get_xlabel()]
    assert len(scale_axes) == 4 and all(ax.get_xlabel() == "log2 size (px)" for ax in scale_axes)
    polar = [ax for ax in fig.axes if ax.name == "polar"]
    assert len(polar) == 4 and all("orientation" in ax.get_title() for ax in polar)
    plt.close(fig)


def test_warp_figure_names_every_colour():
    import matplotlib.pyplot as plt

    from ssfeat.data.warp_pairs import PAIR_LEGEND, WarpPairConfig, WarpPairSynthesizer, pair_figure

    img = np.random.default_rng(2).random((120, 160)).astype(np.float32)
    sample = WarpPairSynthesizer([img], WarpPairConfig(size=64)).sample(0)
    pred = (sample["t_a"], sample["t_b"])
    fig = pair_figure(img, sample, pred)
    used = {matplotlib.colors.to_hex(ln.get_color()) for ax in fig.axes for ln in ax.get_lines()}
    named = {matplotlib.colors.to_hex(h.get_color()): h.get_label() for h in fig.legends[0].legend_handles}
    assert used <= set(named) and len(named) == len(PAIR_LEGEND)
    assert all(ax.get_title() and "t_" not in ax.get_title() for ax in fig.axes)  # titles in words
    plt.close(fig)
