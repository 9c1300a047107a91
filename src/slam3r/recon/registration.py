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
    src, dst, w = win_pts.reshape(-1, 3), world.reshape(-1, 3), weights.reshape(-1)
    idx = np.flatnonzero(w > 0)
    if len(idx) < 3:
        raise ValueError("geometric registration: fewer than 3 weighted pixels in the window's registered frames")
    if len(idx) > MAX_POINTS:
        idx = idx[np.linspace(0, len(idx) - 1, MAX_POINTS).astype(np.int64)]
    src, dst, w = src[idx].astype(np.float64), dst[idx].astype(np.float64), w[idx].astype(np.float64)
    spread = float(np.linalg.norm(dst - dst.mean(0), axis=1).mean()) + 1e-12
    s, R, t, inliers = robust_umeyama(src, dst, w, INLIER_FRACTION * spread, rotation=rotation)
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
    keep = inside & (np.linalg.norm(fwd + back, axis=-1) < FLOW_FB_PIXELS)
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


def flow_rotation(keep: np.ndarray, xy: np.ndarray, focal: float) -> np.ndarray | None:
    """Rotation camera-of-``v`` -> camera-of-``u`` from optical-flow matches alone: a RANSAC homography ``H``
    between the matched pixels, read as a pure rotation (``K^-1 H K`` projected onto SO(3); principal point at
    the image centre). Between consecutive frames the camera turns much more than the parallax of its small
    translation shifts pixels, so this is far less biased than a fit of the frame's I2P points when the network's
    depth is flattened (on the benchmark scenes with the bundled model: about 0.5 deg per frame against 2.2).

    Args:
        keep: ``(H, W)`` bool matched pixels of frame ``v``; xy: ``(H, W, 2)`` their positions in frame ``u``
            (:func:`flow_correspondences`).
        focal: focal length in pixels.
    Returns:
        ``R (3, 3)`` with ``x_u ~ R @ x_v`` for directions, or ``None`` (too few matches, no homography).
    """
    import cv2

    ys, xs = np.nonzero(keep)
    if len(xs) < 8:
        return None
    if len(xs) > HOMOGRAPHY_POINTS:
        pick = np.linspace(0, len(xs) - 1, HOMOGRAPHY_POINTS).astype(np.int64)
        xs, ys = xs[pick], ys[pick]
    h, w = keep.shape
    src = np.stack([xs, ys], axis=1).astype(np.float64)
    H, _ = cv2.findHomography(src, xy[ys, xs].astype(np.float64), cv2.RANSAC, HOMOGRAPHY_PIXELS)
    if H is None:
        return None
    K = _pinhole(focal, h, w)
    return project_rotation(np.linalg.inv(K) @ H @ K)


def _pinhole(focal: float, h: int, w: int) -> np.ndarray:
    """``(3, 3)`` intrinsics of an ``h`` x ``w`` image with focal ``focal`` (pixels), principal point at its centre."""
    return np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])


def project_rotation(M: np.ndarray) -> np.ndarray:
    """The rotation nearest (Frobenius) to ``M`` (3, 3), e.g. a sum of rotations (their chordal mean)."""
    U, _, Vt = np.linalg.svd(M)
    return U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt


PARALLAX_ROUNDS = 2
"""Rounds of :func:`register_by_flow`'s rotation from the images in which the flow is first corrected for the
parallax of the camera's translation (as the previous round's fit and the frame's depth predict it)."""


def _image_rotation(local: np.ndarray, matches: list[tuple[np.ndarray, np.ndarray]], sims: list[np.ndarray | None],
                    focal: float, T: np.ndarray | None) -> np.ndarray | None:
    """Camera -> world rotation ``(3, 3)`` of a frame from the images: :func:`flow_rotation` to each registered
    frame u (similarity camera-of-u -> world ``sims[u]`` (4, 4)) composed with u's rotation, chordal mean. With a
    previous estimate ``T`` (4, 4) of the frame's similarity, each match is first moved by the parallax that
    translation causes for the frame's point ``local`` (H, W, 3), so that what remains is the rotation's flow."""
    h, w = local.shape[:2]
    K = _pinhole(focal, h, w)
    rot = np.zeros((3, 3))
    for (keep, xy), sim_u in zip(matches, sims):
        if sim_u is None:
            continue
        rot_u = sim_u[:3, :3] / np.cbrt(np.linalg.det(sim_u[:3, :3]))
        if T is not None:  # camera-of-v -> camera-of-u similarity, its rotation part alone, both projected
            rel = np.linalg.inv(sim_u) @ T
            full, turned = local @ rel[:3, :3].T + rel[:3, 3], local @ (rel[:3, :3] / np.cbrt(np.linalg.det(rel[:3, :3]))).T
            ok = (full[..., 2] > 1e-6) & (turned[..., 2] > 1e-6)
            keep = keep & ok
            proj = [(p @ K.T)[..., :2] / np.maximum(p[..., 2:3], 1e-6) for p in (full, turned)]
            xy = xy - np.where(ok[..., None], proj[0] - proj[1], 0.0)
        rel_rot = flow_rotation(keep, xy, focal)
        if rel_rot is not None:
            rot += rot_u @ rel_rot
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
    (``register_from_window``'s fit) gives the similarity. Unlike the I2P window's overlap, the correspondences do
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
    src, dst, w, matches = [], [], [], []
    for (keep, xy), world_u, weight_u, _ in registered:
        matches.append((keep, xy))
        w_u = _sample(weight_u[..., None] * (np.linalg.norm(world_u, axis=-1, keepdims=True) > 0), xy)
        src.append(local.reshape(-1, 3))
        dst.append(_sample(world_u, xy).reshape(-1, 3))
        w.append((weight * keep * w_u[..., 0]).reshape(-1))
    src, w, dst = np.concatenate(src)[None], np.concatenate(w)[None], np.concatenate(dst)[None]
    T, inliers, rotation = None, 0.0, None
    for _ in range(1 + PARALLAX_ROUNDS if focal is not None else 1):
        if focal is not None:
            rotation = _image_rotation(local.astype(np.float64), matches, [r[3] for r in registered], focal, T)
        T, inliers = register_from_window(src, w, dst, rotation)
    return T, inliers
