"""Writing a reconstruction to disk as it is produced: per-frame predictions in the reference's ``preds/`` layout
(streamed into ``.npy`` files, so RAM stays flat for any video length), the confidence-filtered subsampled cloud
(``<scene>_recon.ply`` and ``.glb``), the camera trajectory (TUM) and intrinsics, and a metadata / summary JSON.

Layout of ``OUT/``::

    <scene>_recon.ply        points with L2W conf > conf_thres_l2w, random-subsampled to num_points_save
    <scene>_recon.glb        the same cloud as a glTF binary (POINTS primitive, vertex colours)
    trajectory.txt           TUM: timestamp tx ty tz qx qy qz qw (camera-to-world, world = initial keyframe)
    cameras.json             per-frame focal length (pixels at network resolution) and pose matrices
    summary.json             frames, stride, timings, FPS, points, low-confidence frames, the resolved settings
                             and where each came from, export_check (confidence percentiles; a warning and the
                             flag that keeps points when < 1% of the pixels pass the threshold)
    preds/local_pcds.npy     (V, S, S, 3) float32  I2P points, camera frame
    preds/registered_pcds.npy (V, S, S, 3) float32 world points
    preds/local_confs.npy    (V, S, S) float32
    preds/registered_confs.npy (V, S, S) float32
    preds/input_imgs.npy     (V, S, S, 3) uint8
    preds/metadata.json      {scene_id, init_winsize, kf_stride, init_ref_id}
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from slam3r.data import jsonio
from slam3r.data.ply import write_ply
from slam3r.data.trajectory_io import write_tum_trajectory
from slam3r.recon.diagnostics import export_check
from slam3r.recon.types import FrameResult

PRED_FILES = {
    "local_pcds": ("pts3d_local", np.float32),
    "registered_pcds": ("pts3d_world", np.float32),
    "local_confs": ("conf_i2p", np.float32),
    "registered_confs": ("conf", np.float32),
    "input_imgs": ("rgb", np.uint8),
}
_NPY_HEADER = 128


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header padded to a fixed size, so it can be rewritten once the length is known."""
    text = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = _NPY_HEADER - 10 - len(text) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} too long for the npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", _NPY_HEADER - 10) + (text + " " * pad + "\n").encode()


class _NpyAppender:
    """Append equally shaped arrays to a ``.npy`` file, fixing the header's first dimension on close."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.count = 0
        self.item_shape: tuple[int, ...] | None = None
        self.fh: IO[bytes] = open(path, "wb")
        self.fh.write(b"\0" * _NPY_HEADER)

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if self.item_shape is None:
            self.item_shape = arr.shape
        elif arr.shape != self.item_shape:
            raise ValueError(f"{self.path.name}: shape {arr.shape} differs from {self.item_shape}")
        self.fh.write(arr.tobytes())
        self.count += 1

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(_npy_header(self.dtype, (self.count, *(self.item_shape or ()))))
        self.fh.close()


def write_glb(path: str | Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Point cloud ``(N, 3)`` float + ``(N, 3)`` uint8 colours -> glTF 2.0 binary (one POINTS primitive).
    glTF is y-up; points are written in the OpenCV camera convention (y down) flipped to y-up, z-back."""
    pos = (np.asarray(xyz, np.float32) * np.array([1, -1, -1], np.float32)).astype("<f4")
    col = np.asarray(rgb, np.uint8)
    col = np.concatenate([col, np.full((len(col), 1), 255, np.uint8)], axis=1)  # RGBA, 4-byte aligned
    pos_bytes, col_bytes = pos.tobytes(), col.tobytes()
    n = len(pos)
    lo = pos.min(0).tolist() if n else [0, 0, 0]
    hi = pos.max(0).tolist() if n else [0, 0, 0]
    doc = {
        "asset": {"version": "2.0", "generator": "slam3r"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": 0}]}],
        "buffers": [{"byteLength": len(pos_bytes) + len(col_bytes)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes), "target": 34962},
                        {"buffer": 0, "byteOffset": len(pos_bytes), "byteLength": len(col_bytes), "target": 34962}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3", "min": lo, "max": hi},
                      {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"}],
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = pos_bytes + col_bytes
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<4sII", b"glTF", 2, total))
        fh.write(struct.pack("<I4s", len(js), b"JSON") + js)
        fh.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)


@dataclass
class Cloud:
    """Coloured points: xyz ``(N, 3)`` float32, rgb ``(N, 3)`` uint8, conf ``(N,)`` float32."""

    xyz: np.ndarray
    rgb: np.ndarray
    conf: np.ndarray

    def __len__(self) -> int:
        return int(len(self.xyz))


def select_points(pts: np.ndarray, confs: np.ndarray, imgs: np.ndarray, conf_thres: float, num_points: int,
                  seed: int) -> Cloud:
    """Points of ``pts (V, S, S, 3)`` whose ``confs (V, S, S)`` exceed ``conf_thres``, colours from ``imgs``,
    randomly reduced to at most ``num_points``. Works frame by frame, so memory-mapped inputs stay on disk."""
    masks = [np.asarray(c) > conf_thres for c in confs]
    counts = np.array([m.sum() for m in masks], dtype=np.int64)
    total = int(counts.sum())
    keep = min(max(int(num_points), 0), total)
    chosen = np.sort(np.random.default_rng(seed).choice(total, keep, replace=False)) if keep else np.zeros(0, int)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for v, mask in enumerate(masks):
        lo, hi = np.searchsorted(chosen, [bounds[v], bounds[v + 1]])
        if hi > lo:
            local = chosen[lo:hi] - bounds[v]
            parts.append((np.asarray(pts[v])[mask][local], np.asarray(imgs[v])[mask][local],
                          np.asarray(confs[v])[mask][local]))
    if not parts:
        return Cloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32))
    xyz, rgb, conf = (np.concatenate(p) for p in zip(*parts))
    return Cloud(xyz.astype(np.float32), rgb.astype(np.uint8), conf.astype(np.float32))


