"""Log-polar sampling: a zoom is a shift along the rings, a rotation a circular shift along the
angles (analytic images, exact transforms)."""

import math

import numpy as np
import pytest
import torch

from ssfeat.logpolar import LogPolarGrid, ScaleSpace, sample_logpolar
from ssfeat.models.scale_pose import LogPolarScaleNet, ScalePoseConfig


def blobs(size: int, zoom: float = 1.0, angle: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image of Gaussian blobs about its centre, magnified by ``zoom`` and turned CCW (as
    displayed) by ``angle``, rendered analytically; and the centre ``(1, 2)``."""
    rng = np.random.default_rng(seed)
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (x - c) / zoom, (y - c) / zoom  # back to the unzoomed frame
    ca, sa = math.cos(angle), math.sin(angle)
    # undo a CCW-as-displayed turn: x' = c x + s y, y' = -s x + c y
    u, v = ca * u - sa * v, sa * u + ca * v
    img = np.zeros_like(x)
    for _ in range(12):
        px, py = rng.uniform(-20, 20, 2)
        s = rng.uniform(2.0, 6.0)
        img += rng.uniform(0.2, 1.0) * np.exp(-((u - px) ** 2 + (v - py) ** 2) / (2 * s * s))
    return (img / img.max()).astype(np.float32), np.array([[c, c]])


GRID = LogPolarGrid(n_rings=20, rings_per_octave=4, n_angles=32, min_radius=1.0)


def test_rotation_is_a_circular_shift_along_angles():
    a, c = blobs(129)
    b, _ = blobs(129, angle=math.pi / 2)  # a quarter turn: 8 of 32 angle bins
    la, lb = sample_logpolar(a, c, GRID)[0], sample_logpolar(b, c, GRID)[0]
    assert torch.allclose(torch.roll(la, 8, 1), lb, atol=2e-3)
    assert not torch.allclose(la, lb, atol=2e-2)


def test_zoom_is_a_shift_along_rings():
    a, c = blobs(257)
    b, _ = blobs(257, zoom=2.0)  # one octave: 4 rings
    la, lb = sample_logpolar(a, c, GRID)[0], sample_logpolar(b, c, GRID)[0]
    # smooth content (blobs of sigma >= 2 px) is resolved at every ring, so the shift is exact up to
    # interpolation and the scale space's blur
    err = (lb[4:] - la[:-4]).abs().max()
    assert err < 0.03 and (lb[4:] - la[4:]).abs().max() > 0.1


def test_ring_windows_read_the_whole_patch_rings():
    a, _ = blobs(129)
    xy = np.random.default_rng(0).uniform(10, 118, (6, 2))
    whole = sample_logpolar(a, xy, GRID)
    first = np.array([0, 3, 7, 10, 12, 12])
    win = sample_logpolar(a, xy, GRID, first, 8)
    assert win.shape == (6, 8, 32)
    for i, f in enumerate(first):  # rings that reach past the border take the window's means instead
        inner = GRID.radii()[f : f + 8] < 10
        assert torch.equal(win[i][inner], whole[i, f : f + 8][inner])
    with pytest.raises(ValueError, match="ring windows"):
        sample_logpolar(a, xy[:1], GRID, np.array([13]), 8)


def test_sampling_edge_cases():
    a, _ = blobs(65)
    assert sample_logpolar(a, np.zeros((0, 2)), GRID).shape == (0, 20, 32)
    corner = sample_logpolar(a, np.array([[0.0, 0.0]]), GRID)[0]
    assert torch.isfinite(corner).all()
    # beyond the border: the mean of the ring's samples inside (three quarters of a large ring lie
    # outside the image around its top-left corner)
    ang = 2 * np.pi * np.arange(32) / 32
    r = GRID.radii()[15]  # about 13 px
    inside = (r * np.cos(ang) >= -0.5) & (-r * np.sin(ang) >= -0.5)
    assert 6 <= inside.sum() <= 10
    ring = corner[15]
    assert torch.allclose(ring[~inside], ring[inside].mean().expand(int((~inside).sum())), atol=1e-5)
    assert ring[inside].std() > 1e-3  # the inside samples are the image's
    with pytest.raises(ValueError, match="2x2"):
        ScaleSpace(np.zeros((1, 5), np.float32), 4)
    with pytest.raises(ValueError, match="n_angles"):
        LogPolarGrid(n_angles=2)


def test_scale_net_is_rotation_invariant_and_zoom_equivariant():
    cfg = ScalePoseConfig(n_rings=9)
    torch.manual_seed(0)
    net = LogPolarScaleNet(cfg).eval()
    R = cfg.grid.n_rings
    x = torch.rand(3, R + 4, cfg.n_angles)
    with torch.no_grad():
        z = net.rings(net.features(x[:, :R]))[:, 0]
        # turning by an even number of angle bins (the convolution's stride) changes nothing
        zr = net.rings(net.features(torch.roll(x[:, :R], 6, 2)))[:, 0]
        # shifting the patch by 4 rings shifts the logits by 4 rings (up to the patch standardisation,
        # whose statistics are the whole patch's)
        zs = net.rings(net.features(x[:, 4 : R + 4]))[:, 0]
        full = net.rings(net.features(x))[:, 0]
    assert torch.allclose(z, zr, atol=1e-5)
    assert torch.allclose(zs, full[:, 4:], atol=5e-3) and not torch.allclose(zs, full[:, :-4], atol=5e-3)
    assert z.shape == (3, cfg.n_rings) and R == cfg.n_rings + 2 * cfg.context_rings


def test_scale_net_checks_and_fusion():
    net = LogPolarScaleNet(ScalePoseConfig()).eval()
    with pytest.raises(ValueError, match="log-polar patches"):
        net(torch.rand(2, 8, 32))  # not more rings than the context needs
    with pytest.raises(ValueError, match="log-polar patches"):
        net(torch.rand(2, 40, 16))
    x = torch.rand(4, net.config.grid.n_rings, 32)
    with torch.no_grad():
        before = net(x)
        after = net.fused()(x)
    assert torch.allclose(before, after, atol=1e-4)
    assert ScalePoseConfig.from_dict({"hidden": 16}).hidden == 16
    with pytest.raises(ValueError, match="unknown"):
        ScalePoseConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="harmonics"):
        ScalePoseConfig(harmonics=20)
