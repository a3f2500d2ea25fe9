"""ssfeat's kornia adapters run inside kornia's own classes, on real photos."""

import math

import cv2
import numpy as np
import pytest
import torch
from kornia.feature import (
    BlobHessian,
    LAFOrienter,
    ScaleSpaceDetector,
    get_laf_center,
    get_laf_orientation,
    get_laf_scale,
    laf_from_center_scale_ori,
)

from ssfeat import PatchPoseEstimator, sample_images
from ssfeat.data.images import read_image
from ssfeat.inference.kornia_modules import KorniaOrientation, KorniaScale


@pytest.fixture(scope="module")
def est():
    return PatchPoseEstimator.from_pretrained("patchpose_tiny", c4=False)


@pytest.fixture(scope="module")
def photo():
    return read_image(sample_images()[0])


def _sift_xy(img: np.ndarray, n: int = 150) -> np.ndarray:
    kps = cv2.SIFT_create(nfeatures=n).detect((img * 255).astype(np.uint8), None)
    xy = np.array([k.pt for k in kps], np.float32)
    H, W = img.shape
    keep = (xy[:, 0] > 40) & (xy[:, 1] > 40) & (xy[:, 0] < W - 41) & (xy[:, 1] < H - 41)
    return xy[keep]


def _lafs(xy: np.ndarray, scale: float = 12.0) -> torch.Tensor:
    n = len(xy)
    return laf_from_center_scale_ori(torch.from_numpy(xy)[None], torch.full((1, n, 1, 1), scale), torch.zeros(1, n, 1))


def test_orientation_module_shape_units_and_grad(est):
    mod = KorniaOrientation(est)
    x = torch.rand(5, 1, 41, 41, requires_grad=True)
    a = mod(x)
    assert a.shape == (5,) and a.dtype == torch.float32
    assert ((a >= -math.pi) & (a < math.pi)).all()
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the same angle as the estimator, wrapped to [-pi, pi)
    ref = est(x.detach()).orientation
    assert torch.allclose(torch.remainder(a.detach() - ref, 2 * math.pi).clamp(max=1e-4), torch.zeros(5), atol=1e-4)
    assert mod.double()(x.detach().double()).dtype == torch.float64


def test_laforienter_follows_a_rotation_of_the_photo(est, photo):
    """LAFOrienter with ssfeat's angle detector: on the photo turned 90 degrees counter-clockwise
    (np.rot90), the LAF orientations at the corresponding points grow by 90 degrees."""
    orienter = LAFOrienter(32, angle_detector=KorniaOrientation(est))
    H, W = photo.shape
    xy = _sift_xy(photo)
    rot = np.ascontiguousarray(np.rot90(photo))
    xy_rot = np.stack([xy[:, 1], W - 1 - xy[:, 0]], 1)  # (x, y) -> (y, W - 1 - x)
    with torch.no_grad():
        o0 = get_laf_orientation(orienter(_lafs(xy), torch.from_numpy(photo)[None, None]))[0, :, 0]
        o1 = get_laf_orientation(orienter(_lafs(xy_rot), torch.from_numpy(rot)[None, None]))[0, :, 0]
    err = torch.remainder(o1 - o0 - 90 + 180, 360) - 180
    assert (err.abs() < 20).float().mean() > 0.8, err
    # and not the opposite sign
    err_neg = torch.remainder(o1 - o0 + 90 + 180, 360) - 180
    assert (err_neg.abs() < 20).float().mean() < 0.2


def test_scale_module_in_scale_space_detector(est, photo):
    """KorniaScale as ScaleSpaceDetector's aff_module, KorniaOrientation in its LAFOrienter."""
    det = ScaleSpaceDetector(
        100,
        resp_module=BlobHessian(),
        ori_module=LAFOrienter(32, angle_detector=KorniaOrientation(est)),
        aff_module=KorniaScale(est, mr_size=6.0),
        mr_size=6.0,
    )
    with torch.no_grad():
        lafs, resp = det(torch.from_numpy(photo)[None, None])
    assert lafs.shape == (1, 100, 2, 3) and torch.isfinite(lafs).all()


def test_scale_module_sets_the_estimated_size_and_keeps_the_rest(est, photo):
    xy = _sift_xy(photo, 60)
    laf = laf_from_center_scale_ori(
        torch.from_numpy(xy)[None], torch.full((1, len(xy), 1, 1), 7.0), torch.full((1, len(xy), 1), 33.0)
    )
    out = KorniaScale(est, mr_size=2.0)(laf, torch.from_numpy(photo)[None, None])
    size = est.keypoint_poses(photo, xy).size[:, 0]
    assert torch.allclose(get_laf_scale(out)[0, :, 0, 0], 2.0 * size / 2, rtol=1e-4)
    assert torch.allclose(get_laf_center(out), get_laf_center(laf))
    assert torch.allclose(get_laf_orientation(out), get_laf_orientation(laf), atol=1e-3)
    # a zoom of the photo by 2 doubles the sizes at the corresponding points (scale covariance)
    big = cv2.resize(photo, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)
    out2 = KorniaScale(est, mr_size=2.0)(_lafs(2 * xy + 0.5), torch.from_numpy(big)[None, None])
    ratio = get_laf_scale(out2)[0, :, 0, 0] / get_laf_scale(out)[0, :, 0, 0]
    assert abs(float(torch.log2(ratio).median()) - 1.0) < 0.25


def test_scale_module_refuses_bad_input(est):
    with pytest.raises(ValueError, match="laf must have shape"):
        KorniaScale(est)(torch.zeros(1, 3, 3, 3), torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="img must have shape"):
        KorniaScale(est)(torch.zeros(2, 3, 2, 3), torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="scale model"):
        KorniaScale(PatchPoseEstimator(est.model))
