"""Geometric registration backend (``ReconConfig.registration = "geometric"``): a new frame is placed in the world
by the overlap of its own I2P window with frames that are already registered, instead of by L2W.

The I2P window of frame ``v`` (``v`` as reference) predicts every window frame's points in ``v``'s camera frame.
For the window frames that already have world points, the same pixels give correspondences camera-of-``v`` ->
world; a robust weighted Umeyama fit (``geometry.robust_umeyama``; weights = the window's I2P confidence x the
registered frame's L2W / final confidence) is the similarity ``T_v`` that maps ``v``'s points into the world.
"""

from __future__ import annotations

import numpy as np

from slam3r.geometry.transforms import robust_umeyama, sim3_to_matrix

INLIER_FRACTION = 0.05
"""Huber threshold of the fit, as a fraction of the registered points' mean distance from their centroid."""
MAX_POINTS = 4096
"""Correspondences used per fit (evenly spread over the weighted pixels)."""


def register_from_window(win_pts: np.ndarray, weights: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, float]:
    """Similarity camera-of-``v`` -> world from the registered frames of ``v``'s I2P window.

    Args:
        win_pts: ``(K, H, W, 3)`` the K registered window frames' points in ``v``'s camera frame (I2P output).
        weights: ``(K, H, W)`` per-pixel weights >= 0 (0 = ignore).
        world: ``(K, H, W, 3)`` the same frames' world points.
    Returns:
        ``(T (4, 4) similarity, inlier fraction of the weighted pixels)``.
    Raises:
        ValueError: fewer than 3 weighted pixels.
    """
    src, dst, w = win_pts.reshape(-1, 3), world.reshape(-1, 3), weights.reshape(-1)
    idx = np.flatnonzero(w > 0)
    if len(idx) < 3:
        raise ValueError("geometric registration: fewer than 3 weighted pixels in the window's registered frames")
    if len(idx) > MAX_POINTS:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_POINTS).astype(np.int64)]
    src, dst, w = src[idx].astype(np.float64), dst[idx].astype(np.float64), w[idx].astype(np.float64)
    spread = float(np.linalg.norm(dst - dst.mean(0), axis=1).mean()) + 1e-12
    s, R, t, inliers = robust_umeyama(src, dst, w, INLIER_FRACTION * spread)
    return sim3_to_matrix(s, R, t), float(inliers.mean())
