"""Evaluation: published reconstruction protocol, metric definitions, RANSAC, ATE and the eval / synth CLIs."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slam3r.cli import main as slam3r_main
from slam3r.data.pointmaps import gt_pointmaps, sequence_gt_pointmaps
from slam3r.data.replica import read_replica
from slam3r.data.sources import VideoSource
from slam3r.data.synth import make_scene, make_trajectory, render
from slam3r.data.trajectory_io import write_tum_trajectory
from slam3r.eval.align import minimal_similarity, ransac_similarity, voxel_downsample
from slam3r.eval.heatmap import error_colors
from slam3r.eval.metrics import cloud_metrics
from slam3r.eval.recon import EvalConfig, evaluate_pointcloud, evaluate_pointmaps, select_pairs
from slam3r.eval.trajectory import ate, evaluate_trajectory
from slam3r.geometry import apply_sim3, intrinsics_from_fov, matrix_to_sim3

CFG = EvalConfig(num_samples=30_000)


@pytest.fixture(scope="module")
def gt():
    """GT pointmaps (4, 112, 112, 3) + valid masks of four nearby views of a held-out scene."""
    scene = make_scene(1_000_005)
    c2w = make_trajectory(scene, 100, 1_000_005)[[0, 6, 12, 18]]
    K = intrinsics_from_fov(160, 120, 70.0)
    depth = np.stack([render(scene, pose, K, 160, 120)[1] for pose in c2w])
    return gt_pointmaps(depth, K, c2w, 112)


def sim3(seed: int) -> tuple[float, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return float(rng.uniform(0.3, 3.0)), Rotation.random(random_state=seed).as_matrix(), rng.normal(0, 2, 3)


def test_gt_against_itself_scores_zero(gt):
    pts, valid = gt
    rep = evaluate_pointmaps(pts, np.full(valid.shape, 10.0), pts, valid, CFG)
    m = rep.metrics
    assert m.accuracy_cm < 1e-6 and m.completion_cm < 1e-6 and m.chamfer_l2_cm2 < 1e-10
    assert m.fscore_1cm == pytest.approx(1.0) and m.completion_ratio_5cm == 1.0
    assert not rep.failed
    np.testing.assert_allclose(rep.transform, np.eye(4), atol=1e-6)
    assert rep.num_pairs == 30_000 and rep.num_candidates == valid.sum()
    d = rep.to_dict()
    json.dumps(d)
    assert d["scale"] == pytest.approx(1.0)


@pytest.mark.parametrize("refine", [False, True])
def test_similarity_plus_1cm_noise_is_aligned_back_to_the_noise_level(gt, refine):
    pts, valid = gt
    noise = np.random.default_rng(0).normal(0, 0.01, pts.shape)
    s, R, t = sim3(1)
    pred = apply_sim3(s, R, t, pts + noise)
    conf = np.full(valid.shape, 10.0)
    cfg = EvalConfig(num_samples=30_000, refine_inliers=refine)
    rep = evaluate_pointmaps(pred, conf, pts, valid, cfg)
    # The noise level: the same sampled pairs, noisy copy placed with the *true* transform, same voxelisation.
    noisy_sel, gt_sel, _ = select_pairs(pts + noise, conf, pts, valid, cfg)
    base, _, _ = cloud_metrics(voxel_downsample(noisy_sel, cfg.final_voxel), voxel_downsample(gt_sel, cfg.final_voxel))
    assert 0.5 < base.accuracy_cm < 1.6  # NN distance of 1 cm isotropic noise (points lie on surfaces, not a volume)
    assert not rep.failed
    s_est, R_est, _ = matrix_to_sim3(rep.transform)
    assert np.degrees(Rotation.from_matrix(R_est @ R).magnitude()) < 0.5
    if refine:
        assert s_est == pytest.approx(1 / s, rel=1e-3)
        assert rep.metrics.accuracy_cm == pytest.approx(base.accuracy_cm, rel=0.1)
        assert rep.metrics.completion_cm == pytest.approx(base.completion_cm, rel=0.1)
    else:
        # Published protocol: rigid ICP keeps the 3-point RANSAC scale (here 0.5 % off), costing ~15 % over the
        # noise level on this 4 m scene; the bound documents that known limitation.
        assert s_est == pytest.approx(1 / s, rel=0.01)
        assert rep.metrics.accuracy_cm == pytest.approx(base.accuracy_cm, rel=0.25)
        assert rep.metrics.completion_cm == pytest.approx(base.completion_cm, rel=0.25)


def test_low_confidence_and_invalid_gt_are_ignored(gt):
    pts, valid = gt
    pred = pts.copy()
    conf = np.full(valid.shape, 10.0)
    pred[:, :40] += 0.5  # garbage, but below the confidence threshold
    conf[:, :40] = 2.0
    rep = evaluate_pointmaps(pred, conf, pts, valid, CFG)
    assert rep.metrics.accuracy_cm < 1e-6
    assert rep.num_candidates == valid[:, 40:].sum()


def test_pointcloud_variant_with_and_without_initial_alignment(gt):
    pts, valid = gt
    cloud = pts[valid][::3]
    s, R, t = sim3(2)
    pred = apply_sim3(s, R, t, cloud)
    # a slightly wrong start (1 cm, 1 degree) is fixed by ICP
    inv = np.eye(4)
    inv[:3, :3] = Rotation.from_rotvec([0, 0, np.radians(1.0)]).as_matrix() @ R.T / s
    inv[:3, 3] = -(R.T @ t) / s + 0.01
    rep = evaluate_pointcloud(pred, cloud, init=inv)
    assert rep.metrics.accuracy_cm < 0.05 and rep.metrics.completion_cm < 0.05 and not rep.failed
    # ICP alone cannot undo a large similarity: reported as a failed alignment
    bad = evaluate_pointcloud(pred, cloud)
    assert bad.failed and bad.metrics.accuracy_cm > 10


def test_metric_definitions_on_two_parallel_planes():
    g = np.arange(0.0, 0.3, 0.001)
    x, y = np.meshgrid(g, g)
    gt = np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], 1)
    pred = gt + [0.0, 0.0, 0.015]
    m, acc, comp = cloud_metrics(pred, gt)
    assert m.accuracy_cm == pytest.approx(1.5) and m.completion_cm == pytest.approx(1.5)
    assert m.chamfer_l1_cm == pytest.approx(1.5) and m.chamfer_l2_cm2 == pytest.approx(2.25)
    assert m.fscore_1cm == pytest.approx(0.0) and m.fscore_2cm == pytest.approx(1.0)
    assert m.fscore_1_5cm == pytest.approx(1.0)  # 1.5 cm is within the (inclusive) 1.5 cm threshold
    assert m.completion_ratio_5cm == 1.0
    m2, _, _ = cloud_metrics(pred[: len(pred) // 2], gt)  # half the surface missing
    # GT rows up to 1.32 cm past the edge are within 2 cm of the offset plane: recall = 0.5 + 13/300
    assert m2.completion_cm > 4 and m2.recall_2cm == pytest.approx(0.5 + 13 / 300, abs=1e-9)
    with pytest.raises(ValueError, match="empty"):
        cloud_metrics(pred[:0], gt)


def test_ransac_pruning_selects_the_same_hypothesis_as_brute_force():
    rng = np.random.default_rng(3)
    dst = rng.uniform(-2, 2, (3000, 3))
    s, R, t = sim3(3)
    src = apply_sim3(s, R, t, dst + rng.normal(0, 0.02, dst.shape))
    src[rng.random(3000) < 0.4] += rng.normal(0, 1, (1, 3))
    M, err = ransac_similarity(src, dst, iterations=64, seed=42, batch=7)
    best, best_err = None, np.inf
    draw = random.Random(42)
    for _ in range(64):
        ids = draw.sample(range(3000), 3)
        H = minimal_similarity(src[ids], dst[ids])
        e = np.median(np.linalg.norm(src @ H[:3, :3].T + H[:3, 3] - dst, axis=1))
        if e < best_err:
            best, best_err = H, e
    np.testing.assert_allclose(M, best, atol=1e-12)
    assert err == pytest.approx(best_err, rel=1e-5)


def test_select_pairs_errors(gt):
    pts, valid = gt
    with pytest.raises(ValueError, match="shape mismatch"):
        evaluate_pointmaps(pts[:2], np.ones(valid[:2].shape), pts, valid)
    with pytest.raises(ValueError, match="confidence > 3"):
        evaluate_pointmaps(pts, np.ones(valid.shape), pts, valid)


def test_ate_under_similarity_is_zero_and_noise_is_measured():
    rng = np.random.default_rng(4)
    gt_xyz = np.cumsum(rng.normal(0, 0.1, (80, 3)), axis=0)
    s, R, t = sim3(4)
    rep = ate(apply_sim3(s, R, t, gt_xyz), gt_xyz)
    assert rep.ate_rmse_m < 1e-9 and rep.scale == pytest.approx(1 / s)
    noisy = gt_xyz + rng.normal(0, 0.02, gt_xyz.shape)
    rep = ate(apply_sim3(s, R, t, noisy), gt_xyz)
    assert 0.02 < rep.ate_rmse_m < 0.04  # ~ sqrt(3) * 2 cm, a little less after the fit


def test_evaluate_trajectory_associates_timestamps():
    rng = np.random.default_rng(5)
    gt = np.tile(np.eye(4), (50, 1, 1))
    gt[:, :3, 3] = np.cumsum(rng.normal(0, 0.1, (50, 3)), axis=0)
    s, R, t = sim3(5)
    pred = gt.copy()
    pred[:, :3, 3] = apply_sim3(s, R, t, gt[:, :3, 3])
    t_gt = np.arange(50) / 30
    rep = evaluate_trajectory(t_gt[::2] + 0.004, pred[::2], t_gt, gt)  # every other frame, 4 ms late
    assert rep.num_poses == 25 and rep.ate_rmse_m < 1e-9
    with pytest.raises(ValueError, match="match a GT timestamp"):
        evaluate_trajectory(t_gt + 5.0, pred, t_gt, gt)


def test_error_colors_ramp():
    c = error_colors(np.array([0.0, 0.025, 0.05, 1.0]))
    assert c.dtype == np.uint8 and c.shape == (4, 3)
    assert c[0].min() > 230  # near white
    assert c[2, 0] > c[2, 1] and np.array_equal(c[2], c[3])  # saturates at 5 cm
    assert c[0].sum() > c[1].sum() > c[2].sum()


def test_synth_and_eval_command_lines(tmp_path, capsys):
    out = tmp_path / "seq"
    assert slam3r_main(["synth", "--seed", "1000006", "--frames", "5", "--out", str(out), "--width", "64",
                        "--height", "48", "--png"]) == 0
    seq = read_replica(out)
    assert len(seq) == 5 and seq.image_size() == (64, 48)
    assert len(list(VideoSource(out / "video.mp4"))) == 5
    pts, valid = sequence_gt_pointmaps(seq, size=32)
    s, R, t = sim3(6)
    np.savez(tmp_path / "pred.npz", pts3d=apply_sim3(s, R, t, pts).astype(np.float32),
             conf=np.full(valid.shape, 5.0, np.float32))
    c2w = seq.poses.copy()
    c2w[:, :3, 3] = apply_sim3(s, R, t, c2w[:, :3, 3])
    write_tum_trajectory(tmp_path / "traj.txt", np.arange(5.0), c2w)
    report = tmp_path / "report.json"
    assert slam3r_main(["eval", "--pred", str(tmp_path / "pred.npz"), "--gt", str(out), "--traj",
                        str(tmp_path / "traj.txt"), "--out", str(report), "--heatmaps", str(tmp_path / "hm")]) == 0
    rep = json.loads(report.read_text())
    assert rep["reconstruction"]["metrics"]["accuracy_cm"] < 1e-3
    assert rep["trajectory"]["ate_rmse_m"] < 1e-6 and rep["trajectory"]["num_poses"] == 5
    assert (tmp_path / "hm" / "accuracy.ply").is_file() and (tmp_path / "hm" / "completion.ply").is_file()
    # a PLY prediction, started from the trajectory alignment
    from slam3r.data.ply import write_ply

    write_ply(tmp_path / "pred.ply", apply_sim3(s, R, t, pts[valid]))
    assert slam3r_main(["eval", "--pred", str(tmp_path / "pred.ply"), "--gt", str(out), "--traj",
                        str(tmp_path / "traj.txt"), "--gt-size", "32", "--out", str(report)]) == 0
    assert json.loads(report.read_text())["reconstruction"]["metrics"]["accuracy_cm"] < 1e-3
    # bad inputs: a clear message and exit status 2
    np.savez(tmp_path / "short.npz", pts3d=pts[:3], conf=np.full(valid[:3].shape, 5.0))
    capsys.readouterr()
    assert slam3r_main(["eval", "--pred", str(tmp_path / "short.npz"), "--gt", str(out)]) == 2
    assert "mismatched frame counts" in capsys.readouterr().err
    (out / "traj.txt").unlink()
    assert slam3r_main(["eval", "--pred", str(tmp_path / "pred.npz"), "--gt", str(out)]) == 2
    assert "traj.txt" in capsys.readouterr().err