class ReconWriter:
    """Streams :class:`FrameResult` s to ``out_dir`` (see module docstring); call :meth:`close` at the end."""

    def __init__(self, out_dir: str | Path, scene: str = "scene", *, conf_thres_l2w: float = 12.0,
                 num_points_save: int = 2_000_000, keep_preds: bool = True, frame_plys: bool = False,
                 seed: int = 42, low_conf_frame_thresh: float = 10.0) -> None:
        self.out = Path(out_dir)
        self.preds = self.out / "preds"
        self.preds.mkdir(parents=True, exist_ok=True)
        self.scene = scene
        self.conf_thres, self.num_points, self.keep_preds = conf_thres_l2w, num_points_save, keep_preds
        self.frame_plys, self.seed = frame_plys, seed
        self.low_conf_frame_thresh = low_conf_frame_thresh
        self.files = {name: _NpyAppender(self.preds / f"{name}.npy", dt) for name, (_, dt) in PRED_FILES.items()}
        self.stamps: list[float] = []
        self.poses: list[np.ndarray] = []
        self.cameras: list[dict[str, Any]] = []
        self.conf_means: list[float] = []
        self.next_frame = 0

    def add(self, r: FrameResult) -> None:
        if r.frame_id != self.next_frame:
            raise ValueError(f"frame {r.frame_id} arrived, expected {self.next_frame} (results must be in order)")
        for name, (attr, _) in PRED_FILES.items():
            self.files[name].append(getattr(r, attr))
        self.stamps.append(r.timestamp_ns / 1e9 if r.timestamp_ns is not None else float(r.frame_id))
        self.poses.append(r.pose_c2w)
        self.cameras.append({"frame_id": r.frame_id, "timestamp_ns": r.timestamp_ns, "focal": r.focal,
                             "is_keyframe": r.is_keyframe, "pose_c2w": np.round(r.pose_c2w, 8).tolist()})
        self.conf_means.append(float(r.conf.mean()))
        if self.frame_plys:
            (self.out / "frames").mkdir(exist_ok=True)
            xyz, rgb, conf = r.points(self.conf_thres)
            write_ply(self.out / "frames" / f"frame_{r.frame_id}.ply", xyz, rgb, conf)
        self.next_frame += 1

    def close(self, metadata: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
        """Finish all files; returns the summary (with point count and low-confidence frames added)."""
        for f in self.files.values():
            f.close()
        write_tum_trajectory(self.out / "trajectory.txt", np.array(self.stamps), np.array(self.poses).reshape(-1, 4, 4))
        (self.preds / "metadata.json").write_text(jsonio.dumps({"scene_id": self.scene, **metadata}))
        (self.out / "cameras.json").write_text(jsonio.dumps(self.cameras))
        arrays = [np.load(self.preds / f"{name}.npy", mmap_mode="r")
                  for name in ("registered_pcds", "registered_confs", "input_imgs")]
        cloud = select_points(*arrays, conf_thres=self.conf_thres, num_points=self.num_points, seed=self.seed)
        write_ply(self.out / f"{self.scene}_recon.ply", cloud.xyz, cloud.rgb, cloud.conf)
        write_glb(self.out / f"{self.scene}_recon.glb", cloud.xyz, cloud.rgb)
        low = [i for i, c in enumerate(self.conf_means) if c < self.low_conf_frame_thresh]
        summary = {**summary, "frames": self.next_frame, "points": len(cloud),
                   "low_confidence_frames": low, "metadata": metadata,
                   "export_check": export_check(arrays[1], self.conf_thres)}
        (self.out / "summary.json").write_text(jsonio.dumps(summary, indent=1))
        if not self.keep_preds:
            for name in PRED_FILES:
                (self.preds / f"{name}.npy").unlink()
        return summary
