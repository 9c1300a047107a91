"""Geometry helpers: Umeyama, Sim(3) / pose algebra, quaternions, (back-)projection, crop / resize intrinsics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slam3r.geometry import (
    apply_sim3,
    backproject_depth,
    crop_resize_intrinsics,
    depth_to_world,
    input_crop_resize,
    invert_pose,
    invert_sim3,
    matrix_to_sim3,
    project_points,
    quat_to_rotmat,
    rotmat_to_quat,
    sim3_to_matrix,
    transform_points,
    umeyama,
)


def random_sim3(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.2, 5.0)), Rotation.random(random_state=seed).as_matrix(), rng.normal(0, 3, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_umeyama_recovers_similarity(seed):
    s, R, t = random_sim3(seed)
    src = np.random.default_rng(seed + 10).normal(size=(50, 3))
    s2, R2, t2 = umeyama(src, apply_sim3(s, R, t, src))
    assert s2 == pytest.approx(s, rel=1e-10)
    np.testing.assert_allclose(R2, R, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-9)


def test_umeyama_rigid_and_reflection_free():
    src = np.random.default_rng(3).normal(size=(30, 3))
    # A mirrored target: the best proper rotation must still have det +1.
    dst = src * np.array([1.0, 1.0, -1.0])
    s, R, _ = umeyama(src, dst, with_scale=False)
    assert s == 1.0
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)


def test_umeyama_weights_ignore_outliers():
    s, R, t = random_sim3(4)
    rng = np.random.default_rng(5)
    src = rng.normal(size=(40, 3))
    dst = apply_sim3(s, R, t, src)
    dst[:10] += rng.normal(0, 5, (10, 3))  # corrupted pairs
    w = np.r_[np.zeros(10), np.ones(30)]
    s2, R2, t2 = umeyama(src, dst, weights=w)
    assert s2 == pytest.approx(s, rel=1e-9)
    np.testing.assert_allclose(R2, R, atol=1e-9)
    s3, _, _ = umeyama(src, dst)  # unweighted fit is pulled off by the outliers
    assert abs(s3 - s) > 1e-3


def test_umeyama_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        umeyama(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="identical"):
        umeyama(np.ones((5, 3)), np.zeros((5, 3)))


def test_sim3_matrix_roundtrip_and_inverse():
    s, R, t = random_sim3(6)
    M = sim3_to_matrix(s, R, t)
    s2, R2, t2 = matrix_to_sim3(M)
    assert s2 == pytest.approx(s)
    np.testing.assert_allclose(R2, R, atol=1e-12)
    pts = np.random.default_rng(7).normal(size=(20, 3))
    np.testing.assert_allclose(transform_points(M, pts), apply_sim3(s, R, t, pts), atol=1e-12)
    np.testing.assert_allclose(apply_sim3(*invert_sim3(s, R, t), apply_sim3(s, R, t, pts)), pts, atol=1e-10)


def test_invert_pose_and_batched_transform_numpy_and_torch():
    poses = np.stack([sim3_to_matrix(1.0, *random_sim3(i)[1:]) for i in range(4)])
    np.testing.assert_allclose(invert_pose(poses) @ poses, np.tile(np.eye(4), (4, 1, 1)), atol=1e-12)
    pts = np.random.default_rng(8).normal(size=(4, 5, 6, 3))
    out = transform_points(poses, pts)
    assert out.shape == pts.shape
    np.testing.assert_allclose(out[2, 1, 3], poses[2, :3, :3] @ pts[2, 1, 3] + poses[2, :3, 3], atol=1e-12)
    out_t = transform_points(torch.from_numpy(poses), torch.from_numpy(pts))
    np.testing.assert_allclose(out_t.numpy(), out, atol=1e-12)
    np.testing.assert_allclose(invert_pose(torch.from_numpy(poses)).numpy(), invert_pose(poses), atol=1e-12)


def test_quaternion_roundtrip_including_half_turns():
    Rs = [Rotation.random(random_state=i).as_matrix() for i in range(20)]
    for axis in ([1, 0, 0], [1, -1, 0], [0, 1, 1], [1, 1, 1]):
        Rs.append(Rotation.from_rotvec(np.pi * np.array(axis) / np.linalg.norm(axis)).as_matrix())
    Rs = np.stack(Rs)
    q = rotmat_to_quat(Rs)
    assert np.all(q[:, 3] >= 0)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat(q), Rs, atol=1e-12)
    # agrees with scipy's (x, y, z, w) convention up to sign
    ref = Rotation.from_matrix(Rs).as_quat()
    np.testing.assert_allclose(np.abs(np.sum(q * ref, axis=1)), 1.0, atol=1e-12)


def test_backproject_project_roundtrip_and_world():
    K = np.array([[100.0, 0, 31.5], [0, 110.0, 23.5], [0, 0, 1]])
    depth = np.random.default_rng(9).uniform(0.5, 4.0, (48, 64)).astype(np.float64)
    pts = backproject_depth(depth, K)
    assert pts.shape == (48, 64, 3)
    uv, z = project_points(pts, K)
    v, u = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-9)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-9)
    np.testing.assert_allclose(z, depth)
    # a pixel at the principal point sits on the optical axis
    assert pts[0, 0, 0] == pytest.approx((0 - 31.5) / 100.0 * depth[0, 0])
    c2w = sim3_to_matrix(1.0, *random_sim3(10)[1:])
    world = depth_to_world(depth, K, c2w)
    np.testing.assert_allclose(world, pts @ c2w[:3, :3].T + c2w[:3, 3], atol=1e-12)
    pts_t = backproject_depth(torch.from_numpy(depth), torch.from_numpy(K))
    np.testing.assert_allclose(pts_t.numpy(), pts, atol=1e-12)


@pytest.mark.parametrize(
    "w,h,expected",
    [
        (640, 480, (299, 224, 37, 0)),  # long side round(224 * 4/3) = 299, crop box x from 149 - 112
        (1200, 680, (395, 224, 85, 0)),  # Replica
        (480, 640, (224, 299, 0, 37)),  # portrait
        (224, 224, (224, 224, 0, 0)),
    ],
)
def test_input_crop_resize_geometry(w, h, expected):
    g = input_crop_resize(w, h, 224)
    assert (g.resized_w, g.resized_h, g.left, g.top) == expected
    assert g.size == 224


def test_crop_resize_intrinsics_maps_pixel_centres():
    K = np.array([[500.0, 0, 319.5], [0, 500.0, 239.5], [0, 0, 1]])
    Kc = crop_resize_intrinsics(K, 640, 480, 224)
    g = input_crop_resize(640, 480, 224)
    # A 3D point seen at source pixel (u, v) must appear at ((u + .5) * a - .5 - left, ...) in the crop.
    X = np.array([0.3, -0.2, 2.0])
    uv, _ = project_points(X, K)
    uv_c, _ = project_points(X, Kc)
    assert uv_c[0] == pytest.approx((uv[0] + 0.5) * g.scale_x - 0.5 - g.left)
    assert uv_c[1] == pytest.approx((uv[1] + 0.5) * g.scale_y - 0.5 - g.top)


def test_similarity_fit_recovers_a_similarity_and_ignores_zero_weights():
    from slam3r.recon.camera import similarity_fit

    rng = np.random.default_rng(7)
    src = torch.from_numpy(rng.normal(size=(8, 9, 3)))
    rot = torch.from_numpy(Rotation.random(random_state=3).as_matrix())
    dst = 2.5 * src @ rot.T + torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64)
    weights = torch.ones(8, 9, dtype=torch.float64)
    dst[0, :4] += 100.0  # outliers with zero weight
    weights[0, :4] = 0
    s, r, t = similarity_fit(src, dst, weights)
    assert abs(s.item() - 2.5) < 1e-9
    assert torch.allclose(r, rot, atol=1e-9)
    assert torch.allclose(t, torch.tensor([0.3, -1.0, 4.0], dtype=torch.float64), atol=1e-9)
    assert torch.linalg.det(r).item() > 0
    # two weighted points cannot fix a similarity: the identity, not an exception mid-reconstruction
    weights[:] = 0
    weights[1, :2] = 1
    s, r, t = similarity_fit(src, dst, weights)
    assert s.item() == 1.0 and torch.equal(r, torch.eye(3, dtype=torch.float64)) and not t.any()


def test_estimate_focal_recovers_a_batch_of_pinholes_despite_outliers():
    from slam3r.recon.camera import centred_pixel_grid, estimate_focal

    h, w, focals = 12, 16, torch.tensor([80.0, 120.0])
    depth = 2.0 + torch.rand(2, h, w, generator=torch.Generator().manual_seed(0))
    uv = centred_pixel_grid(h, w)
    pts = torch.cat([uv * depth[..., None] / focals[:, None, None, None], depth[..., None]], dim=-1)
    weights = torch.ones(2, h, w)
    pts[0, 0, :3] *= -1.0  # behind the camera: ignored
    pts[1, 1, :4, :2] *= 3.0  # a few weighted outliers: the L1 fit is not pulled
    weights[1, 2, :5], pts[1, 2, :5, :2] = 0.0, 0.0  # unweighted garbage
    est = estimate_focal(pts, weights)
    assert est.shape == (2,)
    assert torch.allclose(est, focals, rtol=1e-3)


def test_rotation_angle_deg():
    from slam3r.geometry import rotation_angle_deg

    rots = Rotation.from_rotvec([[0, 0, 0], [0, 0.3, 0], [np.pi, 0, 0], [0.1, -0.2, 0.4]]).as_matrix()
    np.testing.assert_allclose(rotation_angle_deg(rots), np.degrees([0, 0.3, np.pi, np.sqrt(0.21)]), atol=1e-6)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_umeyama_torch_batched_matches_scipy(device, dtype):
    """Batched fits on any device and dtype recover known similarities; rotations equal scipy's weighted Kabsch."""
    from slam3r.geometry.align import umeyama_torch

    sims = [random_sim3(seed) for seed in range(4)]
    rng = np.random.default_rng(11)
    src = rng.normal(size=(4, 60, 3))
    dst = np.stack([apply_sim3(s, R, t, p) + rng.normal(0, 0.01, p.shape) for (s, R, t), p in zip(sims, src)])
    w = rng.uniform(0.1, 2.0, size=(4, 60))
    as_t = lambda x: torch.as_tensor(x, dtype=dtype, device=device)  # noqa: E731
    s, rot, t, ok = umeyama_torch(as_t(src), as_t(dst), as_t(w))
    assert s.dtype == rot.dtype == t.dtype == dtype and s.device.type == device and bool(ok.all())
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for i, (s0, r0, _) in enumerate(sims):
        assert float(s[i]) == pytest.approx(s0, rel=0.01)
        mu_s, mu_d = np.average(src[i], 0, w[i]), np.average(dst[i], 0, w[i])
        ref, _ = Rotation.align_vectors(dst[i] - mu_d, src[i] - mu_s, weights=w[i])
        np.testing.assert_allclose(rot[i].cpu().double().numpy(), ref.as_matrix(), atol=tol)
        s_np, r_np, t_np = umeyama(src[i], dst[i], w[i])  # the numpy face gives the same fit
        np.testing.assert_allclose(t[i].cpu().double().numpy(), t_np, atol=100 * tol)
        assert float(s[i]) == pytest.approx(s_np, rel=100 * tol)


def test_umeyama_torch_degenerate_elements_are_identity():
    from slam3r.geometry.align import umeyama_torch

    src = torch.randn(3, 10, 3, dtype=torch.float64)
    w = torch.ones(3, 10, dtype=torch.float64)
    w[1, 2:] = 0  # two weighted pairs only
    src[2] = 1.5  # all source points identical: no scale
    dst = 2 * src + 1
    s, rot, t, ok = umeyama_torch(src, dst, w)
    assert ok.tolist() == [True, False, False]
    assert float(s[0]) == pytest.approx(2.0) and torch.allclose(t[0], torch.ones(3, dtype=torch.float64))
    for i in (1, 2):
        assert float(s[i]) == 1.0 and torch.equal(rot[i], torch.eye(3, dtype=torch.float64))
        assert torch.equal(t[i], torch.zeros(3, dtype=torch.float64))
    _, _, _, ok_rigid = umeyama_torch(src, dst, w, with_scale=False)
    assert ok_rigid.tolist() == [True, False, True]  # a rigid fit needs no spread for the scale
