"""Re-apply the L2W confidence threshold, a confidence percentile and the point count to a finished reconstruction
without inference.

The per-frame world points, confidences and colours are read back (memory-mapped) from ``preds/*.npy``; the
selection is the same as the pipeline's export (every point above the threshold, in frame order, then a uniform
random subset of ``num_points`` drawn with the run's seed), so re-filtering at the run's own settings reproduces its
cloud files (``<scene>_recon.<ext>``, one per ``recon.output.CLOUD_FORMATS`` format) exactly. The percentile filter
(as in VGGT's demo) drops the given share of least confident points: the threshold used is the larger of the
absolute one and that percentile of all L2W confidences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam3r.recon.output import RunOutput

PERCENTILE_SAMPLE = 4_000_000
"""At most this many confidences (a regular pixel grid of every frame) are used to compute a percentile."""


def percentile_threshold(confs: np.ndarray, percentile: float) -> float:
    """The L2W confidence below which ``percentile`` % of the confidences ``(V, H, W)`` lie (1.0, the lowest
    possible confidence, for 0 %); frames with many pixels are sampled on a regular grid."""
    if not 0 <= percentile < 100:
        raise ValueError(f"the confidence percentile must be in [0, 100), got {percentile:g}")
    if percentile == 0 or confs.size == 0:
        return 1.0
    step = max(1, int(np.ceil(np.sqrt(confs.size / PERCENTILE_SAMPLE))))
    return float(np.percentile(np.asarray(confs[:, ::step, ::step], np.float32), percentile))


def highest_confidence(result_dir: str | Path) -> float:
    """The largest L2W confidence of a reconstruction (0 when it has no frames)."""
    confs = RunOutput(result_dir).pred("registered_confs")
    return float(max((float(np.max(c)) for c in confs), default=0.0))


def export_settings(summary: dict) -> dict:
    """The export settings a summary was written with: ``conf_thres_l2w``, ``num_points_save``,
    ``conf_percentile`` and the ``effective_conf_thres`` (the run's own settings if never re-filtered)."""
    export = summary.get("export") or {}
    config = summary.get("config", {})
    thres = float(export.get("conf_thres_l2w", config.get("conf_thres_l2w", 12.0)))
    return {"conf_thres_l2w": thres, "num_points_save": int(export.get("num_points_save",
                                                                        config.get("num_points_save", 2_000_000))),
            "conf_percentile": float(export.get("conf_percentile", 0.0)),
            "effective_conf_thres": float(export.get("effective_conf_thres", thres))}


def refilter(result_dir: str | Path, conf_thres: float, num_points: int, percentile: float = 0.0) -> dict:
    """Rewrite the cloud files of ``result_dir`` (every ``CLOUD_FORMATS`` format) at a new threshold, confidence
    percentile and point count, and record the export settings and point count in ``summary.json``. Returns the
    updated summary."""
    out = RunOutput(result_dir)
    out.metadata()  # FileNotFoundError unless a reconstruction directory written with predictions
    summary = out.summary()
    seed = int(summary.get("config", {}).get("seed", 42))
    effective = max(float(conf_thres), percentile_threshold(out.pred("registered_confs"), percentile))
    cloud = out.select(effective, num_points, seed)
    out.write_cloud(cloud)
    summary["points"] = len(cloud)
    summary["export"] = {"conf_thres_l2w": float(conf_thres), "num_points_save": int(num_points),
                         "conf_percentile": float(percentile), "effective_conf_thres": effective}
    out.write_summary(summary)
    return summary
