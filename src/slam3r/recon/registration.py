"""Geometric registration backends: a new frame is placed in the world by a robust similarity fit to frames that
are already registered, instead of by L2W.

``registration: geometric``: the I2P window of frame ``v`` (``v`` as reference) predicts every window frame's
points in ``v``'s camera frame. For the window frames that already have world points, the same pixels give
correspondences camera-of-``v`` -> world; a robust weighted Umeyama fit (``geometry.robust_umeyama``; weights = the
window's I2P confidence x the registered frame's L2W / final confidence) is the similarity ``T_v`` that maps
``v``'s points into the world. It inherits the network's view of how the camera turned: a rotation-blind I2P (the
bundled model's) gives rotation-blind registration.

``registration: flow``: the correspondences come from the images instead: dense optical flow from ``v`` to the
previous registered frame pairs ``v``'s own I2P points (its reference view, the network's best output) with that
frame's world points, and the same robust fit places ``v``. Only the frame's own depth comes from the network;
the camera's rotation is recovered whenever that depth is, at the price of frame-to-frame drift (no scene frames).
"""

from __future__ import annotations

import numpy as np

from slam3r.geometry.transforms import robust_umeyama, sim3_to_matrix

INLIER_FRACTION = 0.05
"""Huber threshold of the fit, as a fraction of the registered points' mean distance from their centroid."""
MAX_POINTS = 4096
"""Correspondences used per fit (evenly spread over the weighted pixels)."""


