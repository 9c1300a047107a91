"""Camera outputs the networks do not give directly: focal length from a camera-frame pointmap and the
camera-to-world pose from a frame's local vs world pointmaps. Small pure functions over torch tensors."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from slam3r.geometry.align import umeyama_torch


def centred_pixel_grid(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Pixel centres (u, v) relative to the image centre: ``(H, W, 2)`` float32, pixels."""
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                          torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([u - (w - 1) / 2, v - (h - 1) / 2], dim=-1)


def estimate_focal(pts_cam: Tensor, weights: Tensor, iters: int = 10) -> Tensor:
    """Focal length (pixels) of a pinhole camera with its principal point at the image centre.

    Minimises the weighted L1 (Weiszfeld iterations) reprojection residual ``|uv - f * xy/z|`` over pixels.
    ``pts_cam`` ``(..., H, W, 3)`` camera-frame points; ``weights`` ``(..., H, W)`` (0 = ignore). Returns ``(...)``.
    """
    h, w = pts_cam.shape[-3:-1]
    # one (..., H*W) tensor per coordinate: torch is about 10x slower reducing over a last dim of 2 or reading
    # every third float than on contiguous rows
    u, v = (c.flatten() for c in centred_pixel_grid(h, w, pts_cam.device).unbind(-1))
    z = pts_cam[..., 2].flatten(-2)
    ok = (z > 1e-6) & (weights.flatten(-2) > 0)
    zc = z.clamp(min=1e-6)
    x, y = (torch.where(ok, pts_cam[..., i].flatten(-2) / zc, 0.0) for i in (0, 1))
    wgt = torch.where(ok, weights.flatten(-2), 0.0)
    dot = x * u + y * v
    sq = x * x + y * y
    f = (wgt * dot).sum(-1) / (wgt * sq).sum(-1).clamp(min=1e-12)  # least-squares start
    for _ in range(iters):
        du, dv = u - f[..., None] * x, v - f[..., None] * y
        res = (du * du + dv * dv).sqrt().clamp(min=1e-3)
        wi = wgt / res
        f = (wi * dot).sum(-1) / (wi * sq).sum(-1).clamp(min=1e-12)
    return f


def pose_from_pointmaps(local: np.ndarray, world: np.ndarray, weights: np.ndarray,
                        max_points: int = 4096) -> tuple[np.ndarray, float]:
    """Camera-to-world pose ``(4, 4)`` (rotation + translation, world units) and the local->world scale, by a
    weighted similarity fit of a frame's camera-frame points ``(H, W, 3)`` to its world points ``(H, W, 3)`` with
    per-pixel ``weights`` ``(H, W)``; at most ``max_points`` evenly spread weighted pixels are used."""
    from slam3r.geometry.transforms import umeyama

    idx = np.flatnonzero(weights.reshape(-1) > 0)
    if len(idx) > max_points:
        idx = idx[np.linspace(0, len(idx) - 1, max_points).astype(np.int64)]
    s, r, t = umeyama(local.reshape(-1, 3)[idx], world.reshape(-1, 3)[idx], weights.reshape(-1)[idx])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = r, t
    return pose, s


def pose_from_pnp(world: np.ndarray, weights: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                  max_points: int = 5000, seed: int = 0) -> np.ndarray | None:
    """Camera-to-world pose ``(4, 4)`` by PnP-RANSAC with known intrinsics (pixels at network resolution) from a
    world pointmap ``(H, W, 3)``; ``None`` when it fails (too few confident points, degenerate)."""
    import cv2

    h, w = world.shape[:2]
    vv, uu = np.nonzero(weights > 0)
    if len(uu) < 6:
        return None
    if len(uu) > max_points:
        pick = np.random.default_rng(seed).choice(len(uu), max_points, replace=False)
        vv, uu = vv[pick], uu[pick]
    obj = world[vv, uu].astype(np.float64)
    img = np.stack([uu, vv], -1).astype(np.float64)
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
    ok, rvec, tvec, _ = cv2.solvePnPRansac(obj, img, k, None, reprojectionError=2.0, iterationsCount=200,
                                           flags=cv2.SOLVEPNP_EPNP)
    if not ok:
        return None
    r_wc, _ = cv2.Rodrigues(rvec)  # world -> camera
    pose = np.eye(4)
    pose[:3, :3] = r_wc.T
    pose[:3, 3] = (-r_wc.T @ tvec).ravel()
    return pose


def normalize_pointmaps(pts: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Jointly divide pointmaps ``(..., H, W, 3)`` by the mean distance to the origin of their ``valid``
    ``(..., H, W)`` points and zero the invalid ones (the reference ``normalize_views``). Returns (points, scale)."""
    dist = pts.norm(dim=-1)
    count = valid.sum().clamp(min=1)
    scale = ((dist * valid).sum() / count).clamp(min=1e-8)
    return torch.where(valid[..., None], pts / scale, torch.zeros_like(pts)), scale


def similarity_fit(src: Tensor, dst: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted similarity ``dst ~= s * src @ R.T + t`` between pointmaps ``(..., 3)`` with per-point ``weights``
    ``(...)`` (0 = ignore), on ``src``'s device (no host copy). Returns ``s`` (scalar), ``R`` ``(3, 3)``, ``t``
    ``(3,)`` in ``src``'s dtype; the identity when the weighted points cannot fix a similarity."""
    s, r, t, _ = umeyama_torch(src.detach().reshape(-1, 3), dst.detach().reshape(-1, 3),
                               weights.detach().reshape(-1))
    return s, r, t
