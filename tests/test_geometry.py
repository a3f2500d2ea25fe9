import math

import cv2
import numpy as np
import pytest
import torch

from ssfeat.geometry import (
    angle_diff,
    angle_from_cv2,
    angle_to_cv2,
    inside_image,
    laf_from_pose,
    linear_rotation_scale,
    local_rotation_scale,
    map_orientations,
    pose_from_laf,
    rotation_matrix,
    similarity_matrix,
    tilt_matrix,
    warp_points,
    wrap_angle,
)
from ssfeat.patches import extract_patches, sample_patches

from .conftest import textured_image


def test_rotation_is_counter_clockwise_on_screen():
    # +90 degrees turns the x axis (right) to "up" on screen, i.e. -y in pixel coordinates
    v = rotation_matrix(torch.tensor(math.pi / 2)) @ torch.tensor([1.0, 0.0])
    assert torch.allclose(v, torch.tensor([0.0, -1.0]), atol=1e-6)


def test_wrap_and_diff():
    a = torch.tensor([-0.1, 2 * math.pi, 7.0])
    w = wrap_angle(a)
    assert ((w >= 0) & (w < 2 * math.pi)).all()
    assert torch.allclose(angle_diff(torch.tensor(0.1), torch.tensor(2 * math.pi - 0.1)), torch.tensor(0.2), atol=1e-6)


def test_cv2_angle_roundtrip_and_direction():
    a = np.array([0.0, 0.3, 3.0, 6.0])
    np.testing.assert_allclose(angle_from_cv2(angle_to_cv2(a)), a, atol=1e-9)
    assert angle_to_cv2(math.pi / 2) == pytest.approx(270.0)


def test_cv2_sift_angle_convention_measured():
    """Rotating an image CCW on screen by 30 degrees must raise ssfeat angles of SIFT keypoints by 30."""
    img = textured_image(300, 300, seed=3)
    big = cv2.copyMakeBorder(img, 100, 100, 100, 100, cv2.BORDER_REFLECT)
    h, w = big.shape
    M = cv2.getRotationMatrix2D((w / 2, h / 2), 30, 1.0)  # OpenCV: positive = CCW on screen
    rot = cv2.warpAffine(big, M, (w, h))
    sift = cv2.SIFT_create(300)
    k0, k1 = sift.detect(big, None), sift.detect(rot, None)
    p1 = np.array([k.pt for k in k1])
    diffs = []
    for k in k0:
        p = M @ np.array([*k.pt, 1.0])
        d = np.linalg.norm(p1 - p, axis=1)
        j = int(d.argmin())
        if d[j] < 0.5 and abs(k1[j].size - k.size) < 0.3:
            diffs.append(float(angle_diff(angle_from_cv2(k1[j].angle), angle_from_cv2(k.angle))))
    assert len(diffs) > 10
    assert np.median(diffs) == pytest.approx(math.radians(30), abs=math.radians(3))


