"""A file-backed RGB-D sequence with poses (the common type returned by the Replica / 7-Scenes / TUM readers) and
the image / depth-PNG helpers they share."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


def read_rgb(path: str | Path) -> np.ndarray:
    """Image file -> RGB (H, W, 3) uint8. Raises FileNotFoundError (missing), another OSError (not a regular
    file, permission denied, I/O error) or ValueError (empty or undecodable)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise IsADirectoryError(21, "not a regular file", str(path)) if path.is_dir() else \
            OSError(f"not a regular file: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise ValueError(f"empty image file (0 bytes): {path}")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ValueError(f"cannot decode image ({exc.err}): {path}") from None
    if img is None:
        raise ValueError(f"cannot decode image (corrupt or unsupported): {path}")
    return img[..., ::-1].copy()


def write_rgb(path: str | Path, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write RGB (H, W, 3) uint8 to ``path``; the extension picks the codec."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if Path(path).suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]), params):
        raise OSError(f"could not write image {path}")


def read_depth_png(path: str | Path, scale: float, invalid: int | None = None) -> np.ndarray:
    """16-bit depth PNG -> depth (H, W) float32 metres = value / scale; 0 and ``invalid`` become 0."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"depth image not found: {path}")
    raw = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ValueError(f"cannot decode depth image (corrupt or unsupported): {path}")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(f"depth image must be single-channel 16-bit, got {raw.dtype} {raw.shape}: {path}")
    depth = raw.astype(np.float32) / np.float32(scale)
    if invalid is not None:
        depth[raw == invalid] = 0.0
    return depth


def write_depth_png(path: str | Path, depth: np.ndarray, scale: float) -> None:
    """Depth (H, W) metres -> 16-bit PNG of round(depth * scale); depths beyond 65535 / scale are clipped."""
    raw = np.clip(np.round(np.nan_to_num(depth, nan=0.0) * scale), 0, 65535).astype(np.uint16)
    if not cv2.imwrite(str(path), raw):
        raise OSError(f"could not write depth image {path}")


@dataclass
class RGBDFrame:
    """One frame: rgb (H, W, 3) uint8, depth (H, W) float32 metres (0 = invalid), intrinsics K (3, 3), pose c2w
    (4, 4) in OpenCV axes, timestamp in seconds or None, and its index in the sequence."""

    index: int
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    timestamp: float | None = None


class RGBDSequence(Sequence[RGBDFrame]):
    """Frames of an RGB-D dataset on disk, loaded lazily.

    Args:
        rgb_paths / depth_paths: one image per frame (equal lengths).
        poses: camera-to-world (N, 4, 4), OpenCV axes, metres.
        K: intrinsics (3, 3) of the colour images, shared by all frames.
        depth_scale: stored depth value per metre; depth_invalid: raw value meaning "no depth" (besides 0).
        timestamps: optional (N,) seconds.
    """

    def __init__(self, rgb_paths: list[Path], depth_paths: list[Path], poses: np.ndarray, K: np.ndarray,
                 depth_scale: float, depth_invalid: int | None = None, timestamps: np.ndarray | None = None,
                 name: str = ""):
        poses = np.asarray(poses, dtype=np.float64)
        n = len(rgb_paths)
        if len(depth_paths) != n or poses.shape != (n, 4, 4):
            raise ValueError(f"{name or 'RGB-D sequence'}: mismatched frame counts: {n} colour images, "
                             f"{len(depth_paths)} depth images, {poses.shape[0] if poses.ndim == 3 else '?'} poses")
        if timestamps is not None and len(timestamps) != n:
            raise ValueError(f"{name}: {len(timestamps)} timestamps for {n} frames")
        self.rgb_paths = [Path(p) for p in rgb_paths]
        self.depth_paths = [Path(p) for p in depth_paths]
        self.poses = poses
        self.K = np.asarray(K, dtype=np.float64)
        self.depth_scale = float(depth_scale)
        self.depth_invalid = depth_invalid
        self.timestamps = None if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        self.name = name

    def __len__(self) -> int:
        return len(self.rgb_paths)

    def __getitem__(self, i: int) -> RGBDFrame:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range for {len(self)} frames")
        i = i % len(self)
        return RGBDFrame(i, self.load_rgb(i), self.load_depth(i), self.K, self.poses[i],
                         None if self.timestamps is None else float(self.timestamps[i]))

    def __iter__(self) -> Iterator[RGBDFrame]:
        return (self[i] for i in range(len(self)))

    def load_rgb(self, i: int) -> np.ndarray:
        """Colour image (H, W, 3) uint8 of frame i."""
        return read_rgb(self.rgb_paths[i])

    def load_depth(self, i: int) -> np.ndarray:
        """Depth (H, W) float32 metres of frame i (0 = invalid)."""
        return read_depth_png(self.depth_paths[i], self.depth_scale, self.depth_invalid)

    def load_depths(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Depths (N, H, W) float32 metres of the given frames (all by default)."""
        idx = range(len(self)) if indices is None else indices
        return np.stack([self.load_depth(i) for i in idx])

    def image_size(self) -> tuple[int, int]:
        """(width, height) of the colour images, read from the first frame."""
        h, w = self.load_rgb(0).shape[:2]
        return w, h
