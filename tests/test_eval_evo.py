"""The trajectory ATE computed by evo agrees with the project's own on the same files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slam3r.cli import main as slam3r_main
from slam3r.data.replica import read_replica
from slam3r.data.trajectory_io import write_tum_trajectory
from slam3r.eval.trajectory import evaluate_trajectory, evo_ate
from slam3r.geometry.transforms import quat_to_rotmat

pytest.importorskip("evo")


def _noisy_similar(gt: np.ndarray, seed: int) -> np.ndarray:
    """GT poses mapped by a random similarity, centres perturbed by ~3 cm, orientations by a few degrees."""
    rng = np.random.default_rng(seed)
    R = quat_to_rotmat(rng.normal(size=4))
    s, t = 0.37, rng.normal(size=3)
    pred = gt.copy()
    pred[:, :3, 3] = s * (gt[:, :3, 3] + rng.normal(0, 0.03, (len(gt), 3))) @ R.T + t
    pred[:, :3, :3] = R @ gt[:, :3, :3] @ quat_to_rotmat(np.c_[rng.normal(0, 0.03, (len(gt), 3)), np.ones(len(gt))])
    return pred


def test_evo_matches_own_ate_with_association_and_scale():
    rng = np.random.default_rng(7)
    gt = np.tile(np.eye(4), (120, 1, 1))
    gt[:, :3, 3] = np.cumsum(rng.normal(0, 0.05, (120, 3)), axis=0)
    pred = _noisy_similar(gt, 8)
    t_gt = np.arange(120) / 30
    t_pred = t_gt[::3] + 0.003
    own = evaluate_trajectory(t_pred, pred[::3], t_gt, gt)
    theirs = evo_ate(t_pred, pred[::3], t_gt, gt)
    assert own.num_poses == theirs["num_poses"] == 40
    assert own.ate_rmse_m > 0.02  # the noise is measured, not aligned away
    for key in ("ate_rmse_m", "ate_mean_m", "ate_median_m", "ate_max_m"):
        assert theirs[key] == pytest.approx(getattr(own, key), abs=1e-9)
    rigid = evo_ate(t_pred, pred[::3], t_gt, gt, with_scale=False)
    assert rigid["ate_rmse_m"] == pytest.approx(evaluate_trajectory(t_pred, pred[::3], t_gt, gt,
                                                                    with_scale=False).ate_rmse_m, abs=1e-9)


def test_eval_command_reports_evo_beside_own(tmp_path, capsys):
    out = tmp_path / "seq"
    assert slam3r_main(["synth", "--seed", "1000006", "--frames", "6", "--out", str(out), "--width", "32",
                        "--height", "32"]) == 0
    seq = read_replica(out)
    write_tum_trajectory(tmp_path / "traj.txt", np.arange(6.0), _noisy_similar(seq.poses, 3))
    np.savez(tmp_path / "pred.npz", pts3d=np.random.default_rng(0).normal(size=(6, 8, 8, 3)).astype(np.float32),
             conf=np.full((6, 8, 8), 5.0, np.float32))
    report = tmp_path / "report.json"
    assert slam3r_main(["eval", "--pred", str(tmp_path / "pred.npz"), "--gt", str(out), "--traj",
                        str(tmp_path / "traj.txt"), "--evo", "--num-samples", "100", "--out", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert rep["trajectory_evo"]["ate_rmse_m"] == pytest.approx(rep["trajectory"]["ate_rmse_m"], abs=1e-9)
    assert rep["trajectory"]["ate_rmse_m"] > 1e-3
    assert "ATE RMSE, evo (cm)" in capsys.readouterr().out
