"""Rigid and similarity transforms: point mapping, inversion, Umeyama alignment, rotation <-> quaternion.

A pose is a 4x4 matrix ``[[R, t], [0, 1]]``; a similarity (Sim(3)) is a tuple ``(s, R, t)`` mapping
``x -> s * R @ x + t``. Quaternions are ``(x, y, z, w)`` (scalar last, as in the TUM trajectory format).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor


def transform_points(T: Array, pts: Array) -> Array:
    """Apply 4x4 transforms ``T`` (*B, 4, 4) to points ``pts`` (*B, *P, 3); returns (*B, *P, 3).

    The leading batch dims *B of ``T`` (possibly none) must match the leading dims of ``pts``. Works on numpy
    arrays and torch tensors; the top-left 3x3 may contain a scale (a Sim(3) matrix).
    """
    nb = T.ndim - 2
    shape = tuple(pts.shape)
    flat = pts.reshape(shape[:nb] + (-1, 3))
    out = flat @ T[..., :3, :3].swapaxes(-1, -2) + T[..., None, :3, 3]
    return out.reshape(shape)


def invert_pose(T: Array) -> Array:
    """Inverse of rigid poses ``T`` (..., 4, 4) (rotation + translation only); numpy or torch."""
    Rt = T[..., :3, :3].swapaxes(-1, -2)
    out = T * 0
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ T[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1
    return out


def apply_sim3(s: float, R: Array, t: Array, pts: Array) -> Array:
    """Map points ``pts`` (..., 3) by the similarity ``x -> s * R @ x + t`` (R (3, 3), t (3,)); numpy or torch."""
    return s * (pts @ R.swapaxes(-1, -2)) + t


def invert_sim3(s: float, R: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Inverse similarity of ``(s, R, t)``: ``x -> (1/s) * R.T @ (x - t)``, returned as ``(s', R', t')``."""
    Rt = np.asarray(R).T
    return 1.0 / s, Rt, -(Rt @ np.asarray(t)) / s


