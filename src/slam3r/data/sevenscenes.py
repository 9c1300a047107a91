"""Microsoft 7-Scenes reader: ``seq-XX/frame-XXXXXX.color.png``, ``.depth.png`` (uint16 millimetres, 65535 =
invalid) and ``.pose.txt`` (4x4 camera-to-world). Intrinsics default to the published 585 / 585 / 320 / 240.

Note that 7-Scenes depth comes from the Kinect's depth camera and is not registered to the colour image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam3r.data.rgbd import RGBDSequence

SEVEN_SCENES_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
SEVEN_SCENES_DEPTH_SCALE = 1000.0
SEVEN_SCENES_INVALID = 65535


def read_7scenes(seq_dir: str | Path, K: np.ndarray | None = None) -> RGBDSequence:
    """Read one 7-Scenes sequence folder (e.g. ``chess/seq-01``)."""
    seq_dir = Path(seq_dir)
    if not seq_dir.is_dir():
        raise FileNotFoundError(f"7-Scenes: sequence folder not found: {seq_dir}")
    colors = sorted(seq_dir.glob("frame-*.color.png"))
    if not colors:
        raise ValueError(f"7-Scenes: no frame-*.color.png images in {seq_dir}")
    depths, poses = [], []
    for c in colors:
        stem = c.name[: -len(".color.png")]
        d, p = seq_dir / f"{stem}.depth.png", seq_dir / f"{stem}.pose.txt"
        if not d.is_file() or not p.is_file():
            raise FileNotFoundError(f"7-Scenes: {c.name} has no matching {d.name if not d.is_file() else p.name}")
        pose = np.loadtxt(p, dtype=np.float64)
        if pose.shape != (4, 4):
            raise ValueError(f"7-Scenes: {p} does not hold a 4x4 matrix (shape {pose.shape})")
        depths.append(d)
        poses.append(pose)
    return RGBDSequence(colors, depths, np.stack(poses), SEVEN_SCENES_K if K is None else K,
                        SEVEN_SCENES_DEPTH_SCALE, SEVEN_SCENES_INVALID, name=str(seq_dir))
