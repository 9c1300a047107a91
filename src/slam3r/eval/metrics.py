"""Point-cloud reconstruction metrics: accuracy, completion, Chamfer-L1/L2, F-score, completion ratio."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial import cKDTree

FSCORE_THRESHOLDS_M = (0.01, 0.015, 0.02)
COMPLETION_RATIO_M = 0.05


def nn_distances(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Distance (M,) from each point of src (M, 3) to its nearest neighbour in dst (K, 3), same units."""
    return cKDTree(np.asarray(dst, dtype=np.float64)).query(np.asarray(src, dtype=np.float64), workers=-1)[0]


@dataclass
class CloudMetrics:
    """Published metrics. accuracy = mean NN distance pred -> GT, completion = GT -> pred (cm); Chamfer-L1 = their
    mean (cm); Chamfer-L2 = mean of the two mean squared distances (cm^2); precision / recall / F-score at 1, 1.5
    and 2 cm (fractions in [0, 1]); completion ratio = fraction of GT points within 5 cm of the prediction."""

    accuracy_cm: float
    completion_cm: float
    chamfer_l1_cm: float
    chamfer_l2_cm2: float
    precision_1cm: float
    recall_1cm: float
    fscore_1cm: float
    precision_1_5cm: float
    recall_1_5cm: float
    fscore_1_5cm: float
    precision_2cm: float
    recall_2cm: float
    fscore_2cm: float
    completion_ratio_5cm: float
    num_pred: int
    num_gt: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def cloud_metrics(pred: np.ndarray, gt: np.ndarray) -> tuple[CloudMetrics, np.ndarray, np.ndarray]:
    """Metrics of pred (M, 3) against gt (K, 3), both in metres, plus the per-point distances (m): accuracy
    distances (M,) of pred points and completion distances (K,) of GT points."""
    if len(pred) == 0 or len(gt) == 0:
        raise ValueError(f"cannot score empty point clouds ({len(pred)} predicted, {len(gt)} GT points)")
    acc = nn_distances(pred, gt)
    comp = nn_distances(gt, pred)
    values: dict[str, float] = {}
    for tau, tag in zip(FSCORE_THRESHOLDS_M, ("1cm", "1_5cm", "2cm")):
        p = float(np.mean(acc <= tau))
        r = float(np.mean(comp <= tau))
        values[f"precision_{tag}"] = p
        values[f"recall_{tag}"] = r
        values[f"fscore_{tag}"] = 2 * p * r / (p + r + 1e-8)
    a, c = float(acc.mean()) * 100, float(comp.mean()) * 100
    m = CloudMetrics(
        accuracy_cm=a,
        completion_cm=c,
        chamfer_l1_cm=0.5 * (a + c),
        chamfer_l2_cm2=0.5 * (float(np.mean(acc**2)) + float(np.mean(comp**2))) * 1e4,
        completion_ratio_5cm=float(np.mean(comp < COMPLETION_RATIO_M)),
        num_pred=int(len(pred)),
        num_gt=int(len(gt)),
        **values,
    )
    return m, acc, comp
