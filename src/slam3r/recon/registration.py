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


def register_by_flow(local: np.ndarray, weight: np.ndarray, rgb: np.ndarray,
                     registered: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, float]:
    """Similarity camera -> world of a frame from its own pointmap and optical-flow matches to registered frames.

    Each pixel of the frame matched (``flow_correspondences``) to a pixel of a registered frame pairs the frame's
    camera-frame point with that pixel's world point; a robust weighted Umeyama fit of all pairs
    (``register_from_window``'s fit) gives the similarity. Unlike the I2P window's overlap, the correspondences do
    not depend on the network turning one view into another's frame, so the camera's rotation is recovered
    whenever the frame's own depth is.

    Args:
        local: ``(H, W, 3)`` the frame's points in its camera frame (I2P, reference view).
        weight: ``(H, W)`` per-pixel weights >= 0 of ``local``.
        rgb: ``(H, W, 3)`` uint8 the frame's image.
        registered: ``[(rgb_u (H, W, 3), world_u (H, W, 3), weight_u (H, W))]`` registered nearby frames.
    Returns:
        ``(T (4, 4) similarity, inlier fraction of the weighted pairs)``.
    Raises:
        ValueError: fewer than 3 weighted pairs.
    """
    src, dst, w = [], [], []
    for rgb_u, world_u, weight_u in registered:
        keep, xy = flow_correspondences(rgb, rgb_u)
        w_u = _sample(weight_u[..., None] * (np.linalg.norm(world_u, axis=-1, keepdims=True) > 0), xy)
        src.append(local.reshape(-1, 3))
        dst.append(_sample(world_u, xy).reshape(-1, 3))
        w.append((weight * keep * w_u[..., 0]).reshape(-1))
    if not registered:
        raise ValueError("flow registration: no registered frame to match")
    return register_from_window(np.concatenate(src)[None], np.concatenate(w)[None], np.concatenate(dst)[None])
