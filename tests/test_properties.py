"""Property-based tests (hypothesis) of the geometry conventions in ``ssfeat/geometry.py``."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssfeat.geometry import (
    TWO_PI,
    angle_diff,
    angle_from_cv2,
    angle_to_cv2,
    laf_from_pose,
    local_rotation_scale,
    pose_from_laf,
    rotation_matrix,
    similarity_matrix,
    warp_points,
    wrap_angle,
)
from ssfeat.patches import feature_affines

angles = st.floats(-50.0, 50.0, allow_nan=False)
log_scales = st.floats(-3.0, 3.0, allow_nan=False)
coords = st.floats(-500.0, 500.0, allow_nan=False)
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(angles)
def test_wrap_angle_range_and_identity(a):
    w = wrap_angle(a)
    assert 0.0 <= w < TWO_PI
    assert math.isclose(math.cos(w), math.cos(a), abs_tol=1e-9) and math.isclose(math.sin(w), math.sin(a), abs_tol=1e-9)
    t = wrap_angle(torch.tensor([a], dtype=torch.float64))
    assert 0.0 <= t.item() < TWO_PI


@SETTINGS
@given(angles, angles)
def test_angle_diff_is_antisymmetric_and_in_range(a, b):
    d = angle_diff(a, b)
    assert -math.pi <= d < math.pi
    assert math.isclose(wrap_angle(b + d), wrap_angle(a), abs_tol=1e-9) or math.isclose(
        abs(wrap_angle(b + d) - wrap_angle(a)), TWO_PI, abs_tol=1e-9
    )
    if abs(abs(d) - math.pi) > 1e-9:
        assert math.isclose(angle_diff(b, a), -d, abs_tol=1e-9)


@SETTINGS
@given(angles)
def test_cv2_angle_round_trip(a):
    deg = angle_to_cv2(a)
    assert 0.0 <= deg < 360.0
    assert abs(angle_diff(float(angle_from_cv2(deg)), a)) < 1e-9


@SETTINGS
@given(angles, angles)
def test_rotations_are_orthonormal_and_compose(a, b):
    Ra, Rb = (
        rotation_matrix(torch.tensor(a, dtype=torch.float64)),
        rotation_matrix(torch.tensor(b, dtype=torch.float64)),
    )
    assert torch.allclose(Ra @ Ra.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert abs(torch.linalg.det(Ra).item() - 1.0) < 1e-12
    assert torch.allclose(Ra @ Rb, rotation_matrix(torch.tensor(a + b, dtype=torch.float64)), atol=1e-9)


@SETTINGS
@given(angles, log_scales, coords, coords, coords, coords)
def test_local_rotation_scale_of_a_similarity_is_exact(a, s, tx, ty, px, py):
    A = similarity_matrix(torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    H = torch.eye(3, dtype=torch.float64)
    H[:2, :2], H[:2, 2] = A, torch.tensor([tx, ty], dtype=torch.float64)
    theta, ls = local_rotation_scale(torch.tensor([[px, py]], dtype=torch.float64), H)
    assert abs(angle_diff(theta.item(), a)) < 1e-7 and abs(ls.item() - s) < 1e-7


@SETTINGS
@given(st.lists(st.floats(-0.3, 0.3), min_size=8, max_size=8), coords, coords)
def test_warp_points_round_trips_through_the_inverse(h, px, py):
    H = torch.eye(3, dtype=torch.float64) + torch.tensor(h + [0.0], dtype=torch.float64).reshape(3, 3) * torch.tensor(
        [[1, 1, 100], [1, 1, 100], [1e-3, 1e-3, 0]], dtype=torch.float64
    )
    p = torch.tensor([[px, py]], dtype=torch.float64) * 0.5
    q = warp_points(p, H)
    den = (H[2] @ torch.tensor([p[0, 0], p[0, 1], 1.0], dtype=torch.float64)).abs().item()
    if den > 0.05 and torch.linalg.det(H).abs() > 1e-3:
        assert torch.allclose(warp_points(q, torch.linalg.inv(H)), p, atol=1e-6 * (1 + p.abs().max().item()))


@SETTINGS
@given(coords, coords, st.floats(1.0, 100.0), angles)
def test_laf_round_trip(x, y, size, a):
    laf = laf_from_pose(
        torch.tensor([[x, y]], dtype=torch.float64),
        torch.tensor([size], dtype=torch.float64),
        torch.tensor([a], dtype=torch.float64),
    )
    c, s, o = pose_from_laf(laf)
    assert torch.allclose(c, torch.tensor([[x, y]], dtype=torch.float64), atol=1e-6)
    assert abs(s.item() - size) < 1e-6 * size and abs(angle_diff(o.item(), a)) < 1e-6


@SETTINGS
@given(st.floats(1.0, 200.0), angles)
def test_feature_patch_axis_points_along_the_orientation(side, a):
    """The canonical patch's +x axis is the feature's direction (cos, -sin) in y-down pixels."""
    A = feature_affines(np.array([side]), np.array([a]), 32)[0]
    assert np.allclose(A @ [1.0, 0.0], side / 32 * np.array([math.cos(a), -math.sin(a)]), atol=1e-9)
    assert np.isclose(np.linalg.det(A), (side / 32) ** 2)
