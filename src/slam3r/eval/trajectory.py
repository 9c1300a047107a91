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


def evo_ate(pred_t: np.ndarray, pred_c2w: np.ndarray, gt_t: np.ndarray, gt_c2w: np.ndarray,
            max_diff: float = 0.02, with_scale: bool = True) -> dict[str, Any]:
    """The same ATE computed by ``evo`` (the field's standard tool): timestamps associated by
    ``evo.core.sync.associate_trajectories`` (nearest time within ``max_diff``), Umeyama alignment of positions
    (``correct_scale`` = ``with_scale``), APE of the translation part. Returns evo's statistics (metres) and
    ``num_poses``; ``slam3r eval --evo`` reports them beside the project's own :func:`evaluate_trajectory`."""
    try:
        from evo.core import metrics, sync
        from evo.core.trajectory import PoseTrajectory3D
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(f"--evo needs the evo package ({exc}); install it with `pip install evo`") from exc

    est = PoseTrajectory3D(poses_se3=list(np.asarray(pred_c2w, dtype=np.float64)),
                           timestamps=np.asarray(pred_t, dtype=np.float64))
    ref = PoseTrajectory3D(poses_se3=list(np.asarray(gt_c2w, dtype=np.float64)),
                           timestamps=np.asarray(gt_t, dtype=np.float64))
    ref, est = sync.associate_trajectories(ref, est, max_diff=max_diff)
    est.align(ref, correct_scale=with_scale)
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    stats = ape.get_all_statistics()
    return {"ate_rmse_m": float(stats["rmse"]), "ate_mean_m": float(stats["mean"]),
            "ate_median_m": float(stats["median"]), "ate_max_m": float(stats["max"]), "num_poses": int(est.num_poses)}
