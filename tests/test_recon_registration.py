"""Geometric registration backends: with ground-truth I2P the window-overlap fit is exact, offline and streaming,
and the L2W network is not called after the initial span; the optical-flow fit recovers the trajectory without
L2W."""

from __future__ import annotations

import numpy as np
import pytest

from slam3r.data.synth import render_sequence
from slam3r.geometry.camera import backproject_depth
from slam3r.config import ConfigError
from slam3r.geometry.transforms import (quat_to_rotmat, robust_umeyama, rotation_angle_deg, scale_translation_fit,
                                         sim3_to_matrix, umeyama)
from slam3r.recon.config import ReconConfig
from slam3r.recon.offline import run_offline
from slam3r.recon.registration import register_from_window
from slam3r.recon.streaming import StreamingReconstructor
from test_recon_oracle import S, OracleI2P, OracleL2W, Scene, check, frame_id_image, scene  # noqa: F401  (fixture)


class CountingL2W(OracleL2W):
    calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return super().__call__(*args, **kwargs)


@pytest.mark.parametrize("stride", [2, 3])
def test_offline_geometric_registration_is_exact_with_oracle_i2p(scene, stride):  # noqa: F811
    l2w = CountingL2W(scene)
    cfg = ReconConfig(keyframe_stride=stride, win_r=2, num_scene_frame=3, buffer_size=6, conf_thres_l2w=3,
                      registration="geometric")
    engine, it = run_offline(OracleI2P(scene), l2w, list(scene.rgb), cfg, chunk=7)
    check(list(it), scene)
    assert l2w.calls == 1  # only the initial span's inner frames


def test_streaming_geometric_registration(scene):  # noqa: F811
    l2w = CountingL2W(scene)
    rec = StreamingReconstructor(OracleI2P(scene), l2w, ReconConfig(keyframe_stride=2, win_r=3, num_scene_frame=4,
                                                                    buffer_size=6, registration="geometric"))
    results = [r for im in scene.rgb for r in rec.push(im)] + rec.flush()
    check(results, scene)
    assert l2w.calls <= 1


def test_register_from_window_is_robust_and_reports_inliers():
    rng = np.random.default_rng(2)
    cam = rng.normal(size=(2, 8, 8, 3)) + np.array([0, 0, 3.0])
    T = sim3_to_matrix(0.6, quat_to_rotmat(np.array([0.1, 0.3, -0.2, 0.9])), np.array([1.0, 2.0, -0.5]))
    world = cam @ T[:3, :3].T + T[:3, 3]
    world[0, :2] += 5.0  # 16 of 128 pixels wrong
    est, inliers = register_from_window(cam, np.ones((2, 8, 8)), world)
    np.testing.assert_allclose(est, T, atol=1e-6)
    assert inliers == pytest.approx(112 / 128)
    with pytest.raises(ValueError, match="fewer than 3"):
        register_from_window(cam, np.zeros((2, 8, 8)), world)


@pytest.fixture(scope="module")
def slow_scene() -> Scene:
    """The oracle scene's seed at a camera speed optical flow tracks (0.4 loops in 48 frames, a few pixels per
    frame at 64 px, as at the benchmarks' 150 frames per loop at 112 px; the oracle scene's 1.25 loops move
    up to 30 px per frame)."""
    seq = render_sequence(seed=123, num_frames=48, width=S, height=S, kind="handheld", loops=0.4)
    cam = backproject_depth(seq.depth, seq.K)
    world = cam @ np.transpose(seq.c2w[:, None, :3, :3], (0, 1, 3, 2)) + seq.c2w[:, None, None, :3, 3]
    rgb = np.stack([frame_id_image(im, i) for i, im in enumerate(seq.rgb)])
    return Scene(rgb, cam.astype(np.float32), world.astype(np.float32), seq.c2w)


