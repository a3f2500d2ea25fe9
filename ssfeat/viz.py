"""Figures (matplotlib, imported lazily): keypoints with learned scale and orientation (paper
Figure 1) and their orientation / scale histograms (paper Figure 4), and matches between two
images. The choices that keep a figure readable are functions of their own: :func:`spread_out`
(highlighted keypoints far apart), :func:`unnested` (no circles inside circles) and
:data:`MATCH_STYLE` (inliers strong, outliers faint)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

HIGHLIGHT = (1.0, 0.85, 0.1, 1.0)  # the colour of keypoints drawn without a histogram
# line style of the matches: inliers on top and strong, outliers thin and faint
MATCH_STYLE = {
    True: {"color": "lime", "lw": 0.7, "alpha": 0.75},
    False: {"color": "red", "lw": 0.5, "alpha": 0.25},
}


def spread_out(xy: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` of the points ``xy`` ``(N, 2)`` spread over the image, sorted left to right:
    the first point, then each time the point farthest from those chosen (greedy farthest-point
    selection; a point on top of a chosen one is never chosen while others remain)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    k = min(k, len(xy))
    if k <= 0:
        return np.zeros(0, np.int64)
    chosen = [0]
    dist = np.linalg.norm(xy - xy[0], axis=1)
    while len(chosen) < k:
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(xy - xy[i], axis=1))
    chosen = np.array(chosen)
    return chosen[np.argsort(xy[chosen, 0], kind="stable")]


def unnested(xy: np.ndarray, size: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """Indices of the keypoints to draw as circles so that no circle sits nested in another: taken
    by decreasing ``scores`` (default: in order), a keypoint is left out when its centre lies within
    half the radius of the larger of its circle and one already kept (multi-scale detections at one
    place). ``xy``: ``(N, 2)``; ``size``: ``(N,)`` diameters."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    r = np.asarray(size, np.float64).reshape(-1) / 2
    order = np.arange(len(xy)) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    kept: list[int] = []
    for i in order:
        if kept:
            d = np.linalg.norm(xy[kept] - xy[i], axis=1)
            if np.any(d < 0.5 * np.maximum(r[kept], r[i])):
                continue
        kept.append(int(i))
    return np.array(sorted(kept), np.int64)


def _pose_marker(ax, x: float, y: float, a: float, s: float, color, lw: float) -> None:
    from matplotlib.patches import Circle

    r = s / 2
    ax.add_patch(Circle((x, y), r, fill=False, lw=lw, ec=color))
    # CCW as displayed with y pointing down: direction (cos a, -sin a)
    ax.plot([x, x + r * math.cos(a)], [y, y - r * math.sin(a)], color=color, lw=lw)


def draw_poses(
    image: np.ndarray,
    xy: np.ndarray,
    orientation: np.ndarray,
    size: np.ndarray,
    out: str | Path,
    ori_hist: np.ndarray | None = None,
    scale_hist: np.ndarray | None = None,
    title: str = "",
    n_hist: int = 4,
    scale_bins: np.ndarray | None = None,
    scale_label: str = "log2 scale",
    scores: np.ndarray | None = None,
) -> Path:
    """Draw keypoints as circles of diameter ``size`` with a line along ``orientation`` (radians,
    CCW as displayed) on a gray ``(H, W)`` image; optionally the histograms of ``n_hist`` keypoints
    spread over the image (:func:`spread_out`) below, numbered on the image (``scale_bins``: the
    scale histogram's bin centres, default ``[-2, 2]`` evenly; ``scale_label``: its axis label).
    A keypoint whose circle would sit nested in a stronger one's (``scores``; default: earlier) is
    drawn as a dot only (:func:`unnested`). Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    show_hist = ori_hist is not None and scale_hist is not None and len(xy) > 0
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    chosen = spread_out(xy, n_hist) if show_hist else np.zeros(0, np.int64)
    circles = unnested(xy, size, scores)
    H, W = image.shape[:2]
    fig_w = 10.0
    fig_h = fig_w * H / W + (2.9 if show_hist else 0.0)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    top = fig.add_axes([0, (2.9 / fig_h) if show_hist else 0, 1, (fig_w * H / W) / fig_h])
    top.imshow(image, cmap="gray", vmin=0, vmax=1)
    top.set_axis_off()
    if len(xy):
        top.plot(xy[:, 0], xy[:, 1], ".", ms=2.5, color=HIGHLIGHT)  # every keypoint, also the nested ones
    for i in np.setdiff1d(circles, chosen):
        _pose_marker(top, *xy[i], orientation[i], size[i], HIGHLIGHT, 1.0)
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    for j, i in enumerate(chosen):  # on top, thicker, numbered
        c = colors[j % 10]
        _pose_marker(top, *xy[i], orientation[i], size[i], c, 2.2)
        r = size[i] / 2
        label = {"color": "w", "fontsize": 9, "weight": "bold", "bbox": {"facecolor": c, "pad": 1, "lw": 0}}
        top.text(xy[i, 0] + 0.7 * r + 3, xy[i, 1] - 0.7 * r - 3, f"#{j}", **label)
    if title:
        top.text(4, 4, title, fontsize=8, color="w", va="top", bbox={"facecolor": "k", "alpha": 0.6, "pad": 2})
    for j, i in enumerate(chosen):
        _histograms(fig, fig_h, j, len(chosen), colors[j % 10], ori_hist[i], scale_hist[i], scale_bins, scale_label)
    return save_figure(fig, out)


def _histograms(fig, fig_h: float, j: int, n: int, color, ori_hist, scale_hist, scale_bins, scale_label) -> None:
    """The orientation (polar) and scale histograms of highlighted keypoint ``#j`` of ``n``."""
    w = 1.0 / n
    ax_o = fig.add_axes([j * w + 0.02, 0.35 / fig_h, w * 0.36, 2.0 / fig_h], projection="polar")
    K = len(ori_hist)
    ax_o.bar(np.arange(K) * 2 * math.pi / K, ori_hist, width=2 * math.pi / K, color=color)
    ax_o.set_xticks(np.arange(4) * math.pi / 2, ["0°", "90°", "", ""], fontsize=6)
    ax_o.tick_params(pad=-2)
    ax_o.set_yticks([])
    ax_o.set_title(f"#{j} orientation", fontsize=8)
    ax_s = fig.add_axes([j * w + w * 0.54, 0.55 / fig_h, w * 0.4, 1.8 / fig_h])
    Ks = len(scale_hist)
    bins = np.linspace(-2, 2, Ks) if scale_bins is None else np.asarray(scale_bins)
    ax_s.bar(bins, scale_hist, width=(bins[-1] - bins[0]) / (Ks - 1) * 0.9, color=color)
    ax_s.set_yticks([])
    ax_s.tick_params(labelsize=7)
    ax_s.set_xlabel(scale_label, fontsize=7, labelpad=1)
    ax_s.set_title(f"#{j} {'size' if 'size' in scale_label else 'scale'}", fontsize=8)


