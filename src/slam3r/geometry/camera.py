"""Pinhole camera helpers: pixel grids, back-projection, projection and intrinsics under resize / crop.

Pixel ``(u, v)`` (column, row) has its centre at integer coordinates, so resizing an image by a factor ``a`` maps a
continuous coordinate ``u`` to ``(u + 0.5) * a - 0.5``. Intrinsics ``K`` are 3x3 ``[[fx, 0, cx], [0, fy, cy],
[0, 0, 1]]`` in pixels (zero skew). Depth is z-depth in metres, 0 meaning "no measurement".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from slam3r.geometry.transforms import transform_points

Array = Any  # numpy.ndarray or torch.Tensor


def _stack_like(x: Array) -> Callable[..., Array]:
    """``torch.stack`` for tensors, ``np.stack`` otherwise."""
    if hasattr(x, "new_tensor"):
        import torch

        return torch.stack
    return np.stack


def intrinsics_from_fov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Square-pixel intrinsics (3, 3) with the given horizontal field of view and the principal point at the
    image centre ``((W - 1) / 2, (H - 1) / 2)``."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def pixel_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float64 array of pixel coordinates ``(u, v)``: column and row indices."""
    v, u = np.mgrid[0:height, 0:width]
    return np.stack([u, v], axis=-1).astype(np.float64)


def backproject_depth(depth: Array, K: Array) -> Array:
    """Camera-frame points (..., H, W, 3) in metres from z-depth (..., H, W) and intrinsics (..., 3, 3).

    Numpy or torch (the result has the type and dtype of ``depth``); pixels with depth 0 map to the origin.
    """
    H, W = depth.shape[-2:]
    if hasattr(depth, "new_tensor"):  # torch
        import torch

        v, u = torch.meshgrid(
            torch.arange(H, dtype=depth.dtype, device=depth.device),
            torch.arange(W, dtype=depth.dtype, device=depth.device),
            indexing="ij",
        )
        K = K.to(depth.dtype)
    else:
        v, u = np.mgrid[0:H, 0:W].astype(depth.dtype)
        K = np.asarray(K, dtype=depth.dtype)
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    return _stack_like(depth)([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], -1)


def depth_to_world(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World-frame points (..., H, W, 3) from depth (..., H, W), K (..., 3, 3) and poses c2w (..., 4, 4).

    Batch dims of K / c2w may be absent (shared) or equal to those of ``depth``. Depth-0 pixels map to the camera
    centre; mask them with ``depth > 0``.
    """
    return transform_points(c2w, backproject_depth(depth, K))


def project_points(pts: Array, K: Array) -> tuple[Array, Array]:
    """Project camera-frame points (..., 3) with K (3, 3) -> (pixel coords (..., 2) as (u, v), z-depth (...,)).

    Points with z <= 0 get non-finite or meaningless coordinates; mask them with ``z > 0``. Numpy or torch.
    """
    z = pts[..., 2]
    u = K[0, 0] * pts[..., 0] / z + K[0, 2]
    v = K[1, 1] * pts[..., 1] / z + K[1, 2]
    return _stack_like(pts)([u, v], -1), z


def resize_intrinsics(K: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """Intrinsics (3, 3) after resizing the image by (scale_x, scale_y) (new size / old size), pixel centres."""
    K2 = np.array(K, dtype=np.float64)
    K2[0, 0] *= scale_x
    K2[1, 1] *= scale_y
    K2[0, 2] = (K2[0, 2] + 0.5) * scale_x - 0.5
    K2[1, 2] = (K2[1, 2] + 0.5) * scale_y - 0.5
    return K2


def crop_intrinsics(K: np.ndarray, left: int, top: int) -> np.ndarray:
    """Intrinsics (3, 3) after cropping the image so that pixel (left, top) becomes (0, 0)."""
    K2 = np.array(K, dtype=np.float64)
    K2[0, 2] -= left
    K2[1, 2] -= top
    return K2


@dataclass(frozen=True)
class CropResize:
    """The network-input geometry: resize to (resized_w, resized_h), then crop [left, left+size) x [top, top+size)."""

    width: int
    height: int
    resized_w: int
    resized_h: int
    left: int
    top: int
    size: int

    @property
    def scale_x(self) -> float:
        return self.resized_w / self.width

    @property
    def scale_y(self) -> float:
        return self.resized_h / self.height


def input_crop_resize(width: int, height: int, size: int = 224) -> CropResize:
    """Geometry of SLAM3R's input preprocessing for a (width x height) image.

    The long side is resized to ``round(size * max(W/H, H/W))`` (both sides ``int(round(x * long / max(W, H)))``,
    so the short side becomes ``size``), then the centre crop box is ``(cx - half, cy - half, cx + half,
    cy + half)`` with ``cx = resized_w // 2``, ``cy = resized_h // 2``, ``half = size // 2``.
    """
    long_edge = round(size * max(width / height, height / width))
    s = long_edge / max(width, height)
    rw, rh = int(round(width * s)), int(round(height * s))
    half = size // 2
    return CropResize(width, height, rw, rh, rw // 2 - half, rh // 2 - half, 2 * half)


def crop_resize_intrinsics(K: np.ndarray, width: int, height: int, size: int = 224) -> np.ndarray:
    """Intrinsics (3, 3) of the (size x size) network input cut from a (width x height) image with intrinsics K."""
    g = input_crop_resize(width, height, size)
    return crop_intrinsics(resize_intrinsics(K, g.scale_x, g.scale_y), g.left, g.top)
