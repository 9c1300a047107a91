"""Open an RGB-D dataset folder of any supported layout (Replica / NICE-SLAM, TUM RGB-D, 7-Scenes)."""

from __future__ import annotations

from pathlib import Path

from slam3r.data.replica import read_replica
from slam3r.data.rgbd import RGBDSequence
from slam3r.data.sevenscenes import read_7scenes
from slam3r.data.tum import read_tum_rgbd


def detect_layout(root: str | Path) -> str:
    """"replica", "tum" or "7scenes" from the files in ``root``; ValueError if none matches."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if (root / "results").is_dir():
        return "replica"
    if (root / "rgb.txt").is_file():
        return "tum"
    if next(root.glob("frame-*.color.png"), None) is not None:
        return "7scenes"
    raise ValueError(f"{root}: not a Replica (results/), TUM RGB-D (rgb.txt) or 7-Scenes (frame-*.color.png) "
                     "sequence folder")


def read_rgbd(root: str | Path, layout: str | None = None) -> RGBDSequence:
    """Read the sequence in ``root``; ``layout`` ("replica" / "tum" / "7scenes") defaults to auto-detection."""
    layout = layout or detect_layout(root)
    readers = {"replica": read_replica, "tum": read_tum_rgbd, "7scenes": read_7scenes}
    if layout not in readers:
        raise ValueError(f"unknown dataset layout {layout!r}; expected one of {sorted(readers)}")
    return readers[layout](root)
