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


class _KnownRotationFit:
    """Weighted least-squares fits ``dst ~= s * R @ src + t`` with ``R`` given, for many weightings of the same
    pairs (:func:`robust_umeyama`'s reweighting rounds): the pairs are reduced once to per-pair moments
    ``F (9, N) = [|a|^2, a.b, |b|^2, a, b]`` of the rotated, centred source ``a = R @ src - c_a`` and the centred
    target ``b = dst - c_b``, so that a fit is one weighted sum ``F @ w`` and the squared residuals of all pairs
    are one product ``coef @ F``."""

    def __init__(self, src: np.ndarray, dst: np.ndarray, R: np.ndarray):
        self.R = np.asarray(R, dtype=np.float64)
        self.F = np.empty((9, len(src)))
        a, b = self.F[3:6], self.F[6:9]  # (3, N) rows: numpy is several times faster on them than on (N, 3)
        np.dot(self.R, np.asarray(src, dtype=np.float64).T, out=a)
        b[:] = np.asarray(dst, dtype=np.float64).T
        self.ca, self.cb = a.mean(1), b.mean(1)
        a -= self.ca[:, None]
        b -= self.cb[:, None]
        for row, (x, y) in enumerate(((a, a), (a, b), (b, b))):
            self.F[row] = np.einsum("ij,ij->j", x, y)

    def fit(self, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """``(s, R, t (3,))`` for pair weights ``w`` (N,) >= 0; ``ValueError`` when no weight is positive or the
        weighted source points are all identical (scale undefined)."""
        total = w.sum()
        if total <= 0:
            raise ValueError("scale_translation_fit: weights have no positive sum")
        m = (self.F @ w) / total
        mu_a, mu_b = m[3:6], m[6:9]
        var = m[0] - mu_a @ mu_a
        if var <= 1e-12 * m[0] or var <= 1e-300:  # (the moments cancel to about 1e-16 of m[0])
            raise ValueError("scale_translation_fit: source points are all identical, scale is undefined")
        s = float((m[1] - mu_a @ mu_b) / var)
        self._t = mu_b - s * mu_a  # translation between the centred clouds
        return s, self.R, self.cb + self._t - s * self.ca

    def residuals(self, s: float) -> np.ndarray:
        """``(N,)`` distances ``|s R src + t - dst|`` of the last :meth:`fit` (its scale ``s``)."""
        t = self._t
        coef = np.concatenate([[s * s, -2.0 * s, 1.0], 2.0 * s * t, -2.0 * t])
        return np.sqrt(np.maximum(coef @ self.F + t @ t, 0.0))


def scale_translation_fit(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None,
                          R: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares ``dst ~= s * R @ src + t`` with the rotation ``R`` (3, 3) given: ``(s, R, t (3,))``.

    ``src``, ``dst`` (N, 3); ``weights`` (N,) >= 0 or ``None``. Raises ``ValueError`` when the weighted ``src``
    points are all identical (scale undefined)."""
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    return _KnownRotationFit(src, dst, R).fit(w)


def robust_umeyama(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray | None = None,
    inlier_thresh: float = 0.05,
    iters: int = 8,
    rotation: np.ndarray | None = None,
    tol: float = 0.0,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Similarity ``dst ~= s * R @ src + t`` robust to outlier pairs: iteratively reweighted :func:`umeyama` with
    Huber weights on the residuals (threshold ``inlier_thresh``, in ``dst`` units), then one fit on the inliers.

    Args:
        src, dst: corresponding points (N, 3), N >= 3.
        weights: optional prior per-pair weights (N,) >= 0 (e.g. confidences).
        inlier_thresh: residual below which a pair is an inlier (and keeps its full weight).
        iters: reweighting rounds after the first (plain weighted) fit, at most.
        rotation: ``R`` (3, 3) known from elsewhere: only ``s`` and ``t`` are fitted
            (:func:`scale_translation_fit`).
        tol: the rounds stop early once no pair's Huber weight (in [0, 1]) changes by more than this; the
            default 0 stops only when the weights no longer change at all (later rounds would repeat the fit).
    Returns:
        ``(s, R (3, 3), t (3,), inliers (N,) bool)``; inliers = pairs with a positive prior weight whose final
        residual is below ``inlier_thresh``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    prior = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if inlier_thresh <= 0:
        raise ValueError(f"inlier_thresh must be > 0, got {inlier_thresh}")
    known = None if rotation is None else _KnownRotationFit(src, dst, rotation)

    def fit(w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """Fit with pair weights ``w`` (N,): ``(s, R, t, residuals (N,))``."""
        if known is not None:
            s, R, t = known.fit(w)
            return s, R, t, known.residuals(s)
        s, R, t = umeyama(src, dst, w)
        return s, R, t, np.linalg.norm(s * src @ R.T + t - dst, axis=1)

    w, huber = prior, None
    for _ in range(iters + 1):
        s, R, t, res = fit(w)
        new = np.minimum(1.0, inlier_thresh / np.maximum(res, 1e-12))
        converged = huber is not None and np.abs(new - huber).max() <= tol
        huber, w = new, prior * new
        if converged or w.sum() <= 0:
            break
    inliers = (res < inlier_thresh) & (prior > 0)
    if inliers.sum() >= 3:  # Huber weights never reach 0: a last fit on the inliers alone removes the outliers' pull
        s, R, t, res = fit(prior * inliers)
        inliers = (res < inlier_thresh) & (prior > 0)
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