def sim3_to_matrix(s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(s, R (3, 3), t (3,)) -> 4x4 float64 matrix ``[[s R, t], [0, 1]]``."""
    M = np.eye(4)
    M[:3, :3] = s * np.asarray(R, dtype=np.float64)
    M[:3, 3] = np.asarray(t, dtype=np.float64)
    return M


def matrix_to_sim3(M: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """4x4 similarity matrix -> (s, R (3, 3), t (3,)); the scale is the cube root of det of the 3x3 block."""
    M = np.asarray(M, dtype=np.float64)
    det = np.linalg.det(M[:3, :3])
    if det <= 0:
        raise ValueError(f"not a similarity transform (det of the 3x3 block is {det:g})")
    s = float(np.cbrt(det))
    return s, M[:3, :3] / s, M[:3, 3].copy()


def umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    with_scale: bool = True,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama 1991) with ``dst ~= s * R @ src + t``.

    Args:
        src, dst: corresponding points (N, 3), N >= 3.
        weights: optional non-negative per-pair weights (N,); minimises ``sum w_i |dst_i - (s R src_i + t)|^2``.
        with_scale: estimate ``s``; otherwise ``s = 1`` (rigid fit).
    Returns:
        ``(s, R (3, 3), t (3,))`` as float64. The numpy face of ``geometry.align.umeyama_torch`` (batched, any
        device), which raises ``ValueError`` where that one reports a degenerate fit.
    """
    import torch

    from slam3r.geometry.align import umeyama_torch

    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama needs two (N, 3) arrays of equal shape, got {src.shape} and {dst.shape}")
    if src.shape[0] < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {src.shape[0]}")
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape[0] != src.shape[0] or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be (N,), non-negative, with a positive sum")
        if np.count_nonzero(w) < 3:
            raise ValueError(f"umeyama needs at least 3 point pairs with positive weight, got {np.count_nonzero(w)}")
        w = torch.from_numpy(w)
    s, R, t, ok = umeyama_torch(torch.from_numpy(src), torch.from_numpy(dst), w, with_scale=with_scale)
    if not bool(ok):
        raise ValueError("umeyama: source points are all identical, scale is undefined")
    return float(s), R.numpy(), t.numpy()


def scale_translation_fit(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None,
                          R: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``dst ~= s * R @ src + t`` with the rotation ``R`` (3, 3) given: ``(s, R, t (3,))``.

    ``src``, ``dst`` (N, 3); ``weights`` (N,) >= 0 or ``None``. Raises ``ValueError`` when the weighted ``src``
    points are all identical (scale undefined)."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.sum() <= 0:
        raise ValueError("scale_translation_fit: weights have no positive sum")
    w = w / w.sum()
    rs = np.asarray(src, dtype=np.float64) @ np.asarray(R, dtype=np.float64).T
    mu_s, mu_d = w @ rs, w @ np.asarray(dst, dtype=np.float64)
    var = w @ np.sum((rs - mu_s) ** 2, axis=1)
    if var <= 1e-18:
        raise ValueError("scale_translation_fit: source points are all identical, scale is undefined")
    s = float(w @ np.sum((rs - mu_s) * (dst - mu_d), axis=1) / var)
    return s, np.asarray(R, dtype=np.float64), mu_d - s * mu_s


def robust_umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    inlier_thresh: float = 0.05,
    iters: int = 8,
    rotation: np.ndarray | None = None,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity ``dst ~= s * R @ src + t`` robust to outlier pairs: iteratively reweighted :func:`umeyama` with
    Huber weights on the residuals (threshold ``inlier_thresh``, in ``dst`` units), then one fit on the inliers.

    Args:
        src, dst: corresponding points (N, 3), N >= 3.
        weights: optional prior per-pair weights (N,) >= 0 (e.g. confidences).
        inlier_thresh: residual below which a pair is an inlier (and keeps its full weight).
        iters: reweighting rounds after the first (plain weighted) fit.
        rotation: ``R`` (3, 3) known from elsewhere: only ``s`` and ``t`` are fitted
            (:func:`scale_translation_fit`).
    Returns:
        ``(s, R (3, 3), t (3,), inliers (N,) bool)``; inliers = pairs with a positive prior weight whose final
        residual is below ``inlier_thresh``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    prior = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if inlier_thresh <= 0:
        raise ValueError(f"inlier_thresh must be > 0, got {inlier_thresh}")

    def fit(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        return umeyama(a, b, w) if rotation is None else scale_translation_fit(a, b, w, rotation)

    w = prior
    for _ in range(iters + 1):
        s, R, t = fit(src, dst, w)
        res = np.linalg.norm(s * src @ R.T + t - dst, axis=1)
        huber = np.minimum(1.0, inlier_thresh / np.maximum(res, 1e-12))
        w = prior * huber
        if w.sum() <= 0:
            break
    inliers = (res < inlier_thresh) & (prior > 0)
    if inliers.sum() >= 3:  # Huber weights never reach 0: a last fit on the inliers alone removes the outliers' pull
        s, R, t = fit(src[inliers], dst[inliers], prior[inliers])
        inliers = (np.linalg.norm(s * src @ R.T + t - dst, axis=1) < inlier_thresh) & (prior > 0)
    return s, R, t, inliers


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) of rotation matrices ``(..., 3, 3)``: ``(...)``, in [0, 180]."""
    R = np.asarray(R, dtype=np.float64)
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) as (x, y, z, w), any norm > 0 -> rotation matrices (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("zero quaternion")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) as (x, y, z, w) with w >= 0.

    Uses Shepperd's branch selection (largest of trace and diagonal), so it is stable near 180-degree rotations.
    """
    R = np.asarray(R, dtype=np.float64)
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Four candidate solutions, each scaled by 4 * (its largest component); pick the best-conditioned one.
    cands = np.stack(
        [
            np.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1], 1 + tr], -1),
            np.stack([1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                      m[:, 0, 2] + m[:, 2, 0], m[:, 2, 1] - m[:, 1, 2]], -1),
            np.stack([m[:, 0, 1] + m[:, 1, 0], 1 + m[:, 1, 1] - m[:, 0, 0] - m[:, 2, 2],
                      m[:, 1, 2] + m[:, 2, 1], m[:, 0, 2] - m[:, 2, 0]], -1),
            np.stack([m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                      1 + m[:, 2, 2] - m[:, 0, 0] - m[:, 1, 1], m[:, 1, 0] - m[:, 0, 1]], -1),
        ],
        axis=1,
    )
    pick = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1), axis=-1)
    q = cands[np.arange(m.shape[0]), pick]
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q *= np.where(q[:, 3:4] < 0, -1.0, 1.0)
    return q.reshape(R.shape[:-2] + (4,))
