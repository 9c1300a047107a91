"""A bounded, growing point cloud of what has been reconstructed so far, written as GLB snapshots for the page's
3D viewer while a reconstruction (or a live stream) runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam3r.data.glb import write_glb
from slam3r.recon.types import FrameResult

CAMERA_RGB = (255, 0, 0)
"""Colour of the camera-centre markers in previews."""


def write_axes_glb(path: str | Path, length: float = 1.0, n: int = 50) -> Path:
    """A small GLB of the world axes as points (x red, y green, z blue): the viewer's model before anything is
    reconstructed."""
    t = np.linspace(0.0, length, n, dtype=np.float32)
    xyz = np.concatenate([np.outer(t, axis) for axis in np.eye(3, dtype=np.float32)])
    rgb = np.repeat(np.eye(3, dtype=np.uint8) * 255, n, axis=0)
    write_glb(path, xyz, rgb)
    return Path(path)


class PreviewCloud:
    """Accumulates confident points (each frame sampled to ``per_frame`` points; the whole kept under
    ``max_points`` by random halving) and camera centres; :meth:`snapshot` writes them to a new GLB file."""

    def __init__(self, out_dir: str | Path, conf_thres: float, *, max_points: int = 200_000, per_frame: int = 3_000,
                 seed: int = 0) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.conf_thres, self.max_points, self.per_frame = conf_thres, max_points, per_frame
        self.rng = np.random.default_rng(seed)
        self.xyz = np.zeros((0, 3), np.float32)
        self.rgb = np.zeros((0, 3), np.uint8)
        self.cameras: list[np.ndarray] = []
        self.snapshots = 0

    def add_points(self, xyz: np.ndarray, rgb: np.ndarray) -> None:
        """Add world points ``(N, 3)`` with colours ``(N, 3)`` uint8 (at most ``per_frame`` of them are kept)."""
        if len(xyz) > self.per_frame:
            pick = self.rng.choice(len(xyz), self.per_frame, replace=False)
            xyz, rgb = xyz[pick], rgb[pick]
        self.xyz = np.concatenate([self.xyz, np.asarray(xyz, np.float32)])
        self.rgb = np.concatenate([self.rgb, np.asarray(rgb, np.uint8)])
        if len(self.xyz) > self.max_points:
            keep = self.rng.random(len(self.xyz)) < 0.5
            self.xyz, self.rgb = self.xyz[keep], self.rgb[keep]

    def add_camera(self, c2w: np.ndarray) -> None:
        """Mark a camera centre (from a ``(4, 4)`` camera-to-world pose)."""
        self.cameras.append(np.asarray(c2w, np.float64)[:3, 3].astype(np.float32))

    def add(self, result: FrameResult) -> None:
        """Add a registered frame's confident points and its camera."""
        xyz, rgb, _ = result.points(self.conf_thres)
        self.add_points(xyz, rgb)
        self.add_camera(result.pose_c2w)

    def __len__(self) -> int:
        return int(len(self.xyz))

    def snapshot(self) -> Path:
        """Write the current cloud plus camera markers to ``preview_<n>.glb`` (a new name each time, so a browser
        never shows a stale cached copy) and return its path; only the two newest snapshots are kept on disk."""
        cams = np.array(self.cameras, np.float32).reshape(-1, 3)
        xyz = np.concatenate([self.xyz, cams])
        rgb = np.concatenate([self.rgb, np.tile(np.array(CAMERA_RGB, np.uint8), (len(cams), 1))])
        self.snapshots += 1
        path = self.out / f"preview_{self.snapshots:04d}.glb"
        write_glb(path, xyz, rgb)
        (self.out / f"preview_{self.snapshots - 2:04d}.glb").unlink(missing_ok=True)
        return path
