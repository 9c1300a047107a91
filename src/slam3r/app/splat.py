"""A small offscreen renderer (numpy z-buffered point splatting, OpenCV drawing) for videos of a reconstruction
growing frame by frame, seen from a virtual camera that follows the trajectory or orbits the scene."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from slam3r.data.cloud import select_points

BACKGROUND = (24, 24, 24)
TRAJECTORY_RGB = (255, 60, 60)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera ``(4, 4)`` of a camera at ``eye`` looking at ``target`` (OpenCV axes: x right, y down,
    z forward); ``up`` is the world direction that appears upwards."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(-up, z)  # right = down x forward
    if np.linalg.norm(x) < 1e-9:  # looking along ``up``: any perpendicular will do
        x = np.cross(np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, y, z])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def project(xyz: np.ndarray, w2c: np.ndarray, focal: float, width: int, height: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel columns, rows (int) and depths of the points of ``xyz (N, 3)`` in front of the camera and inside the
    image, and the boolean mask selecting those points."""
    cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    front = z > 1e-3
    u = np.full(len(z), -1.0)
    v = np.full(len(z), -1.0)
    u[front] = focal * cam[front, 0] / z[front] + (width - 1) / 2
    v[front] = focal * cam[front, 1] / z[front] + (height - 1) / 2
    ok = front & (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)
    return np.round(u[ok]).astype(np.int64), np.round(v[ok]).astype(np.int64), z[ok], ok


def splat(xyz: np.ndarray, rgb: np.ndarray, w2c: np.ndarray, focal: float, width: int, height: int,
          radius: int = 1) -> np.ndarray:
    """Render points as ``(2 radius + 1)``-pixel squares with a z-buffer; returns ``(height, width, 3)`` uint8."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    u, v, z, ok = project(np.asarray(xyz, np.float64), w2c, focal, width, height)
    colours = np.asarray(rgb)[ok]
    depth = np.full((height, width), np.inf)
    far_to_near = np.argsort(-z)
    for dv in range(-radius, radius + 1):
        for du in range(-radius, radius + 1):
            uu = np.clip(u[far_to_near] + du, 0, width - 1)
            vv = np.clip(v[far_to_near] + dv, 0, height - 1)
            zz = z[far_to_near]
            nearer = zz < depth[vv, uu]
            # later writes win: iterating far to near leaves the nearest point in each pixel
            img[vv[nearer], uu[nearer]] = colours[far_to_near][nearer]
            np.minimum.at(depth, (vv, uu), zz)
    return img


def draw_trajectory(img: np.ndarray, centres: np.ndarray, w2c: np.ndarray, focal: float) -> None:
    """Draw the camera path (``(T, 3)`` centres) on the RGB ``img`` as a polyline with a dot at the newest camera."""
    import cv2

    h, w = img.shape[:2]
    cam = centres @ w2c[:3, :3].T + w2c[:3, 3]
    pts = [(int(round(focal * x / z + (w - 1) / 2)), int(round(focal * y / z + (h - 1) / 2))) if z > 1e-3 else None
           for x, y, z in cam]
    for a, b in zip(pts, pts[1:]):
        if a is not None and b is not None:
            cv2.line(img, a, b, TRAJECTORY_RGB, 1, cv2.LINE_AA)
    if pts and pts[-1] is not None:
        cv2.circle(img, pts[-1], 4, TRAJECTORY_RGB, -1, cv2.LINE_AA)


def viewpoint(mode: Literal["follow", "orbit"], step: int, steps: int, c2w: np.ndarray, centre: np.ndarray,
              extent: float) -> np.ndarray:
    """World-to-camera of the virtual camera at ``step``: ``follow`` stays behind and above the current camera
    ``c2w`` looking where it looks; ``orbit`` circles ``centre`` once over the video at ``extent`` distance."""
    up = -c2w[:3, 1]  # the camera's "up" (OpenCV y points down)
    if mode == "follow":
        forward = c2w[:3, 2]
        eye = c2w[:3, 3] - forward * extent * 0.6 + up * extent * 0.35
        return look_at(eye, c2w[:3, 3] + forward * extent * 0.5, up)
    angle = 2 * np.pi * step / max(steps, 1)
    side = np.cross(up, np.array([0.0, 0.0, 1.0]))
    side = side / (np.linalg.norm(side) or 1.0)
    ahead = np.cross(side, up)
    eye = centre + extent * (np.cos(angle) * ahead + np.sin(angle) * side) + up * extent * 0.5
    return look_at(eye, centre, up)


def render_video(out: str | Path, pts: np.ndarray, confs: np.ndarray, imgs: np.ndarray, poses_c2w: np.ndarray, *,
                 conf_thres: float, points_per_frame: int = 5000, width: int = 640, height: int = 480,
                 fps: float = 10.0, mode: Literal["follow", "orbit"] = "follow", seed: int = 0) -> int:
    """Render the reconstruction growing frame by frame (frame ``i`` shows the points of frames ``0..i`` and the
    path so far) to an mp4; ``pts``/``confs``/``imgs`` are the ``preds/`` arrays. Returns the number of video frames."""
    import cv2

    n = len(confs)
    if n == 0:
        raise ValueError("the reconstruction has no frames to render")
    clouds = [select_points(pts[i:i + 1], confs[i:i + 1], imgs[i:i + 1], conf_thres, points_per_frame, seed + i)
              for i in range(n)]
    centres = np.asarray(poses_c2w, np.float64)[:, :3, 3]
    every = np.concatenate([c.xyz for c in clouds] + [centres.astype(np.float32)])
    centre = np.median(every, axis=0)
    extent = float(np.percentile(np.linalg.norm(every - centre, axis=1), 90)) * 1.5 or 1.0
    focal = 0.8 * width
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {out} (mp4v codec unavailable)")
    xyz = np.zeros((0, 3), np.float32)
    rgb = np.zeros((0, 3), np.uint8)
    try:
        for i in range(n):
            xyz = np.concatenate([xyz, clouds[i].xyz])
            rgb = np.concatenate([rgb, clouds[i].rgb])
            w2c = viewpoint(mode, i, n, poses_c2w[i], centre, extent)
            frame = splat(xyz, rgb, w2c, focal, width, height)
            draw_trajectory(frame, centres[:i + 1], w2c, focal)
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()
    return n
