"""Ground-truth pointmaps on the network's input grid: crop / resize depth and intrinsics exactly like the image
preprocessing (``slam3r.geometry.camera.input_crop_resize``) and back-project to world coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slam3r.data.rgbd import RGBDSequence
from slam3r.geometry.camera import crop_resize_intrinsics, depth_to_world, input_crop_resize


def crop_resize_depth(depth: np.ndarray, K: np.ndarray, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Depth (..., H, W) metres and intrinsics K (3, 3) -> depth (..., S, S) and K (3, 3) of the S x S input.

    Depth is resampled with nearest neighbour, sampling source pixel ``floor((x + 0.5) * W / resized_w)`` for
    resized column x (pixel-centre aligned, like PIL's NEAREST), so no depths are mixed across edges.
    """
    H, W = depth.shape[-2:]
    g = input_crop_resize(W, H, size)
    cols = np.arange(g.left, g.left + g.size)
    rows = np.arange(g.top, g.top + g.size)
    src_c = np.clip(np.floor((cols + 0.5) * W / g.resized_w).astype(int), 0, W - 1)
    src_r = np.clip(np.floor((rows + 0.5) * H / g.resized_h).astype(int), 0, H - 1)
    out = depth[..., src_r[:, None], src_c[None, :]]
    return out, crop_resize_intrinsics(K, W, H, size)


def gt_pointmaps(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, size: int = 224
                 ) -> tuple[np.ndarray, np.ndarray]:
    """World-frame GT pointmaps for the network input grid.

    Args:
        depth: (N, H, W) or (H, W) z-depth in metres, 0 = invalid.
        K: (3, 3) intrinsics of the full-resolution images (shared), or (N, 3, 3).
        c2w: camera-to-world poses (N, 4, 4) (or (4, 4) for a single frame).
        size: side S of the square network input.
    Returns:
        points (N, S, S, 3) float32 in metres (world frame; 0 where invalid) and valid masks (N, S, S) bool (depth > 0 and finite).
    """
    depth = np.asarray(depth, dtype=np.float32)
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    H, W = depth.shape[-2:]
    if K.ndim == 3:
        Ks = np.stack([crop_resize_intrinsics(k, W, H, size) for k in K])
        d, _ = crop_resize_depth(depth, K[0], size)
    else:
        d, Ks = crop_resize_depth(depth, K, size)
    valid = np.isfinite(d) & (d > 0)
    d = np.where(valid, d, 0.0).astype(np.float32)
    pts = depth_to_world(d, Ks, c2w).astype(np.float32)
    pts[~valid] = 0.0
    return pts, valid


def sequence_gt_pointmaps(seq: RGBDSequence, indices: Sequence[int] | None = None, size: int = 224
                          ) -> tuple[np.ndarray, np.ndarray]:
    """GT pointmaps (N, S, S, 3) float32 and valid masks (N, S, S) of an on-disk RGB-D sequence, loading one depth
    image at a time (full-resolution depth of long sequences does not fit in memory)."""
    idx = list(range(len(seq))) if indices is None else [int(i) for i in indices]
    pts = np.empty((len(idx), size, size, 3), dtype=np.float32)
    valid = np.empty((len(idx), size, size), dtype=bool)
    for j, i in enumerate(idx):
        pts[j], valid[j] = gt_pointmaps(seq.load_depth(i), seq.K, seq.poses[i], size)
    return pts, valid
