"""Trajectory accuracy: absolute trajectory error (ATE) of camera centres after Sim(3) (or SE(3)) Umeyama
alignment, with timestamp association for trajectories sampled at different times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from slam3r.data.trajectory_io import associate
from slam3r.geometry.transforms import apply_sim3, sim3_to_matrix, umeyama


@dataclass
class TrajectoryReport:
    """ATE statistics (metres) over ``num_poses`` matched poses and the pred -> GT alignment (4x4, with scale)."""

    ate_rmse_m: float
    ate_mean_m: float
    ate_median_m: float
    ate_max_m: float
    num_poses: int
    scale: float
    alignment: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"ate_rmse_m": self.ate_rmse_m, "ate_mean_m": self.ate_mean_m, "ate_median_m": self.ate_median_m,
                "ate_max_m": self.ate_max_m, "num_poses": self.num_poses, "scale": self.scale,
                "alignment": self.alignment.tolist()}


def ate(pred_xyz: np.ndarray, gt_xyz: np.ndarray, with_scale: bool = True) -> TrajectoryReport:
    """ATE of matched camera centres pred_xyz, gt_xyz (N, 3) after aligning pred to GT with Umeyama."""
    pred_xyz = np.asarray(pred_xyz, dtype=np.float64)
    gt_xyz = np.asarray(gt_xyz, dtype=np.float64)
    if pred_xyz.shape != gt_xyz.shape:
        raise ValueError(f"mismatched trajectories: {pred_xyz.shape} vs {gt_xyz.shape}")
    s, R, t = umeyama(pred_xyz, gt_xyz, with_scale=with_scale)
    err = np.linalg.norm(apply_sim3(s, R, t, pred_xyz) - gt_xyz, axis=1)
    return TrajectoryReport(float(np.sqrt(np.mean(err**2))), float(err.mean()), float(np.median(err)),
                            float(err.max()), len(err), float(s), sim3_to_matrix(s, R, t))


def evaluate_trajectory(pred_t: np.ndarray, pred_c2w: np.ndarray, gt_t: np.ndarray, gt_c2w: np.ndarray,
                        max_diff: float = 0.02, with_scale: bool = True) -> TrajectoryReport:
    """ATE between a predicted trajectory (timestamps (N,), poses (N, 4, 4)) and GT (M,), (M, 4, 4), matching
    poses by timestamp within ``max_diff`` (same units as the timestamps)."""
    ia, ib = associate(pred_t, gt_t, max_diff)
    if len(ia) < 3:
        raise ValueError(f"only {len(ia)} predicted poses match a GT timestamp within {max_diff}; need >= 3")
    return ate(np.asarray(pred_c2w)[ia, :3, 3], np.asarray(gt_c2w)[ib, :3, 3], with_scale)