def register_from_window(win_pts: np.ndarray, weights: np.ndarray, world: np.ndarray,
                         rotation: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Similarity camera-of-``v`` -> world from the registered frames of ``v``'s I2P window.

    Args:
        win_pts: ``(K, H, W, 3)`` the K registered window frames' points in ``v``'s camera frame (I2P output).
        weights: ``(K, H, W)`` per-pixel weights >= 0 (0 = ignore).
        world: ``(K, H, W, 3)`` the same frames' world points.
        rotation: the similarity's rotation ``(3, 3)`` when known from elsewhere (only scale and translation are
            fitted then).
    Returns:
        ``(T (4, 4) similarity, inlier fraction of the weighted pixels)``.
    Raises:
        ValueError: fewer than 3 weighted pixels.
    """
    return _fit_pairs(_weighted_pairs(win_pts, weights, world), rotation)


def _spread(n: int, k: int) -> np.ndarray:
    """Indices ``(min(n, k),)`` of ``k`` of ``n`` items, evenly spread in order (all of them when ``n <= k``)."""
    return np.linspace(0, n - 1, k).astype(np.int64) if n > k else np.arange(n)


_Pairs = tuple[np.ndarray, np.ndarray, np.ndarray, float]


def _weighted_pairs(src: np.ndarray, weights: np.ndarray, dst: np.ndarray) -> _Pairs:
    """The pairs a fit uses: at most :data:`MAX_POINTS` of the weighted ones, evenly spread.

    ``src``, ``dst`` ``(..., 3)`` corresponding points, ``weights`` ``(...)`` >= 0. Returns ``(src (N, 3), dst
    (N, 3), w (N,))`` float64 and the Huber threshold (:data:`INLIER_FRACTION` of ``dst``'s spread, its units);
    ``ValueError`` for fewer than 3 weighted pairs."""
    src, dst, w = src.reshape(-1, 3), dst.reshape(-1, 3), weights.reshape(-1)
    idx = np.flatnonzero(w > 0)
    if len(idx) < 3:
        raise ValueError("registration: fewer than 3 weighted pixels to fit")
    idx = idx[_spread(len(idx), MAX_POINTS)]
    src, dst, w = (np.take(a, idx, axis=0).astype(np.float64) for a in (src, dst, w))  # (take: ~5x [idx])
    d = dst - dst.mean(0)
    spread = float(np.sqrt(np.einsum("ij,ij->i", d, d)).mean()) + 1e-12
    return src, dst, w, INLIER_FRACTION * spread


def _fit_pairs(pairs: _Pairs, rotation: np.ndarray | None = None, tol: float = 0.0) -> tuple[np.ndarray, float]:
    """``(T (4, 4), inlier fraction)`` of the robust similarity fit (``robust_umeyama``, early stop ``tol``) of
    :func:`_weighted_pairs`' pairs, with ``rotation`` (3, 3) held when given."""
    src, dst, w, thresh = pairs
    s, R, t, inliers = robust_umeyama(src, dst, w, thresh, rotation=rotation, tol=tol)
    return sim3_to_matrix(s, R, t), float(inliers.mean())


FLOW_FB_PIXELS = 1.0
"""Forward-backward consistency of the optical flow (pixels): pixels whose round trip misses by more are dropped
(occlusions, frame borders, textureless patches)."""


def flow_correspondences(rgb: np.ndarray, rgb_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense pixel correspondences from image ``rgb`` to ``rgb_ref`` by DIS optical flow (OpenCV, medium preset),
    kept where the backward flow returns within :data:`FLOW_FB_PIXELS`.

    Args:
        rgb, rgb_ref: ``(H, W, 3)`` uint8 images of nearby frames (at the network resolution, a flow of up to
            about 10 px between consecutive frames is tracked to about 0.1 px on the synthetic scenes).
    Returns:
        ``(keep (H, W) bool, xy (H, W, 2) float)``: which pixels of ``rgb`` have a match, and the matched
        sub-pixel position ``(x, y)`` in ``rgb_ref`` (pixel units, pixel centres at integers).
    """
    import cv2

    g, g_ref = (cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGB2GRAY) for im in (rgb, rgb_ref))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd, bwd = dis.calc(g, g_ref, None), dis.calc(g_ref, g, None)
    h, w = g.shape
    xy = np.stack(np.meshgrid(np.arange(w), np.arange(h)), axis=-1) + fwd
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
    back = cv2.remap(bwd, xy[..., 0].astype(np.float32), xy[..., 1].astype(np.float32), cv2.INTER_LINEAR)
    miss = fwd + back
    keep = inside & (np.einsum("ijk,ijk->ij", miss, miss) < FLOW_FB_PIXELS ** 2)
    return keep, xy


def _sample(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples ``(H, W, C)`` of ``image`` ``(H, W, C)`` at positions ``xy`` ``(H, W, 2)``."""
    import cv2

    out = cv2.remap(np.ascontiguousarray(image, dtype=np.float32), xy[..., 0].astype(np.float32),
                    xy[..., 1].astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(*xy.shape[:2], -1)


HOMOGRAPHY_PIXELS = 1.0
"""RANSAC reprojection threshold (pixels) of the homography :func:`flow_rotation` reads the rotation from."""


HOMOGRAPHY_POINTS = 1024
"""Matches (evenly spread) the homography is estimated from."""


def flow_rotation(xs: np.ndarray, ys: np.ndarray, uv: np.ndarray, focal: float,
                  shape: tuple[int, int]) -> np.ndarray | None:
    """Rotation camera-of-``v`` -> camera-of-``u`` from optical-flow matches alone: a RANSAC homography ``H``
    between the matched pixels, read as a pure rotation (``K^-1 H K`` projected onto SO(3); principal point at
    the image centre). Between consecutive frames the camera turns much more than the parallax of its small
    translation shifts pixels, so this is far less biased than a fit of the frame's I2P points when the network's
    depth is flattened (on the benchmark scenes with the bundled model: about 0.5 deg per frame against 2.2).

    Args:
        xs, ys: ``(M,)`` matched pixels of frame ``v`` (row-major order; :func:`flow_correspondences`' ``keep``);
            uv: ``(M, 2)`` their positions in frame ``u`` (its ``xy`` there).
        focal: focal length in pixels; shape: ``(H, W)`` of the images.
    Returns:
        ``R (3, 3)`` with ``x_u ~ R @ x_v`` for directions, or ``None`` (too few matches, no homography).
    """
    import cv2

    if len(xs) < 8:
        return None
    pick = _spread(len(xs), HOMOGRAPHY_POINTS)
    xs, ys, uv = xs[pick], ys[pick], uv[pick]
    src = np.stack([xs, ys], axis=1).astype(np.float64)
    H, _ = cv2.findHomography(src, uv.astype(np.float64), cv2.RANSAC, HOMOGRAPHY_PIXELS)
    if H is None:
        return None
    K = _pinhole(focal, *shape)
    return project_rotation(np.linalg.inv(K) @ H @ K)


def _pinhole(focal: float, h: int, w: int) -> np.ndarray:
    """``(3, 3)`` intrinsics of an ``h`` x ``w`` image with focal ``focal`` (pixels), principal point at its centre."""
    return np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])


def project_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to ``M`` (3, 3), e.g. a sum of rotations (their chordal mean)."""
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


FIT_TOL = 1e-3
"""Early stop of :func:`register_by_flow`'s reweighting rounds (``robust_umeyama``'s ``tol``) once no pair's Huber
weight changes by more: on the bundled model's benchmark frames the similarities move by at most 1e-4 relative
(scale, translation) and 0.01 deg from the full rounds', against about 0.5 deg of per-frame rotation error."""