def test_local_rotation_scale_of_similarity():
    theta, s = 0.7, 1.6
    A = (rotation_matrix(torch.tensor(theta, dtype=torch.float64)) * s).numpy()
    H = np.eye(3)
    H[:2, :2] = A
    H[:2, 2] = [12.0, -4.0]
    pts = torch.tensor([[10.0, 20.0], [100.0, 50.0]], dtype=torch.float64)
    r, ls = local_rotation_scale(pts, torch.from_numpy(H))
    assert torch.allclose(r, torch.full((2,), theta, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(ls, torch.full((2,), math.log2(s), dtype=torch.float64), atol=1e-9)


def test_tilt_changes_neither_rotation_nor_scale():
    g = torch.Generator().manual_seed(0)
    theta, ls = torch.rand(50, generator=g, dtype=torch.float64) * 6.28, torch.rand(50, generator=g).double() * 4 - 2
    tilt = 1 + 5 * torch.rand(50, generator=g, dtype=torch.float64)
    T = tilt_matrix(tilt, torch.rand(50, generator=g, dtype=torch.float64) * math.pi)
    assert torch.allclose(torch.linalg.det(T), torch.ones(50, dtype=torch.float64))
    ev = torch.linalg.eigvalsh(T)  # symmetric, stretch sqrt(t) along the direction, 1 / sqrt(t) across
    assert torch.allclose(ev[:, 1], tilt.sqrt()) and torch.allclose(ev[:, 0], 1 / tilt.sqrt())
    for J in (similarity_matrix(theta, ls) @ T, similarity_matrix(theta, ls)):  # tilt first, then the similarity
        r, s = linear_rotation_scale(J)
        assert torch.allclose(angle_diff(r, theta), torch.zeros(50, dtype=torch.float64), atol=1e-9)
        assert torch.allclose(s, ls, atol=1e-9)


def test_map_orientations_and_inside_image():
    ori = np.array([0.0, 1.0, 3.0, 5.5])
    R = rotation_matrix(torch.tensor(0.4, dtype=torch.float64)).numpy()  # content turned CCW by 0.4
    np.testing.assert_allclose(map_orientations(ori, 3.0 * R), wrap_angle(ori + 0.4), atol=1e-12)
    # 45 degrees CCW as displayed is the offset (1, -1); stretching y by 2 gives (1, -2): 63.4 degrees
    np.testing.assert_allclose(map_orientations(np.array([math.pi / 4]), np.diag([1.0, 2.0])), [math.atan(2.0)])
    xy = np.array([[0.0, 0.0], [9.0, 4.0], [9.5, 2.0], [5.0, -0.1], [3.0, 3.0]])
    assert inside_image(xy, (5, 10)).tolist() == [True, True, False, False, True]
    assert inside_image(xy, (5, 10), margin=1.0).tolist() == [False, False, False, False, True]


def test_local_scale_of_perspective_matches_finite_differences():
    H = torch.tensor([[0.9, 0.2, 5.0], [-0.1, 1.1, 3.0], [2e-4, -1e-4, 1.0]], dtype=torch.float64)
    p = torch.tensor([[150.0, 80.0]], dtype=torch.float64)
    e = 1e-4
    J = torch.stack(
        [
            (warp_points(p + torch.tensor([[e, 0.0]]), H) - warp_points(p - torch.tensor([[e, 0.0]]), H)) / (2 * e),
            (warp_points(p + torch.tensor([[0.0, e]]), H) - warp_points(p - torch.tensor([[0.0, e]]), H)) / (2 * e),
        ],
        -1,
    )[0]
    _, ls = local_rotation_scale(p, H)
    assert ls.item() == pytest.approx(0.5 * math.log2(abs(torch.linalg.det(J).item())), abs=1e-6)


def test_laf_roundtrip():
    xy = torch.tensor([[10.0, 20.0], [30.0, 5.0]])
    size = torch.tensor([3.0, 7.0])
    ang = torch.tensor([0.5, 5.0])
    c, s, a = pose_from_laf(laf_from_pose(xy, size, ang))
    assert torch.allclose(c, xy) and torch.allclose(s, size, atol=1e-5)
    assert torch.allclose(angle_diff(a, ang), torch.zeros(2), atol=1e-5)


def test_extract_patches_rotation_matches_rot90():
    img = textured_image(200, 200, seed=1).astype(np.float32) / 255
    c = np.array([[100.0, 100.0]])
    # content rotated CCW by 90 degrees: patch-to-image map is the inverse rotation
    A_rot = rotation_matrix(torch.tensor(-math.pi / 2, dtype=torch.float64)).numpy()
    p0 = extract_patches(img, c, np.eye(2), 32)[0]
    p1 = extract_patches(img, c, A_rot, 32)[0]
    np.testing.assert_allclose(p1, np.rot90(p0, 1), atol=1e-4)


def test_extract_patches_reflects_at_border_and_antialiases():
    img = np.full((50, 50), 0.5, np.float32)
    p = extract_patches(img, np.array([[0.0, 0.0]]), np.eye(2) * 4, 32)  # shrinks content 4x at a corner
    assert np.allclose(p, 0.5, atol=1e-5)  # no black corners
    stripes = np.tile(np.array([0.0, 1.0], np.float32), (200, 100))  # 1-px stripes alias without blur
    q = extract_patches(stripes, np.array([[100.0, 100.0]]), np.eye(2) * 3.0, 32)
    assert q.std() < 0.05


def test_anisotropic_maps_blur_only_the_compressed_direction():
    # 4-px stripes along x: sampling them 3x compressed along x aliases unless blurred along x;
    # compressing along y instead must keep them sharp (an isotropic blur would wash them out)
    stripes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (300, 75))
    c = np.array([[150.0, 150.0]])
    along_x = extract_patches(stripes, c, np.diag([3.0, 1.0]), 32)[0]
    along_y = extract_patches(stripes, c, np.diag([1.0, 3.0]), 32)[0]
    assert along_x.std() < 0.1
    assert along_y.std() > 0.3  # an isotropic blur of the same footprint: 0.19
    A = rotation_matrix(torch.tensor(0.3, dtype=torch.float64)).numpy() @ np.diag([1.0, 3.0])
    assert extract_patches(stripes, c, A, 32).std() > 0.3  # compressed at 17 degrees from the stripes


def test_sample_patches_matches_exact_sampler():
    rng = np.random.default_rng(0)
    img = rng.random((60, 80)).astype(np.float32)
    c = np.stack([rng.uniform(-3, 82, 40), rng.uniform(-3, 62, 40)], 1)  # some near / past the border
    rot = np.array([[0.8, 0.3], [-0.3, 0.8]])
    for A in (np.eye(2), rot):  # no shrinking: identical up to float rounding
        np.testing.assert_allclose(sample_patches(img, c, A, 16).numpy(), extract_patches(img, c, A, 16), atol=1e-4)
    # per-patch maps that do not shrink: exact too; shrinking ones are read from a pyramid (approximate)
    s = rng.uniform(0.5, 1.0, 40)
    A = s[:, None, None] * rot
    np.testing.assert_allclose(sample_patches(img, c, A, 16).numpy(), extract_patches(img, c, A, 16), atol=1e-4)
    smooth = cv2.GaussianBlur(img, (0, 0), 4.0)
    A = np.concatenate([rng.uniform(1.5, 6.0, 39), [2.5]])[:, None, None] * np.eye(2)
    inner = np.stack([rng.uniform(30, 50, 40), rng.uniform(25, 35, 40)], 1)
    err = np.abs(sample_patches(smooth, inner, A, 8).numpy() - extract_patches(smooth, inner, A, 8))
    assert err.mean() < 0.01
    assert sample_patches(img, np.zeros((0, 2)), np.eye(2), 16).shape == (0, 16, 16)


def test_orientation_definedness_of_similarities_and_tilts():
    from ssfeat.evaluation.metrics import orientation_definedness

    # a similarity turns every direction by its rotation (wrong rotation sign would give 0 here)
    S = similarity_matrix(torch.tensor([0.3, 2.0, 5.5]), torch.tensor([0.5, -1.0, 0.0]))
    assert torch.equal(orientation_definedness(S, math.radians(1)), torch.ones(3, dtype=torch.float64))
    # a tilt t bends directions by up to atan((t - 1) / (2 sqrt t)): 5.2 deg for t = 1.2, 19.5 for t = 2
    tilts = torch.tensor([1.2, 1.5, 2.0, 4.0])
    stretch = torch.diag_embed(torch.stack([tilts, torch.ones(4)], 1))
    A = similarity_matrix(torch.full((4,), 1.0), torch.zeros(4)) @ stretch
    d = orientation_definedness(A, math.radians(10))
    assert d[0] == 1.0 and (d[1:] < 1).all() and (d[1:] > 0).all() and (d.diff() < 0).all()
    assert orientation_definedness(A[2:3], math.radians(20)).item() == 1.0  # 19.5 deg is within 20
    odd = torch.stack([torch.diag(torch.tensor([1.0, -1.0])), torch.zeros(2, 2), torch.full((2, 2), float("nan"))])
    assert orientation_definedness(odd, math.radians(10)).isnan().all()  # a mirror, a collapse, NaN
