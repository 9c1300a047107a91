"""Error heat-map point clouds: points coloured white -> red -> dark red by their error, saturating at 5 cm."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam3r.data.ply import write_ply

# A sequential white-to-dark-red ramp (like matplotlib's "Reds").
_RAMP = np.array([[255, 245, 240], [252, 187, 161], [251, 106, 74], [203, 24, 29], [103, 0, 13]], dtype=float)


def error_colors(dist: np.ndarray, max_dist: float = 0.05) -> np.ndarray:
    """Colours (M, 3) uint8 for errors dist (M,) in metres: 0 -> near white, >= max_dist -> dark red."""
    x = np.clip(np.asarray(dist, dtype=float) / max_dist, 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_RAMP) - 2)
    f = (x - i)[:, None]
    return np.round(_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).astype(np.uint8)


def write_error_ply(path: str | Path, pts: np.ndarray, dist: np.ndarray, max_dist: float = 0.05) -> Path:
    """PLY of points (M, 3) coloured by error (M,) metres; the error itself is stored as the ``conf`` field."""
    return write_ply(path, pts, error_colors(dist, max_dist), conf=dist)
