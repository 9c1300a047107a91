"""No silent fake poses: a frame without a single world point is marked not registered everywhere (never an
identity pose); a frame whose I2P points were all filtered out but that L2W placed is registered from its world
points; exported confidences are >= 1."""

from __future__ import annotations

import json

import numpy as np
import torch

from slam3r.data.synth import render_sequence
from slam3r.data.trajectory_io import read_tum_trajectory
from slam3r.recon.config import ReconConfig
from slam3r.recon.run import reconstruct


def test_frames_without_points_are_marked_not_registered(tiny_models, tmp_path):
    i2p, l2w = tiny_models
    rgb = render_sequence(seed=21, num_frames=14, width=96, height=72).rgb
    frames = [(i, im, 1_000_000_000 + i * 50_000_000) for i, im in enumerate(rgb)]
    # every I2P point below the threshold: the initial window's world points are all zero (nothing to place its
    # frames with); later frames still get world points from L2W
    cfg = ReconConfig(keyframe_stride=2, initial_winsize=3, win_r=2, conf_thres_i2p=1e6, conf_thres_l2w=1.0,
                      num_scene_frame=3)
    results = []
    out = tmp_path / "out"
    with torch.no_grad():
        summary = reconstruct(frames, i2p, l2w, cfg, out, online=True, progress=False, on_result=results.append)
    init = set(range(0, 5, 2))  # keyframes 0, 2, 4 of the initial window
    unregistered = [r.frame_id for r in results if not r.registered]
    assert set(unregistered) == init and summary.unregistered_frames == sorted(init)
    for r in results:
        assert r.conf.min() >= 1.0
        if r.registered:
            assert np.isfinite(r.pose_c2w).all() and not np.allclose(r.pose_c2w, np.eye(4))
        else:
            assert np.isnan(r.pose_c2w).all() and np.all(r.conf == 1.0) and not r.pts3d_world.any()
    cams = json.loads((out / "cameras.json").read_text())
    assert [c["frame_id"] for c in cams if not c["registered"]] == sorted(init)
    assert all(c["pose_c2w"] is None and c["focal"] is None for c in cams if not c["registered"])
    assert all(len(c["pose_c2w"]) == 4 and isinstance(c["focal"], float) for c in cams if c["registered"])
    stamps, poses = read_tum_trajectory(out / "trajectory.txt")
    expected = [1.0 + 0.05 * i for i in range(14) if i not in init]
    np.testing.assert_allclose(stamps, expected)
    assert not any(np.allclose(p, np.eye(4)) for p in poses)
    notes = [line for line in (out / "trajectory.txt").read_text().splitlines() if "not registered" in line]
    assert len(notes) == 3 and all(line.startswith("# frame ") for line in notes)
    confs = np.load(out / "preds" / "registered_confs.npy")
    assert confs.min() >= 1.0 and np.all(confs[sorted(init)] == 1.0)  # never above any threshold (all >= 1)
