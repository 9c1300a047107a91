"""Checks of a finished reconstruction that tell the user when the export threshold left (almost) nothing."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

NEAR_EMPTY = 0.01
"""Below this fraction of registered pixels passing the export threshold, a run warns."""
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
_SAMPLE = 1_000_000
"""Confidences sampled (evenly, every frame) for the percentiles."""


def export_check(confs: Sequence[np.ndarray], conf_thres: float, flag: str = "--conf-thres-l2w") -> dict[str, Any]:
    """How many registered pixels of ``confs`` (``V`` arrays ``(S, S)``, memory-mapped is fine) have a confidence
    above the export threshold ``conf_thres``, the confidence percentiles, and, when fewer than
    :data:`NEAR_EMPTY` of them pass, a ``warning`` naming the threshold ``flag`` value that would keep about half
    of them (``suggested_flag``)."""
    total = sum(int(np.asarray(c).size) for c in confs)
    out: dict[str, Any] = {"conf_thres_l2w": conf_thres, "registered_pixels": total}
    if total == 0:
        return out
    step = max(1, math.ceil(total / _SAMPLE))
    passing, sample = 0, []
    for c in confs:
        c = np.asarray(c)
        passing += int((c > conf_thres).sum())
        sample.append(c.ravel()[::step].astype(np.float64))
    values = np.concatenate(sample)
    values = values[np.isfinite(values)]
    pct = np.percentile(values, PERCENTILES) if len(values) else np.full(len(PERCENTILES), np.nan)
    out.update({"pixels_above_threshold": passing, "fraction_above_threshold": passing / total,
                "conf_percentiles": {f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, pct)},
                "conf_max": round(float(values.max()), 4) if len(values) else None})
    if passing / total >= NEAR_EMPTY or not len(values):
        return out
    p = out["conf_percentiles"]
    text = (f"only {passing} of {total} registered pixels ({100 * passing / total:.2f}%) have an L2W confidence "
            f"above the export threshold {conf_thres:g}; confidences: p5 {p['p5']:g}, p50 {p['p50']:g}, "
            f"p95 {p['p95']:g}, max {out['conf_max']:g}")
    keep_half = max(1.0, math.floor(float(np.median(values)) * 100) / 100)
    if keep_half < conf_thres:
        out["suggested_flag"] = f"{flag} {keep_half:g}"
        text += f". Pass {flag} {keep_half:g} to keep about half of them"
    out["warning"] = text
    return out
