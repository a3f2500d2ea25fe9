"""Self-supervised pairs for homography regression (GeoWarp): two random trapezoids of one photo,
their intersection, the two warped views and the intersection's corners in each view.

Coordinates are normalised: ``[-1, 1]`` spans a view from the centre of its first pixel to the
centre of its last (x right, y down). A trapezoid with distortion ``k`` (a float in ``[0, 1]``) has
corners ``TL(-r1, -r2), TR(r3, -r4), BR(r3, r5), BL(-r1, r6)`` with ``r_i = 1 - k u_i``, ``u_i``
uniform in ``[0, 1)``: its left and right sides are vertical. View ``a`` shows trapezoid ``t_x``
stretched to the whole frame (view pixel ``p`` shows photo point ``H_x p``, ``H_x`` mapping the
frame's corners to ``t_x``), view ``b`` likewise for ``t_y``. The intersection ``t_z`` of the two
trapezoids is a convex polygon whose two leftmost and two rightmost vertices give its 4-point form
``(TL, TR, BR, BL)`` (extra vertices where top or bottom edges cross are dropped, as in GeoWarp);
the targets are ``t_a = H_x^-1 t_z`` and ``t_b = H_y^-1 t_z``: where the shared region lies in
each view. Unlike the original, ``k`` is a float option everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..viz import save_figure
from .synthesis import photometric_jitter
from .validate import check_fields, check_size

logger = logging.getLogger(__name__)

FRAME = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])  # TL, TR, BR, BL


@dataclass
class WarpPairConfig:
    size: int = 128  # side of both views (pixels)
    k: float = 0.6  # trapezoid distortion in [0, 1] (GeoWarp's training default)
    photometric: bool = False  # GeoWarp uses none
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, fractions=("k",))
        check_size(self.size, 16)


def random_trapezoid(k: float, rng: np.random.Generator) -> np.ndarray:
    """``(4, 2)`` corners TL, TR, BR, BL in normalised coordinates (vertical left/right sides)."""
    r = 1.0 - k * rng.uniform(0.0, 1.0, 6)
    return np.array([[-r[0], -r[1]], [r[2], -r[3]], [r[2], r[4]], [-r[0], r[5]]])


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Intersection of two convex polygons (Sutherland-Hodgman), vertices ``(M, 2)`` in order."""

    def orient(poly):
        x, y = poly[:, 0], poly[:, 1]
        return np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))

    s = orient(clip)

    def inside(p, a, b) -> bool:  # on the inner side of the directed clip edge a -> b
        return s * ((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])) >= -1e-12

    out = [tuple(p) for p in subject]
    for i in range(len(clip)):
        a, b = clip[i], clip[(i + 1) % len(clip)]
        src, out = out, []
        for j in range(len(src)):
            p, q = np.array(src[j]), np.array(src[(j + 1) % len(src)])
            if inside(q, a, b):
                if not inside(p, a, b):
                    out.append(tuple(_cross(p, q, a, b)))
                out.append(tuple(q))
            elif inside(p, a, b):
                out.append(tuple(_cross(p, q, a, b)))
        if not out:
            return np.zeros((0, 2))
    poly = np.array(out)
    # vertices on a clip edge can be emitted twice: drop (cyclically) repeated ones
    keep = np.linalg.norm(poly - np.roll(poly, 1, axis=0), axis=1) > 1e-9
    return poly[keep] if keep.any() else poly[:1]


def _cross(p, q, a, b) -> np.ndarray:
    """Intersection of segment ``pq`` with the line ``ab``."""
    d1, d2 = q - p, b - a
    den = d1[0] * d2[1] - d1[1] * d2[0]
    t = ((a[0] - p[0]) * d2[1] - (a[1] - p[1]) * d2[0]) / den
    return p + t * d1


def four_points(poly: np.ndarray) -> np.ndarray:
    """GeoWarp's 4-point form of a polygon: its two leftmost vertices (top first = TL, BL) and two
    rightmost (TR, BR), returned as TL, TR, BR, BL."""
    order = np.argsort(poly[:, 0], kind="stable")
    left, right = poly[order[:2]], poly[order[-2:]]
    tl, bl = left[np.argsort(left[:, 1])]
    tr, br = right[np.argsort(right[:, 1])]
    return np.array([tl, tr, br, bl])


