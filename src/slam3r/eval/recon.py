"""Reconstruction evaluation exactly as published (SLAM3R on Replica, protocol adapted from NICER-SLAM).

Pointmaps with correspondences (``evaluate_pointmaps``):

1. keep predicted pixels with confidence > 3 whose GT is valid; sample 200,000 pairs
   (``numpy.random.RandomState(42).choice``, without replacement, the published sampler);
2. RANSAC over 512 three-point similarity fits (median centroid, median-norm scale, SVD rotation; lowest median
   residual wins);
3. point-to-plane ICP (both clouds voxelised at 1 cm, threshold 2 cm, GT normals radius 0.1 m / 30 nn);
4. both clouds voxelised at 5 mm, point-to-point ICP (threshold 0.1 m);
5. accuracy / completion (cm), Chamfer, F-score at 1 / 1.5 / 2 cm, completion ratio within 5 cm; the alignment
   counts as failed when accuracy or completion exceeds 10 cm.

An arbitrary predicted cloud without correspondences (``evaluate_pointcloud``) skips steps 1-2: it is aligned by
an optional given similarity and then steps 3-5 (ICP alone only converges from a roughly aligned start).

Known property of the published protocol: both ICP stages are rigid, so the scale is the one of the winning
3-point hypothesis; with noisy predictions it is typically off by a few tenths of a percent, which inflates the
metrics of a large scene by millimetres. ``EvalConfig.refine_inliers`` (off by default, not part of the published
protocol) re-fits the similarity with Umeyama on the RANSAC inliers (residual <= 2x the best median residual).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slam3r.config import ConfigError
from slam3r.eval.align import icp, ransac_similarity, voxel_downsample
from slam3r.eval.heatmap import write_error_ply
from slam3r.eval.metrics import CloudMetrics, cloud_metrics
from slam3r.geometry.transforms import sim3_to_matrix, transform_points, umeyama


@dataclass
class EvalConfig:
    """Parameters of the published protocol (lengths in metres)."""

    conf_thresh: float = 3.0
    num_samples: int = 200_000
    seed: int = 42
    ransac_iterations: int = 512
    icp_voxel: float = 0.01
    icp_threshold: float = 0.02
    normal_radius: float = 0.1
    normal_max_nn: int = 30
    final_voxel: float = 0.005
    final_icp_threshold: float = 0.1
    fail_cm: float = 10.0
    heatmap_max: float = 0.05
    refine_inliers: bool = False

    def validate(self) -> None:
        if not math.isfinite(self.conf_thresh):
            raise ConfigError(f"conf_thresh must be a finite number, got {self.conf_thresh}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")


@dataclass
class ReconReport:
    """Result of an evaluation: metrics, whether the alignment failed, the pred -> GT similarity (4x4) that was
    applied, point counts and timings (s)."""

    metrics: CloudMetrics
    failed: bool
    transform: np.ndarray
    num_candidates: int
    num_pairs: int
    ransac_median_residual_m: float | None
    timings_s: dict[str, float] = field(default_factory=dict)
    config: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "metrics": self.metrics.to_dict(),
            "failed": self.failed,
            "scale": float(np.cbrt(np.linalg.det(self.transform[:3, :3]))),
            "transform": self.transform.tolist(),
            "num_candidates": self.num_candidates,
            "num_pairs": self.num_pairs,
            "ransac_median_residual_m": self.ransac_median_residual_m,
            "timings_s": self.timings_s,
            "config": asdict(self.config),
        }


def select_pairs(pred_pts: np.ndarray, pred_conf: np.ndarray, gt_pts: np.ndarray, gt_valid: np.ndarray,
                 cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, int]:
    """Corresponding (pred, GT) points (K, 3) with conf > threshold and valid GT, sampled down to
    ``cfg.num_samples`` pairs; also returns the number of candidates before sampling."""
    if pred_pts.shape != gt_pts.shape or pred_conf.shape != gt_valid.shape or pred_pts.shape[:-1] != pred_conf.shape:
        raise ValueError(f"shape mismatch: pred {pred_pts.shape}, conf {pred_conf.shape}, GT {gt_pts.shape}, "
                         f"valid {gt_valid.shape}")
    keep = (pred_conf > cfg.conf_thresh) & gt_valid.astype(bool) & np.isfinite(pred_pts).all(axis=-1)
    pred = pred_pts[keep]
    gt = gt_pts[keep]
    n = len(pred)
    if n < 3:
        raise ValueError(f"only {n} predicted points have confidence > {cfg.conf_thresh} and valid GT")
    if n > cfg.num_samples:
        ids = np.random.RandomState(cfg.seed).choice(n, cfg.num_samples, replace=False)
        pred, gt = pred[ids], gt[ids]
    return pred.astype(np.float64), gt.astype(np.float64), n


def _finish(pred_aligned: np.ndarray, gt: np.ndarray, transform: np.ndarray, cfg: EvalConfig,
            timings: dict[str, float], heatmap_dir: str | Path | None
            ) -> tuple[CloudMetrics, np.ndarray, bool]:
    """Steps 3-5 on an already coarsely aligned prediction; returns metrics, the total transform, failure flag."""
    t = time.perf_counter()
    src = voxel_downsample(pred_aligned, cfg.icp_voxel)
    tgt = voxel_downsample(gt, cfg.icp_voxel)
    T_plane = icp(src, tgt, cfg.icp_threshold, point_to_plane=True, normal_radius=cfg.normal_radius,
                  normal_max_nn=cfg.normal_max_nn)
    timings["icp_point_to_plane"] = time.perf_counter() - t

    t = time.perf_counter()
    pred_v = voxel_downsample(transform_points(T_plane, pred_aligned), cfg.final_voxel)
    gt_v = voxel_downsample(gt, cfg.final_voxel)
    T_point = icp(pred_v, gt_v, cfg.final_icp_threshold)
    pred_v = transform_points(T_point, pred_v)
    timings["voxelise_icp_point_to_point"] = time.perf_counter() - t

    t = time.perf_counter()
    metrics, acc, comp = cloud_metrics(pred_v, gt_v)
    timings["metrics"] = time.perf_counter() - t
    if heatmap_dir is not None:
        out = Path(heatmap_dir)
        write_error_ply(out / "accuracy.ply", pred_v, acc, cfg.heatmap_max)
        write_error_ply(out / "completion.ply", gt_v, comp, cfg.heatmap_max)
    failed = metrics.accuracy_cm > cfg.fail_cm or metrics.completion_cm > cfg.fail_cm
    return metrics, T_point @ T_plane @ transform, failed


def evaluate_pointmaps(pred_pts: np.ndarray, pred_conf: np.ndarray, gt_pts: np.ndarray, gt_valid: np.ndarray,
                       cfg: EvalConfig | None = None, heatmap_dir: str | Path | None = None) -> ReconReport:
    """Score predicted world pointmaps against GT pointmaps with the published protocol (module doc).

    Args:
        pred_pts: (N, H, W, 3) predicted points (any frame and scale); pred_conf: (N, H, W) confidences.
        gt_pts: (N, H, W, 3) GT world points in metres; gt_valid: (N, H, W) bool.
        heatmap_dir: if given, writes ``accuracy.ply`` / ``completion.ply`` error heat maps there.
    """
    cfg = cfg or EvalConfig()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    pred, gt, n_cand = select_pairs(pred_pts, pred_conf, gt_pts, gt_valid, cfg)
    timings["select"] = time.perf_counter() - t
    t = time.perf_counter()
    T_ransac, residual = ransac_similarity(pred, gt, cfg.ransac_iterations, cfg.seed)
    if cfg.refine_inliers:
        inliers = np.linalg.norm(transform_points(T_ransac, pred) - gt, axis=1) <= 2 * residual
        if inliers.sum() >= 3:
            T_ransac = sim3_to_matrix(*umeyama(pred[inliers], gt[inliers]))
    timings["ransac"] = time.perf_counter() - t
    metrics, T, failed = _finish(transform_points(T_ransac, pred), gt, T_ransac, cfg, timings, heatmap_dir)
    return ReconReport(metrics, failed, T, n_cand, len(pred), residual, timings, cfg)


def evaluate_pointcloud(pred: np.ndarray, gt: np.ndarray, init: np.ndarray | None = None,
                        cfg: EvalConfig | None = None, heatmap_dir: str | Path | None = None) -> ReconReport:
    """Score a predicted cloud pred (M, 3) against a GT cloud gt (K, 3) (metres) without correspondences.

    ``init`` (4x4 similarity, pred -> GT) is applied first; alignment is then ICP only (steps 3-5 of the module
    doc), so pred must already be roughly in the GT frame and scale.
    """
    cfg = cfg or EvalConfig()
    pred = np.asarray(pred, dtype=np.float64).reshape(-1, 3)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 3)
    pred = pred[np.isfinite(pred).all(axis=1)]
    if len(pred) < 3 or len(gt) < 3:
        raise ValueError(f"need at least 3 points in each cloud, got {len(pred)} predicted and {len(gt)} GT")
    T0 = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
    timings: dict[str, float] = {}
    metrics, T, failed = _finish(transform_points(T0, pred), gt, T0, cfg, timings, heatmap_dir)
    return ReconReport(metrics, failed, T, len(pred), len(pred), None, timings, cfg)
