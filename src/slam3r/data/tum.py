"""TUM RGB-D benchmark reader (``rgb.txt``, ``depth.txt``, ``groundtruth.txt``; depth PNGs with factor 5000).

Colour, depth and ground-truth poses are associated by timestamp (one-to-one, closest first, within 0.02 s by
default); frames without a depth image or a pose are dropped. Intrinsics default to the published calibration of
the Freiburg camera named in the folder (``freiburg1`` / ``2`` / ``3``), else the ROS default (525, 525, 319.5,
239.5); pass ``K`` to override.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slam3r.data.rgbd import RGBDSequence
from slam3r.data.trajectory_io import associate, read_tum_trajectory

TUM_DEPTH_SCALE = 5000.0
TUM_INTRINSICS = {  # fx, fy, cx, cy of the colour cameras
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
    "default": (525.0, 525.0, 319.5, 239.5),
}


def read_file_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """``rgb.txt`` / ``depth.txt`` -> (timestamps (N,) seconds, relative file names)."""
    if not path.is_file():
        raise FileNotFoundError(f"TUM RGB-D: list file not found: {path}")
    stamps, names = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'timestamp filename'")
        stamps.append(float(parts[0]))
        names.append(parts[1])
    return np.array(stamps, dtype=np.float64), names


def tum_intrinsics(root: Path) -> np.ndarray:
    """K (3, 3) for the Freiburg camera named in ``root``'s name, else the ROS default."""
    key = next((k for k in TUM_INTRINSICS if k in root.resolve().name), "default")
    fx, fy, cx, cy = TUM_INTRINSICS[key]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def read_tum_rgbd(root: str | Path, K: np.ndarray | None = None, max_diff: float = 0.02) -> RGBDSequence:
    """Read a TUM RGB-D sequence folder into an ``RGBDSequence`` (timestamps = colour image times)."""
    root = Path(root)
    t_rgb, rgb_names = read_file_list(root / "rgb.txt")
    t_depth, depth_names = read_file_list(root / "depth.txt")
    t_gt, gt_poses = read_tum_trajectory(root / "groundtruth.txt")
    ia, ib = associate(t_rgb, t_depth, max_diff)
    ja, jb = associate(t_rgb[ia], t_gt, max_diff)
    if len(ja) == 0:
        raise ValueError(f"TUM RGB-D: no colour frame in {root} has both a depth image and a pose within "
                         f"{max_diff} s")
    rgb_idx, depth_idx = ia[ja], ib[ja]
    return RGBDSequence(
        [root / rgb_names[i] for i in rgb_idx],
        [root / depth_names[i] for i in depth_idx],
        gt_poses[jb],
        tum_intrinsics(root) if K is None else K,
        TUM_DEPTH_SCALE,
        timestamps=t_rgb[rgb_idx],
        name=str(root),
    )
