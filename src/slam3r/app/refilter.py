"""Re-apply the L2W confidence threshold and the point count to a finished reconstruction without inference.

The per-frame world points, confidences and colours are read back (memory-mapped) from ``preds/*.npy``; the
selection is the same as the pipeline's export (every point above the threshold, in frame order, then a uniform
random subset of ``num_points`` drawn with the run's seed), so re-filtering at the run's own settings reproduces its
``<scene>_recon.ply`` exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slam3r.data.ply import write_ply
from slam3r.recon.export import Cloud, select_points, write_glb


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
