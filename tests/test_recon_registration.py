"""Geometric registration backend: with ground-truth I2P the window-overlap fit is exact, offline and streaming,
and the L2W network is not called after the initial span."""

from __future__ import annotations

import numpy as np
import pytest

from slam3r.geometry.transforms import quat_to_rotmat, sim3_to_matrix
from slam3r.recon.config import ReconConfig
from slam3r.recon.offline import run_offline
from slam3r.recon.registration import register_from_window
from slam3r.recon.streaming import StreamingReconstructor
from test_recon_oracle import OracleI2P, OracleL2W, check, scene  # noqa: F401  (fixture)


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
