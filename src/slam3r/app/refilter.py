"""Re-apply the L2W confidence threshold and the point count to a finished reconstruction without inference.

The per-frame world points, confidences and colours are read back (memory-mapped) from ``preds/*.npy``; the
selection is the same as the pipeline's export (every point above the threshold, in frame order, then a uniform
random subset of ``num_points`` drawn with the run's seed), so re-filtering at the run's own settings reproduces its
``<scene>_recon.ply`` exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slam3r.recon.export import write_glb, write_ply


@dataclass
class Cloud:
    """Coloured points: xyz ``(N, 3)`` float32, rgb ``(N, 3)`` uint8, conf ``(N,)`` float32."""

    xyz: np.ndarray
    rgb: np.ndarray
    conf: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xyz))


def select_points(pts: np.ndarray, confs: np.ndarray, imgs: np.ndarray, conf_thres: float, num_points: int,
                  seed: int) -> Cloud:
    """Points of ``pts (V, S, S, 3)`` whose ``confs (V, S, S)`` exceed ``conf_thres``, colours from ``imgs``,
    randomly reduced to at most ``num_points``. Works frame by frame, so memory-mapped inputs stay on disk."""
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
        return Cloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
    xyz, rgb, conf = (np.concatenate(p) for p in zip(*parts))
    return Cloud(xyz.astype(np.float32), rgb.astype(np.uint8), conf.astype(np.float32))


def scene_name(result_dir: str | Path) -> str:
    """The scene name a reconstruction directory was written with (``preds/metadata.json``)."""
    meta = Path(result_dir) / "preds" / "metadata.json"
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: not a reconstruction directory written with predictions")
    return str(json.loads(meta.read_text())["scene_id"])


def load_cloud(result_dir: str | Path, conf_thres: float, num_points: int, seed: int = 42) -> Cloud:
    """:func:`select_points` over a reconstruction directory's ``preds/``."""
    preds = Path(result_dir) / "preds"
    arrays = [np.load(preds / f"{name}.npy", mmap_mode="r")
              for name in ("registered_pcds", "registered_confs", "input_imgs")]
    return select_points(*arrays, conf_thres=conf_thres, num_points=num_points, seed=seed)


def refilter(result_dir: str | Path, conf_thres: float, num_points: int) -> dict:
    """Rewrite ``<scene>_recon.ply`` / ``.glb`` of ``result_dir`` at a new threshold and point count, and record the
    export settings and point count in ``summary.json``. Returns the updated summary."""
    out = Path(result_dir)
    scene = scene_name(out)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    seed = int(summary.get("config", {}).get("seed", 42))
    cloud = load_cloud(out, conf_thres, num_points, seed)
    write_ply(out / f"{scene}_recon.ply", cloud.xyz, cloud.rgb, cloud.conf)
    write_glb(out / f"{scene}_recon.glb", cloud.xyz, cloud.rgb)
    summary["points"] = len(cloud)
    summary["export"] = {"conf_thres_l2w": float(conf_thres), "num_points_save": int(num_points)}
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary
