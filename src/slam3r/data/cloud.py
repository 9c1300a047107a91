"""The one point-cloud type (:class:`PointCloud`: what the exported cloud files hold and what :func:`read_ply`
returns) and the confident-point selection that turns per-frame pointmaps into one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PointCloud:
    """Points xyz ``(N, 3)`` float32 (scene units; metres when metric), colours rgb ``(N, 3)`` uint8 or None,
    confidences conf ``(N,)`` float32 or None."""

    xyz: np.ndarray
    rgb: np.ndarray | None = None
    conf: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


def select_points(pts: np.ndarray, confs: np.ndarray, imgs: np.ndarray, conf_thres: float, num_points: int,
                  seed: int) -> PointCloud:
    """Points of ``pts (V, S, S, 3)`` whose ``confs (V, S, S)`` exceed ``conf_thres``, colours from ``imgs
    (V, S, S, 3)`` uint8, randomly reduced to at most ``num_points`` (in frame order; the subset drawn with
    ``seed``). Works frame by frame, so memory-mapped inputs stay on disk. The cloud always has rgb and conf."""
    masks = [np.asarray(c) > conf_thres for c in confs]
    counts = np.array([m.sum() for m in masks], dtype=np.int64)
    total = int(counts.sum())
    keep = min(max(int(num_points), 0), total)
    chosen = np.sort(np.random.default_rng(seed).choice(total, keep, replace=False)) if keep else np.zeros(0, int)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for v, mask in enumerate(masks):
        lo, hi = np.searchsorted(chosen, [bounds[v], bounds[v + 1]])
        if hi > lo:
            local = chosen[lo:hi] - bounds[v]
            parts.append((np.asarray(pts[v])[mask][local], np.asarray(imgs[v])[mask][local],
                          np.asarray(confs[v])[mask][local]))
    if not parts:
        return PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
    xyz, rgb, conf = (np.concatenate(p) for p in zip(*parts))
    return PointCloud(xyz.astype(np.float32), rgb.astype(np.uint8), conf.astype(np.float32))
