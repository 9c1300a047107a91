"""The page's 3D view of a finished reconstruction: the exported points, optionally camera frusta, the trajectory
and one frame's pointmap highlighted, written as one glTF binary with a POINTS primitive and LINES primitives.

World coordinates are the pipeline's (OpenCV axes: x right, y down, z forward, scene units); like
:mod:`slam3r.data.glb` (which writes it) the file is flipped to glTF's y-up, z-back convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slam3r.data.glb import DEFAULT_RGB, GLBScene

FRUSTUM_RGB = (255, 200, 0)
KEYFRAME_RGB = (255, 60, 60)
TRAJECTORY_RGB = (80, 200, 255)
HIGHLIGHT_RGB = (255, 0, 255)


def frustum_segments(c2w: np.ndarray, focal: np.ndarray, size: int, depth: float) -> np.ndarray:
    """Wire-frame camera pyramids: ``c2w (N, 4, 4)`` camera-to-world poses, ``focal (N,)`` pixels for a square
    ``size`` x ``size`` image, pyramid ``depth`` in scene units -> line segments ``(N * 8, 2, 3)`` (4 edges from
    the centre to the image corners, 4 around the image rectangle)."""
    c2w = np.asarray(c2w, np.float64).reshape(-1, 4, 4)
    # (N,) image half-width at unit depth, at most 1 (a 90 degree view): implausible focals stay readable
    half = np.minimum(size / 2 / np.maximum(np.asarray(focal, np.float64).reshape(-1), 1e-6), 1.0)
    signs = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    corners_cam = np.concatenate([signs[None] * half[:, None, None], np.ones((len(half), 4, 1))], -1) * depth
    corners = np.einsum("nij,nkj->nki", c2w[:, :3, :3], corners_cam) + c2w[:, None, :3, 3]  # (N, 4, 3)
    centre = np.repeat(c2w[:, None, :3, 3], 4, axis=1)
    rim = np.roll(corners, -1, axis=1)
    segs = np.concatenate([np.stack([centre, corners], 2), np.stack([corners, rim], 2)], axis=1)  # (N, 8, 2, 3)
    return segs.reshape(-1, 2, 3).astype(np.float32)


def trajectory_segments(centres: np.ndarray) -> np.ndarray:
    """Camera centres ``(N, 3)`` in order -> the path between them as segments ``(N - 1, 2, 3)``."""
    c = np.asarray(centres, np.float32).reshape(-1, 3)
    return np.stack([c[:-1], c[1:]], axis=1)


MAX_FRUSTA = 200
"""At most this many camera frusta are drawn (every k-th camera beyond)."""
HIGHLIGHT_POINTS = 20_000


@dataclass
class ViewOptions:
    """What the page's 3D view shows besides the exported points."""

    cameras: bool = True
    trajectory: bool = True
    highlight: int | None = None
    """A frame id whose pointmap is drawn in :data:`HIGHLIGHT_RGB` (with its frustum), or ``None``."""


def write_view(result_dir: str | Path, path: str | Path, opt: ViewOptions) -> Path:
    """Write the 3D view of a reconstruction directory (its exported cloud, cameras and ``preds/``) to ``path``;
    frames that were not registered have no frustum, no place on the trajectory and nothing to highlight."""
    from slam3r.app.refilter import export_settings
    from slam3r.recon.output import RunOutput

    out = RunOutput(result_dir)
    cloud = out.cloud()
    cams = out.camera_arrays()
    shown = np.flatnonzero(cams.registered)
    poses, focals = cams.c2w[shown], cams.focal[shown]
    imgs = out.pred("input_imgs")
    size = int(imgs.shape[2]) if imgs.ndim == 4 else 1
    everything = np.concatenate([np.asarray(cloud.xyz, np.float32).reshape(-1, 3), poses[:, :3, 3]])
    extent = float(np.percentile(np.linalg.norm(everything - np.median(everything, 0), axis=1), 90)) \
        if len(everything) else 1.0
    rgb = cloud.rgb if cloud.rgb is not None else np.tile(np.array(DEFAULT_RGB, np.uint8), (len(cloud), 1))
    glb = GLBScene(generator="slam3r app").points(cloud.xyz, rgb)
    if opt.cameras and len(poses):
        pick = np.arange(0, len(poses), max(1, -(-len(poses) // MAX_FRUSTA)))
        colours = np.where(cams.keyframe[shown][pick, None], KEYFRAME_RGB, FRUSTUM_RGB).astype(np.uint8)
        glb.lines(frustum_segments(poses[pick], focals[pick], size, 0.08 * (extent or 1.0)), np.repeat(colours, 8, 0))
    if opt.trajectory and len(poses) > 1:
        glb.lines(trajectory_segments(poses[:, :3, 3]), TRAJECTORY_RGB)
    v = opt.highlight
    if v is not None and 0 <= v < len(cams.registered) and cams.registered[v]:
        pts, confs, _ = out.world_points()
        xyz = np.asarray(pts[v])[np.asarray(confs[v]) > export_settings(out.summary())["effective_conf_thres"]]
        if len(xyz) > HIGHLIGHT_POINTS:
            xyz = xyz[np.linspace(0, len(xyz) - 1, HIGHLIGHT_POINTS).astype(int)]
        glb.points(xyz, np.tile(np.array(HIGHLIGHT_RGB, np.uint8), (len(xyz), 1)))
        glb.lines(frustum_segments(cams.c2w[v:v + 1], cams.focal[v:v + 1], size, 0.12 * (extent or 1.0)),
                  HIGHLIGHT_RGB)
    return glb.write(path)