def match_figure(
    image0: np.ndarray,
    image1: np.ndarray,
    xy0: np.ndarray,
    xy1: np.ndarray,
    inliers: np.ndarray,
    title: str = "",
    max_lines: int = 250,
    gap: int | None = None,
    labels: tuple[str, str] = ("inliers", "outliers"),
):
    """Two gray images side by side, ``gap`` px apart (default 2% of their width, at least 8), with
    matches ``xy0[i] <-> xy1[i]`` (``(M, 2)`` each) styled by :data:`MATCH_STYLE`: inliers
    (``inliers`` ``(M,)`` bool) green on top, the others faint red. At most ``max_lines`` lines,
    shared by the two kinds in proportion (:func:`lines_to_draw`). ``labels``: the legend's names
    of the two kinds. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    gap = max(8, round(0.02 * (w0 + w1))) if gap is None else gap
    canvas = np.ones((max(h0, h1), w0 + gap + w1), np.float32)
    canvas[:h0, :w0] = image0
    canvas[:h1, w0 + gap :] = image1
    width = min(16.0, canvas.shape[1] / 80)
    fig, ax = plt.subplots(figsize=(width, width * canvas.shape[0] / canvas.shape[1] + 0.6))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    inliers = np.asarray(inliers, bool)
    handles = []
    for kind in (False, True):  # outliers first, so that inliers are drawn over them
        idx = np.flatnonzero(inliers == kind)
        shown = lines_to_draw(len(idx), len(inliers), max_lines)
        for i in idx[shown]:
            ax.plot([xy0[i, 0], xy1[i, 0] + w0 + gap], [xy0[i, 1], xy1[i, 1]], "-", **MATCH_STYLE[kind])
        note = f"{len(idx)}" if len(shown) == len(idx) else f"{len(idx)}, {len(shown)} drawn"
        style = {**MATCH_STYLE[kind], "lw": 2, "alpha": max(0.6, MATCH_STYLE[kind]["alpha"])}
        handles.insert(0, Line2D([], [], **style, label=f"{labels[0 if kind else 1]} ({note})"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def lines_to_draw(n: int, total: int, max_lines: int) -> np.ndarray:
    """Indices of the ``n`` lines of one kind to draw when ``total`` lines share ``max_lines``: all
    of them if ``total <= max_lines``, else evenly spread ones, this kind's share of ``max_lines``."""
    k = n if total <= max_lines else round(max_lines * n / total)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64)) if k else np.zeros(0, np.int64)


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    xy0: np.ndarray,
    xy1: np.ndarray,
    inliers: np.ndarray,
    out: str | Path,
    title: str = "",
    max_lines: int = 250,
    labels: tuple[str, str] = ("inliers", "outliers"),
) -> Path:
    """Write :func:`match_figure` to the PNG ``out``; returns the path written."""
    fig = match_figure(image0, image1, xy0, xy1, inliers, title, max_lines, labels=labels)
    return save_figure(fig, out, dpi=110)


def save_figure(fig, out: str | Path, dpi: int | None = None) -> Path:
    """Write a matplotlib figure to ``out`` (parent folders created), close it, return the path
    written (``.png`` is appended when ``out`` has no file extension)."""
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.is_dir():
        plt.close(fig)
        raise ValueError(f"{out} is a folder; give the figure file to write, e.g. {out / 'figure.png'}")
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


__all__ = [
    "HIGHLIGHT",
    "MATCH_STYLE",
    "draw_matches",
    "draw_poses",
    "lines_to_draw",
    "match_figure",
    "save_figure",
    "spread_out",
    "unnested",
]