@pytest.mark.parametrize("streaming", [False, True])
def test_flow_registration_recovers_the_trajectory_with_oracle_i2p(slow_scene, streaming):
    """``registration: flow`` matches pixels by optical flow, not by the network: with GT I2P points the camera's
    rotations and path are recovered up to the flow's sub-pixel error, without L2W."""
    scene = slow_scene
    l2w = CountingL2W(scene)
    cfg = ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=6, registration="flow")
    if streaming:
        rec = StreamingReconstructor(OracleI2P(scene), l2w, cfg)
        results = [r for im in scene.rgb for r in rec.push(im)] + rec.flush()
    else:
        results = list(run_offline(OracleI2P(scene), l2w, list(scene.rgb), cfg, chunk=7)[1])
    assert [r.frame_id for r in results] == list(range(len(scene.rgb))) and l2w.calls == 0
    pred = np.stack([r.pose_c2w for r in results])
    s, rot, t = umeyama(pred[:, :3, 3], scene.c2w[:, :3, 3])
    path = np.linalg.norm(np.diff(scene.c2w[:, :3, 3], axis=0), axis=1).sum()
    ate = np.sqrt(np.mean(np.sum((s * pred[:, :3, 3] @ rot.T + t - scene.c2w[:, :3, 3]) ** 2, axis=1)))
    assert ate < 0.02 * path, f"ATE {ate:.3f} m on a {path:.2f} m path"
    rel = np.swapaxes(pred[0, :3, :3], -1, -2) @ pred[:, :3, :3]  # rotation from the first camera
    gt_rel = np.swapaxes(scene.c2w[0, :3, :3], -1, -2) @ scene.c2w[:, :3, :3]
    err, turn = rotation_angle_deg(np.swapaxes(rel, -1, -2) @ gt_rel), rotation_angle_deg(gt_rel)
    print(f"flow registration: ATE {ate:.3f} m on a {path:.2f} m path; rotation error up to {err.max():.2f} deg, "
          f"camera turns up to {turn.max():.1f} deg")
    assert err.max() < 0.1 * turn.max()  # frame-to-frame drift of the sub-pixel flow at 64 px: about 0.1 deg per frame


class FlatI2P(OracleI2P):
    """GT I2P with the depth flattened towards each view's median along the rays (depth relief x0.3), the way the
    bundled small model's depth is: the surfaces look fronto-parallel, so a fit of the points under-turns."""

    def __call__(self, tokens, ref_id: int = 0, *, ref_only: bool = False):
        out = super().__call__(tokens, ref_id, ref_only=ref_only)
        z = out.pts3d[..., 2:3]
        med = z.flatten(-3).median(dim=-1).values[..., None, None, None]
        return type(out)(out.pts3d * (med + 0.3 * (z - med)) / z, out.conf)


def _rotation_drift(scene, i2p, **cfg_kw) -> float:
    """Largest rotation error (deg) of the flow-registered trajectory relative to the first camera."""
    cfg = ReconConfig(keyframe_stride=2, win_r=2, num_scene_frame=3, buffer_size=6, registration="flow", **cfg_kw)
    pred = np.stack([r.pose_c2w for r in run_offline(i2p, CountingL2W(scene), list(scene.rgb), cfg, chunk=7)[1]])
    rel = np.swapaxes(pred[0, :3, :3], -1, -2) @ pred[:, :3, :3]
    gt_rel = np.swapaxes(scene.c2w[0, :3, :3], -1, -2) @ scene.c2w[:, :3, :3]
    return float(rotation_angle_deg(np.swapaxes(rel, -1, -2) @ gt_rel).max())


def test_flow_rotation_from_the_images_resists_flattened_depth(slow_scene):
    """With flattened depth the points' own fit under-turns the camera; the rotation read from the flow's
    homographies (parallax-corrected) does not depend on the depth's relief."""
    fit = _rotation_drift(slow_scene, FlatI2P(slow_scene), flow_rotation="fit")
    image = _rotation_drift(slow_scene, FlatI2P(slow_scene), flow_rotation="homography")
    print(f"flattened depth: rotation drift {fit:.2f} deg (point fit) vs {image:.2f} deg (homography)")
    assert image < 0.5 * fit