def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``(3, 3)`` homography mapping the four ``src`` points to ``dst``."""
    return cv2.getPerspectiveTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


def apply_h(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ H.T
    return p[:, :2] / p[:, 2:3]


def to_pixels(pts: np.ndarray, w: int, h: int) -> np.ndarray:
    """Normalised ``[-1, 1]`` -> pixel coordinates of a ``w x h`` image."""
    return (pts + 1.0) / 2.0 * np.array([w - 1, h - 1])


class WarpPairSynthesizer:
    """Pairs of trapezoid views of ``images`` (gray ``(H, W)`` uint8 or float arrays)."""

    def __init__(self, images: list[np.ndarray], cfg: WarpPairConfig | None = None) -> None:
        self.cfg = cfg or WarpPairConfig()
        self.images = [im for im in images if min(im.shape[:2]) >= 16]
        if not self.images:
            raise ValueError("no image is at least 16x16 pixels")
        if len(self.images) < len(images):
            dropped = len(images) - len(self.images)
            logger.warning("%d of %d images are smaller than 16x16 pixels, skipped", dropped, len(images))
        small = sum(min(im.shape[:2]) < self.cfg.size for im in self.images)
        if small:
            logger.warning(
                "%d of %d images are smaller than the %d px views in some dimension: their views are upsampled",
                small,
                len(self.images),
                self.cfg.size,
            )

    def sample(self, index: int) -> dict[str, np.ndarray]:
        cfg, P = self.cfg, self.cfg.size
        rng = np.random.default_rng([cfg.seed, 13, index])
        img = self.images[int(rng.integers(len(self.images)))]
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        h, w = img.shape
        while True:  # trapezoids of distortion k <= 1 always contain the centre, so they intersect
            t_x, t_y = random_trapezoid(cfg.k, rng), random_trapezoid(cfg.k, rng)
            poly = clip_convex(t_x, t_y)
            if len(poly) >= 4:
                break
        t_z = four_points(poly)
        H_x, H_y = homography(FRAME, t_x), homography(FRAME, t_y)
        views = []
        for H, t in ((H_x, t_x), (H_y, t_y)):
            q = to_pixels(t, w, h)  # antialias: photo pixels per view pixel from the trapezoid's area
            area = 0.5 * abs(np.sum(q[:, 0] * np.roll(q[:, 1], -1) - np.roll(q[:, 0], -1) * q[:, 1]))
            shrink = np.sqrt(area) / P
            src = img
            if shrink > 1.0:
                src = cv2.GaussianBlur(img, (0, 0), 0.5 * np.sqrt(shrink**2 - 1.0), borderType=cv2.BORDER_REFLECT_101)
            # view pixel -> normalised view -> normalised photo -> photo pixel
            N_v = np.array([[2.0 / (P - 1), 0, -1], [0, 2.0 / (P - 1), -1], [0, 0, 1]])
            D_p = np.array([[(w - 1) / 2.0, 0, (w - 1) / 2.0], [0, (h - 1) / 2.0, (h - 1) / 2.0], [0, 0, 1]])
            M = D_p @ H @ N_v
            v = cv2.warpPerspective(src, M, (P, P), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
            views.append(v)
        if cfg.photometric:
            views = [photometric_jitter(v, rng) for v in views]
        return {
            "image_a": views[0],
            "image_b": views[1],
            "t_a": apply_h(np.linalg.inv(H_x), t_z).astype(np.float32),
            "t_b": apply_h(np.linalg.inv(H_y), t_z).astype(np.float32),
            "t_x": t_x.astype(np.float32),
            "t_y": t_y.astype(np.float32),
            "t_z": t_z.astype(np.float32),
        }

    def batch(self, indices) -> dict[str, torch.Tensor]:
        """Views ``(B, 1, P, P)`` in ``[0, 1]``; ``t_a``, ``t_b`` (targets) and ``t_x``, ``t_y``,
        ``t_z`` (photo trapezoids) ``(B, 4, 2)`` normalised TL, TR, BR, BL."""
        samples = [self.sample(int(i)) for i in indices]
        out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
        for k in ("image_a", "image_b"):
            out[k] = out[k][:, None]
        return out


# the colours of the pair figure and what they show
PAIR_LEGEND = {
    "red": "view a's region of the photo (t_x)",
    "blue": "view b's region of the photo (t_y)",
    "lime": "region both views share (t_z in the photo, t_a / t_b in the views)",
    "yellow": "shared region predicted by the regressor (dashed)",
}


def draw_pair(image: np.ndarray, sample: dict, out, pred: tuple | None = None) -> object:
    """Write :func:`pair_figure` to the PNG ``out``; returns the path written."""
    return save_figure(pair_figure(image, sample, pred), out, dpi=100)


def pair_figure(image: np.ndarray, sample: dict, pred: tuple | None = None):
    """GeoWarp's self-supervised figure: the source photo with ``t_x`` (red), ``t_y`` (blue) and
    their intersection ``t_z`` (green); the two views with the intersection ``t_a`` / ``t_b``; and
    the intersection region itself (view a warped so that ``t_a`` fills the frame). ``pred``: the
    regressor's corners ``((4, 2), (4, 2))`` in views a and b, drawn dashed in yellow. A legend
    below says what each colour is (:data:`PAIR_LEGEND`). Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    h, w = image.shape
    P = sample["image_a"].shape[-1]
    fig, axes = plt.subplots(1, 4, figsize=(13, 4.2))

    def outline(ax, corners, size, color, **kw):
        q = to_pixels(np.asarray(corners, np.float64), *size)
        ax.plot(*np.vstack([q, q[:1]]).T, color=color, lw=2, **kw)

    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1)
    for key, color in (("t_x", "red"), ("t_y", "blue"), ("t_z", "lime")):
        outline(axes[0], sample[key], (w, h), color)
    axes[0].set_title("photo: the two views' regions\nand the region they share", fontsize=9)
    for ax, key, tk, name in ((axes[1], "image_a", "t_a", "a"), (axes[2], "image_b", "t_b", "b")):
        ax.imshow(sample[key], cmap="gray", vmin=0, vmax=1)
        outline(ax, sample[tk], (P, P), "lime")
        if pred is not None:
            outline(ax, pred[0 if tk == "t_a" else 1], (P, P), "yellow", ls="--")
        what = "true" + (" and predicted" if pred is not None else "")
        ax.set_title(f"view {name} (the {'red' if name == 'a' else 'blue'} region)\n{what} shared region", fontsize=9)
    M = homography(to_pixels(FRAME, P, P), to_pixels(np.asarray(sample["t_a"], np.float64), P, P))
    inter = cv2.warpPerspective(sample["image_a"], M, (P, P), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    axes[3].imshow(inter, cmap="gray", vmin=0, vmax=1)
    axes[3].set_title("the shared region, cut from view a\n(what re-ranking compares)", fontsize=9)
    for ax in axes:
        ax.axis("off")
    shown = [c for c in PAIR_LEGEND if c != "yellow" or pred is not None]
    handles = [Line2D([], [], color=c, lw=2, ls="--" if c == "yellow" else "-", label=PAIR_LEGEND[c]) for c in shown]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.14, wspace=0.06)
    return fig