PARALLAX_ROUNDS = 2
"""Rounds of :func:`register_by_flow`'s rotation from the images in which the flow is first corrected for the
parallax of the camera's translation (as the previous round's fit and the frame's depth predict it)."""


class _RefMatches:
    """One registered frame u's flow matches, reduced once to the matched pixels for :func:`_image_rotation`'s
    rounds: flat indices ``pix`` (M,) of frame ``v``'s matched pixels (row-major order), their positions ``uv``
    (M, 2) in u, ``v``'s points there ``pts`` (M, 3) float64, u's camera -> world similarity ``sim`` (4, 4) and
    its rotation ``rot``."""

    def __init__(self, keep: np.ndarray, xy: np.ndarray, local: np.ndarray, sim_u: np.ndarray):
        self.pix = np.flatnonzero(keep)
        self.uv = np.take(xy.reshape(-1, 2), self.pix, axis=0)
        self.pts = np.take(local.reshape(-1, 3), self.pix, axis=0).astype(np.float64)
        self.sim, self.rot = sim_u, sim_u[:3, :3] / np.cbrt(np.linalg.det(sim_u[:3, :3]))


def _image_rotation(refs: list[_RefMatches], shape: tuple[int, int], focal: float,
                    T: np.ndarray | None) -> np.ndarray | None:
    """Camera -> world rotation ``(3, 3)`` of a frame of ``shape`` ``(H, W)`` from the images: the rotation of the
    matches to each registered frame u (:func:`flow_rotation`) composed with u's rotation, chordal mean. With a
    previous estimate ``T`` (4, 4) of the frame's similarity, each match is first moved by the parallax that
    translation causes for the frame's point at the pixel, so that what remains is the rotation's flow."""
    rot = np.zeros((3, 3))
    for ref in refs:
        idx = np.arange(len(ref.pix))
        if T is not None:  # camera-of-v -> camera-of-u similarity: matches whose point stays in front of u
            rel = np.linalg.inv(ref.sim) @ T
            A, t = rel[:3, :3], rel[:3, 3]
            z = ref.pts @ A[2]
            idx = np.flatnonzero((z + t[2] > 1e-6) & (z > 1e-6 * np.cbrt(np.linalg.det(A))))
        idx = idx[_spread(len(idx), HOMOGRAPHY_POINTS)]  # the matches the homography will use
        uv = np.take(ref.uv, idx, axis=0)
        if T is not None:  # minus the parallax: the point's projection with and without the translation
            turned = np.take(ref.pts, idx, axis=0) @ A.T  # the rotation's scale does not move the projection
            full = turned + t
            uv = uv - focal * (full[:, :2] / full[:, 2:] - turned[:, :2] / turned[:, 2:])
        ys, xs = np.divmod(ref.pix[idx], shape[1])
        rel_rot = flow_rotation(xs, ys, uv, focal, shape)
        if rel_rot is not None:
            rot += ref.rot @ rel_rot
    return project_rotation(rot) if rot.any() else None