def test_flow_registration_with_several_reference_frames_drifts_less(slow_scene):
    """``flow_refs``: every frame matched to several earlier frames (by composing the flows the frames in between
    kept) averages the single steps' errors: with GT I2P the rotation drift shrinks as references are added."""
    turn = rotation_angle_deg(np.swapaxes(slow_scene.c2w[0, :3, :3], -1, -2) @ slow_scene.c2w[:, :3, :3]).max()
    drift = {refs: _rotation_drift(slow_scene, OracleI2P(slow_scene), flow_refs=refs) for refs in [(1,), (1, 2, 4)]}
    print(f"rotation drift with GT I2P: {drift}")
    assert drift[(1, 2, 4)] < 0.8 * drift[(1,)] and drift[(1,)] < 0.1 * turn


def test_flow_refs_are_validated():
    for bad in [(), (0, 1), (1, 1), (2, 4)]:
        with pytest.raises(ConfigError, match="flow_refs"):
            ReconConfig(flow_refs=bad).validate()


def test_scale_translation_fit_with_a_known_rotation():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(200, 3))
    R = quat_to_rotmat(np.array([0.2, -0.1, 0.4, 0.9]))
    dst = 1.7 * src @ R.T + np.array([0.3, -1.0, 2.0])
    dst[:20] += 3.0  # outliers
    s, R_out, t, inl = robust_umeyama(src, dst, None, 0.05, rotation=R)
    assert s == pytest.approx(1.7) and np.allclose(t, [0.3, -1.0, 2.0]) and np.array_equal(R_out, R)
    assert inl.sum() == 180
    s, _, t = scale_translation_fit(src[20:], dst[20:], None, R)
    assert s == pytest.approx(1.7) and np.allclose(t, [0.3, -1.0, 2.0])
    with pytest.raises(ValueError, match="identical"):
        scale_translation_fit(np.tile(src[:1] + 100.0, (50, 1)), dst[:50], None, R)


def test_robust_umeyama_early_stop_keeps_the_fit():
    rng = np.random.default_rng(6)
    src = rng.normal(size=(2000, 3)) + np.array([0.0, 0.0, 4.0])
    R = quat_to_rotmat(np.array([0.1, 0.2, -0.3, 0.9]))
    dst = 0.8 * src @ R.T + np.array([1.0, 0.5, -2.0]) + rng.normal(0, 0.01, src.shape)
    bad = rng.random(2000) < 0.25
    dst[bad] += rng.normal(0, 0.5, (bad.sum(), 3))
    for rot in (R, None):
        full = robust_umeyama(src, dst, None, 0.05, iters=30, rotation=rot)
        early = robust_umeyama(src, dst, None, 0.05, iters=30, rotation=rot, tol=1e-3)
        assert early[0] == pytest.approx(full[0], rel=1e-5) and np.allclose(early[2], full[2], atol=1e-4)
        assert np.abs(early[1] - full[1]).max() < 1e-5 and (early[3] != full[3]).sum() <= 2
        assert np.abs(full[1] - R).max() < 1e-2 and (full[3] == ~bad).mean() > 0.97


def test_a_frames_focal_is_estimated_once_per_points_and_weights(monkeypatch):
    import torch

    import slam3r.recon.engine as engine
    from slam3r.recon.camera import estimate_focal

    calls = []
    monkeypatch.setattr(engine, "estimate_focal", lambda *a: calls.append(1) or estimate_focal(*a))
    rng = np.random.default_rng(0)
    f = engine._Frame(rgb=np.zeros((6, 8, 3), np.uint8), timestamp_ns=None,
                      local=torch.from_numpy(rng.normal(size=(6, 8, 3)) + np.array([0.0, 0.0, 3.0])).float())
    w = torch.rand(6, 8)
    first = engine.Engine._focal(f, w)
    assert engine.Engine._focal(f, w.clone()) == first and len(calls) == 1  # equal weights: reused (the pose's)
    w2 = w.clone()
    w2[0, 0] = 0.0
    engine.Engine._focal(f, w2)
    f.local = f.local * 2.0
    engine.Engine._focal(f, w2)
    assert len(calls) == 3  # other weights, other points: estimated again
