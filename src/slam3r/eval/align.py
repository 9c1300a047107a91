"""Alignment of a predicted point set to ground truth: the published 3-point RANSAC similarity (median centroid,
median-norm scale, SVD rotation; hypothesis with the lowest median residual wins) and Open3D ICP / voxelisation."""

from __future__ import annotations

import random

import numpy as np


def _o3d():
    try:
        import open3d as o3d
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(f"evaluation needs Open3D ({exc}); install it with `pip install open3d-cpu` (Linux "
                          "may also need `apt-get install libusb-1.0-0`)") from exc
    return o3d


def minimal_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Similarity 4x4 mapping a few points src (k, 3) onto dst (k, 3): per-axis median centroids, rotation from the
    SVD of the centred cross-covariance (reflection-corrected), scale = ratio of median distances to the centroid."""
    cs, cd = np.median(src, axis=0), np.median(dst, axis=0)
    xs, xd = src - cs, dst - cd
    U, _, Vt = np.linalg.svd(xs.T @ xd)
    fix = np.diag([1.0, 1.0, np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0])
    R = Vt.T @ fix @ U.T
    ns = np.median(np.linalg.norm(xs, axis=1))
    s = np.median(np.linalg.norm(xd, axis=1)) / ns if ns > 0 else 1.0
    M = np.eye(4)
    M[:3, :3] = s * R
    M[:3, 3] = cd - s * R @ cs
    return M


def ransac_similarity(src: np.ndarray, dst: np.ndarray, iterations: int = 512, seed: int = 42,
                      batch: int = 32) -> tuple[np.ndarray, float]:
    """Best of ``iterations`` 3-point similarity hypotheses for corresponding points src, dst (N, 3).

    Triples are drawn with Python's ``random.Random(seed).sample`` (the published procedure); the first hypothesis
    with the strictly lowest median residual wins. Residuals are computed in float32, ``batch`` hypotheses per
    matrix product; a hypothesis is only ranked exactly (partial sort) when at least half of its residuals beat
    the best median so far, which cannot change the winner. Returns the 4x4 similarity mapping src onto dst and
    its median residual (units of dst).
    """
    n = len(src)
    if n < 3 or len(dst) != n:
        raise ValueError(f"RANSAC needs >= 3 corresponding pairs, got {n} and {len(dst)}")
    rng = random.Random(seed)
    hypotheses = [minimal_similarity(src[ids].astype(np.float64), dst[ids].astype(np.float64))
                  for ids in (rng.sample(range(n), 3) for _ in range(iterations))]
    src_t = np.ascontiguousarray(np.asarray(src, dtype=np.float32).T)
    dst_t = np.ascontiguousarray(np.asarray(dst, dtype=np.float32).T)
    half = (n + 1) // 2
    lo, hi = (n - 1) // 2, n // 2  # order statistics whose mean is the median
    best, best_err = np.eye(4), np.inf
    for start in range(0, iterations, batch):
        Ms = np.stack(hypotheses[start:start + batch])
        b = len(Ms)
        r = (Ms[:, :3, :3].reshape(3 * b, 3).astype(np.float32) @ src_t).reshape(b, 3, n)
        r += Ms[:, :3, 3, None].astype(np.float32)
        r -= dst_t
        np.square(r, out=r)
        d2 = r[:, 0] + r[:, 1]
        d2 += r[:, 2]
        for k in range(b):
            if np.isfinite(best_err) and np.count_nonzero(d2[k] < np.float32(best_err) ** 2) < half:
                continue  # at least half of the residuals are >= best_err, so its median cannot be lower
            part = np.partition(d2[k], (lo, hi))
            err = 0.5 * (float(np.sqrt(part[lo])) + float(np.sqrt(part[hi])))
            if err < best_err:
                best, best_err = Ms[k], err
    return best, best_err


def voxel_downsample(pts: np.ndarray, voxel: float) -> np.ndarray:
    """Open3D voxel-grid downsampling of points (M, 3): one point (the centroid) per occupied voxel."""
    o3d = _o3d()
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(pts, dtype=np.float64)))
    return np.asarray(pc.voxel_down_sample(voxel).points)


def icp(source: np.ndarray, target: np.ndarray, threshold: float, point_to_plane: bool = False,
        normal_radius: float = 0.1, normal_max_nn: int = 30) -> np.ndarray:
    """Rigid ICP (Open3D, from the identity) of source (M, 3) onto target (K, 3) with max correspondence distance
    ``threshold``; returns the 4x4 source -> target transform. ``point_to_plane`` uses target normals estimated
    with a hybrid (radius, max-nn) search."""
    o3d = _o3d()
    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(source, dtype=np.float64)))
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(target, dtype=np.float64)))
    if point_to_plane:
        tgt.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=normal_radius, max_nn=normal_max_nn))
        method = reg.TransformationEstimationPointToPlane()
    else:
        method = reg.TransformationEstimationPointToPoint()
    result = reg.registration_icp(src, tgt, threshold, np.eye(4), method)
    return np.asarray(result.transformation)