def chain_flow(links: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences from frame ``a`` to a frame several steps away by composing consecutive flows, so that a
    longer baseline costs no new flow and stays within the range DIS tracks (at 112 px the direct flow of two frames
    apart already misses by pixels, the composed one by about 0.2).

    Args:
        links: ``[(keep (H, W) bool, xy (H, W, 2))]`` the flows a -> b, b -> c, ... (:func:`flow_correspondences`).
    Returns:
        ``(keep, xy)`` from ``a`` to the last frame: pixels kept at every step, their composed positions.
    """
    keep, xy = links[0]
    for keep_next, xy_next in links[1:]:
        keep = keep & (_sample(keep_next[..., None].astype(np.float32), xy)[..., 0] > 0.999)
        xy = _sample(xy_next, xy)
    return keep, xy


def register_by_flow(local: np.ndarray, weight: np.ndarray,
                     registered: list[tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray,
                                            np.ndarray | None]],
                     focal: float | None = None) -> tuple[np.ndarray, float]:
    """Similarity camera -> world of a frame from its own pointmap and optical-flow matches to registered frames.

    Each pixel of the frame matched (``flow_correspondences``) to a pixel of a registered frame pairs the frame's
    camera-frame point with that pixel's world point; a robust weighted Umeyama fit of all pairs
    (``register_from_window``'s fit, its pairs picked once for every round, reweighting stopped at
    :data:`FIT_TOL`) gives the similarity. Unlike the I2P window's overlap, the correspondences do
    not depend on the network turning one view into another's frame. With ``focal`` the rotation is not fitted to
    the points but taken from the images (:func:`_image_rotation`: homographies of the flow, corrected in
    :data:`PARALLAX_ROUNDS` further rounds for the parallax of the fitted translation); only scale and
    translation come from the points then, so a flattened network depth no longer holds the camera's turn back.

    Args:
        local: ``(H, W, 3)`` the frame's points in its camera frame (I2P, reference view).
        weight: ``(H, W)`` per-pixel weights >= 0 of ``local``.
        registered: ``[((keep, xy), world_u (H, W, 3), weight_u (H, W), sim_u (4, 4) or None)]`` registered
            nearby frames: the frame's flow matches to u (:func:`flow_correspondences`, :func:`chain_flow`), u's
            world points and weights, and u's camera -> world similarity (used with ``focal``).
        focal: focal length (pixels) of the frame, or ``None`` (rotation fitted to the points).
    Returns:
        ``(T (4, 4) similarity, inlier fraction of the weighted pairs)``.
    Raises:
        ValueError: fewer than 3 weighted pairs.
    """
    if not registered:
        raise ValueError("flow registration: no registered frame to match")
    src, dst, w = [], [], []
    for (keep, xy), world_u, weight_u, _ in registered:
        w_u = _sample(weight_u[..., None] * (np.einsum("ijk,ijk->ij", world_u, world_u)[..., None] > 0), xy)
        src.append(local.reshape(-1, 3))
        dst.append(_sample(world_u, xy).reshape(-1, 3))
        w.append((weight * keep * w_u[..., 0]).reshape(-1))
    pairs = _weighted_pairs(np.concatenate(src), np.concatenate(w), np.concatenate(dst))
    if focal is None:
        return _fit_pairs(pairs, tol=FIT_TOL)
    refs = [_RefMatches(keep, xy, local, sim_u) for (keep, xy), _, _, sim_u in registered if sim_u is not None]
    T, inliers = None, 0.0
    for _ in range(1 + PARALLAX_ROUNDS):
        T, inliers = _fit_pairs(pairs, _image_rotation(refs, local.shape[:2], focal, T), FIT_TOL)
    return T, inliers
