"""Figures (matplotlib, imported lazily): keypoints with learned scale and orientation (paper
Figure 1) and their orientation / scale histograms (paper Figure 4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


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
) -> Path:
    """Draw keypoints as circles of diameter ``size`` with an arrow along ``orientation`` (radians,
    CCW as displayed) on a gray ``(H, W)`` image; optionally the histograms of the first ``n_hist``
    keypoints below (``scale_bins``: the scale histogram's bin centres, default ``[-2, 2]`` evenly;
    ``scale_label``: its axis label). Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    show_hist = ori_hist is not None and scale_hist is not None and len(xy) > 0
    n_hist = min(n_hist, len(xy)) if show_hist else 0
    H, W = image.shape[:2]
    fig_w = 10.0
    fig_h = fig_w * H / W + (2.6 if show_hist else 0.0)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=110)
    top = fig.add_axes([0, (2.6 / fig_h) if show_hist else 0, 1, (fig_w * H / W) / fig_h])
    top.imshow(image, cmap="gray", vmin=0, vmax=1)
    top.set_axis_off()
    colors = matplotlib.colormaps["tab10"](np.arange(10))
    for i, ((x, y), a, s) in enumerate(zip(xy, orientation, size)):
        r = s / 2
        c = colors[i % 10] if i < n_hist else (1.0, 0.85, 0.1, 1.0)
        top.add_patch(Circle((x, y), r, fill=False, lw=1.2, ec=c))
        # CCW as displayed with y pointing down: direction (cos a, -sin a)
        top.plot([x, x + r * math.cos(a)], [y, y - r * math.sin(a)], color=c, lw=1.2)
        if i < n_hist:
            top.text(x + r, y - r, str(i), color=c, fontsize=9, weight="bold")
    if title:
        top.text(4, 4, title, fontsize=8, color="w", va="top", bbox={"facecolor": "k", "alpha": 0.6, "pad": 2})
    for i in range(n_hist):
        w = 1.0 / n_hist
        ax_o = fig.add_axes([i * w + 0.02, 0.2 / fig_h, w * 0.45, 2.1 / fig_h], projection="polar")
        K = len(ori_hist[i])
        ax_o.bar(np.arange(K) * 2 * math.pi / K, ori_hist[i], width=2 * math.pi / K, color=colors[i % 10])
        ax_o.set_xticks([])
        ax_o.set_yticks([])
        ax_o.set_title(f"#{i} orientation", fontsize=8)
        ax_s = fig.add_axes([i * w + 0.02 + w * 0.5, 0.45 / fig_h, w * 0.42, 1.7 / fig_h])
        Ks = len(scale_hist[i])
        bins = np.linspace(-2, 2, Ks) if scale_bins is None else np.asarray(scale_bins)
        ax_s.bar(bins, scale_hist[i], width=(bins[-1] - bins[0]) / (Ks - 1) * 0.9, color=colors[i % 10])
        ax_s.set_yticks([])
        ax_s.tick_params(labelsize=7)
        ax_s.set_title(scale_label, fontsize=8)
    return save_figure(fig, out)


def draw_matches(
    image0: np.ndarray,
    image1: np.ndarray,
    xy0: np.ndarray,
    xy1: np.ndarray,
    inliers: np.ndarray,
    out: str | Path,
    title: str = "",
    max_lines: int = 400,
) -> Path:
    """Two gray images side by side with matches ``xy0[i] <-> xy1[i]`` (``(M, 2)`` each): inliers
    (``inliers`` ``(M,)`` bool) green, the others red. At most ``max_lines`` lines (inliers first).
    Writes a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h0, w0 = image0.shape[:2]
    h1, w1 = image1.shape[:2]
    canvas = np.zeros((max(h0, h1), w0 + w1), np.float32)
    canvas[:h0, :w0] = image0
    canvas[:h1, w0:] = image1
    width = min(16.0, (w0 + w1) / 80)
    fig, ax = plt.subplots(figsize=(width, width * max(h0, h1) / (w0 + w1) + 0.4))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    order = np.argsort(~np.asarray(inliers, bool), kind="stable")[:max_lines]
    for i in order[::-1]:
        c = "lime" if inliers[i] else "red"
        ax.plot([xy0[i, 0], xy1[i, 0] + w0], [xy0[i, 1], xy1[i, 1]], "-", color=c, lw=0.6, alpha=0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
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
