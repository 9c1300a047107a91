"""Procedural scenes: determinism, exact depth, multi-view consistency, trajectories, GT pointmap cropping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from slam3r.data.pointmaps import crop_resize_depth, gt_pointmaps
from slam3r.data.synth import make_scene, make_trajectory, render, render_sequence
from slam3r.data.synth.render import camera_rays
from slam3r.data.synth.scene import Primitive, Scene, rot_z
from slam3r.data.synth.trajectory import look_pose
from slam3r.geometry import backproject_depth, depth_to_world, intrinsics_from_fov, invert_pose, project_points


def test_same_seed_same_images_different_seed_different():
    a = render_sequence(7, 3, 48, 36)
    b = render_sequence(7, 3, 48, 36)
    c = render_sequence(8, 3, 48, 36)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth) and np.array_equal(a.c2w, b.c2w)
    assert not np.array_equal(a.rgb, c.rgb)
    assert a.rgb.dtype == np.uint8 and a.rgb.shape == (3, 36, 48, 3)
    assert a.depth.dtype == np.float32 and a.depth.shape == (3, 36, 48)
    assert a.K.shape == (3, 3) and a.c2w.shape == (3, 4, 4)


def test_images_carry_texture():
    seq = render_sequence(1_000_000, 2, 96, 72)
    gray = seq.rgb.astype(float).mean(-1)
    # local gradients everywhere: a flat-shaded renderer would have most gradients exactly 0
    grad = np.abs(np.diff(gray, axis=2))
    assert np.mean(grad > 0.5) > 0.5
    assert gray.std() > 10


def _simple_scene() -> Scene:
    base = make_scene(0)
    prims = [
        Primitive("sphere", np.array([2.0, 0.0, 1.5]), np.eye(3), np.array([0.5, 0.5, 0.5]), 0),
        Primitive("box", np.array([2.0, 1.2, 1.0]), rot_z(0.4), np.array([0.3, 0.2, 0.5]), 1),
        Primitive("cylinder", np.array([2.2, -1.3, 0.8]), np.eye(3), np.array([0.25, 0.25, 0.8]), 2),
    ]
    lo, hi = np.array([-3.0, -3.0, 0.0]), np.array([3.0, 3.0, 3.0])
    return Scene(0, lo, hi, base.face_materials, prims, base.materials, base.lighting, base.noise)


def test_depth_matches_analytic_distances():
    scene = _simple_scene()
    W, H = 81, 61
    K = intrinsics_from_fov(W, H, 90.0)
    c2w = look_pose(np.array([[0.0, 0.0, 1.5]]), np.zeros(1), np.zeros(1), np.zeros(1))[0]
    _, depth = render(scene, c2w, K, W, H)
    # optical axis hits the sphere's front point: z-depth = 2 - 0.5
    assert depth[30, 40] == pytest.approx(1.5, abs=1e-5)
    # floor (z = 0, camera 1.5 m above, y down): z-depth = 1.5 * fy / (v - cy) where the floor is seen
    v = H - 1
    assert depth[v, 5] == pytest.approx(1.5 * K[1, 1] / (v - K[1, 2]), rel=1e-5)
    # the far wall x = 3 is fronto-parallel: every pixel that sees it has z-depth exactly 3
    pts = depth_to_world(depth, K, c2w)
    on_wall = np.abs(pts[..., 0] - 3.0) < 1e-4
    assert on_wall.sum() > 100
    np.testing.assert_allclose(depth[on_wall], 3.0, atol=1e-5)


@pytest.mark.parametrize("seed", [3, 1_000_002])
def test_every_hit_lies_on_a_surface_and_the_ray_before_it_is_free(seed):
    scene = make_scene(seed)
    c2w = make_trajectory(scene, 5, seed)[2]
    W, H = 64, 48
    K = intrinsics_from_fov(W, H, 70.0)
    _, depth = render(scene, c2w, K, W, H)
    assert np.all(depth > 0)
    hit = depth_to_world(depth.astype(np.float64), K, c2w).reshape(-1, 3)
    # independent check via the signed distance functions (a different code path from the ray intersections)
    assert np.abs(scene.clearance(hit)).max() < 2e-4
    rays = camera_rays(K, c2w, W, H).reshape(3, -1).T.astype(np.float64)
    for frac in (0.5, 0.97):
        before = c2w[:3, 3] + frac * depth.reshape(-1, 1) * rays
        assert scene.clearance(before).min() > 0


def test_two_views_agree_in_world_coordinates():
    scene = make_scene(1_000_003)
    c2w = make_trajectory(scene, 100, 1_000_003)[[10, 13]]
    W, H = 160, 120
    K = intrinsics_from_fov(W, H, 70.0)
    depth = np.stack([render(scene, pose, K, W, H)[1] for pose in c2w])
    pts_a = depth_to_world(depth[0].astype(np.float64), K, c2w[0]).reshape(-1, 3)
    w2c_b = invert_pose(c2w[1])
    uv, z = project_points(pts_a @ w2c_b[:3, :3].T + w2c_b[:3, 3], K)
    inside = (z > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] <= W - 1.001) & (uv[:, 1] >= 0) & (uv[:, 1] <= H - 1.001)
    assert inside.mean() > 0.3, "the two views should overlap"
    uv, z = uv[inside], z[inside]
    # inverse depth is bilinear-exact inside a plane: interpolate 1/z of view B at the projected positions
    u0, v0 = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
    inv = 1.0 / depth[1].astype(np.float64)
    corners = np.stack([inv[v0, u0], inv[v0, u0 + 1], inv[v0 + 1, u0], inv[v0 + 1, u0 + 1]])
    # The 4 neighbours see one plane (no depth edge or crease): 1/z is affine there, so the parallelogram rule holds.
    smooth = np.abs(corners[0] + corners[3] - corners[1] - corners[2]) < 1e-4 * corners.min(0)
    smooth &= corners.max(0) - corners.min(0) < 0.05 * corners.min(0)
    interp = ((1 - fv) * ((1 - fu) * corners[0] + fu * corners[1]) + fv * ((1 - fu) * corners[2] + fu * corners[3]))
    err = 1.0 / interp - z
    occluded = err < -0.05  # something in front of A's point when seen from B
    assert occluded[smooth].mean() < 0.1
    visible = smooth & ~occluded
    assert visible.sum() > 2000
    assert np.median(np.abs(err[visible])) < 1e-4
    assert np.quantile(np.abs(err[visible]), 0.99) < 1e-3


def test_gt_pointmaps_crop_equals_direct_render_of_the_crop():
    # 120x96 -> short side 32: resized to 40x32 (exactly 1/3), crop x in [4, 36). Each crop pixel samples the source
    # pixel at its exact centre, so the GT pointmap equals a render with the cropped intrinsics.
    scene = make_scene(11)
    c2w = make_trajectory(scene, 3, 11)[1]
    K = intrinsics_from_fov(120, 96, 75.0)
    _, depth = render(scene, c2w, K, 120, 96)
    d_crop, K_crop = crop_resize_depth(depth, K, 32)
    assert d_crop.shape == (32, 32)
    _, depth_direct = render(scene, c2w, K_crop, 32, 32)
    np.testing.assert_allclose(d_crop, depth_direct, atol=1e-5)
    pts, valid = gt_pointmaps(depth[None], K, c2w[None], 32)
    assert pts.shape == (1, 32, 32, 3) and valid.all()
    direct = depth_to_world(depth_direct.astype(np.float64), K_crop, c2w)
    np.testing.assert_allclose(pts[0], direct, atol=1e-4)


def test_gt_pointmaps_mask_invalid_depth():
    depth = np.full((2, 48, 64), 2.0, np.float32)
    depth[0, :, :20] = 0.0
    depth[1, 20:30] = np.nan
    K = intrinsics_from_fov(64, 48, 60.0)
    pts, valid = gt_pointmaps(depth, K, np.tile(np.eye(4), (2, 1, 1)), 16)
    assert not valid[0, :, 0].any() and valid[0, :, -1].all()
    assert (~valid[1]).sum() >= 1 and np.isfinite(pts).all()
    assert np.all(pts[~valid] == 0)
    np.testing.assert_allclose(pts[valid][:, 2], 2.0)


@pytest.mark.parametrize("kind", ["handheld", "drone"])
def test_trajectories_are_smooth_inside_and_revisit(kind):
    for seed in (0, 5, 1_000_000):
        scene = make_scene(seed)
        c2w = make_trajectory(scene, 200, seed, kind=kind)
        R = c2w[:, :3, :3]
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.tile(np.eye(3), (200, 1, 1)), atol=1e-9)
        assert np.allclose(np.linalg.det(R), 1.0)
        pos = c2w[:, :3, 3]
        assert np.all(np.minimum(pos - scene.lo, scene.hi - pos) >= 0.5)
        assert scene.clearance(pos).min() >= 0.3
        step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        rel = np.einsum("nji,njk->nik", R[:-1], R[1:])
        angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        assert step.max() < 0.15 and angle.max() < 8.0
        # 1.25 loops: the last frames come back close to where the sequence started
        d_end = np.linalg.norm(pos[-25:, None] - pos[None, :25], axis=-1).min()
        assert d_end < 0.1
        # it looks somewhat downwards/level, never at the ceiling
        assert np.all(R[:, 2, 2] < 0.3)


def test_trajectory_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown trajectory kind"):
        make_trajectory(make_scene(0), 10, 0, kind="car")


def test_look_pose_axes():
    T = look_pose(np.zeros((1, 3)), np.array([math.pi / 2]), np.zeros(1), np.zeros(1))[0]
    np.testing.assert_allclose(T[:3, 2], [0, 1, 0], atol=1e-12)  # forward = +y for yaw 90 deg
    np.testing.assert_allclose(T[:3, 1], [0, 0, -1], atol=1e-12)  # image down = world down
    np.testing.assert_allclose(np.cross(T[:3, 0], T[:3, 1]), T[:3, 2], atol=1e-12)  # right-handed


def test_backprojection_of_render_is_consistent_with_camera_rays():
    scene = make_scene(2)
    c2w = make_trajectory(scene, 2, 2)[0]
    K = intrinsics_from_fov(40, 30, 60.0)
    _, depth = render(scene, c2w, K, 40, 30)
    cam = backproject_depth(depth.astype(np.float64), K)
    rays = camera_rays(K, c2w, 40, 30).transpose(1, 2, 0)
    np.testing.assert_allclose(cam @ c2w[:3, :3].T, depth[..., None] * rays, atol=1e-4)


def test_banded_multithreaded_render_is_identical():
    scene = make_scene(9)
    c2w = make_trajectory(scene, 4, 9)[1]
    K = intrinsics_from_fov(70, 53, 65.0)
    rgb1, d1 = render(scene, c2w, K, 70, 53)
    rgb3, d3 = render(scene, c2w, K, 70, 53, threads=3)
    assert np.array_equal(rgb1, rgb3) and np.array_equal(d1, d3)
