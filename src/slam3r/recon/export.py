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

Nothing in ``OUT/`` is ever half-written: the writer builds the whole directory in a hidden sibling
``.<OUT name>.partial-<pid>/`` and swaps it in when it closes, so an existing ``OUT/`` from an earlier run is replaced
as a whole (never a mix of old and new files), and a run that ends before its first registered frame leaves nothing.
Frames that could not be registered (no confident point to place them) are listed in ``summary.json``
(``unregistered_frames``), have ``"registered": false`` and null ``pose_c2w`` / ``focal`` in ``cameras.json``, a comment
line instead of a pose in ``trajectory.txt``, and no points in the cloud.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from slam3r.data import jsonio
from slam3r.data.ply import write_ply
from slam3r.data.trajectory_io import write_tum_trajectory
from slam3r.recon.diagnostics import export_check
from slam3r.recon.summary import RunSummary
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
    _write_atomic(Path(path), struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
                  + struct.pack("<I4s", len(binary), b"BIN\0") + binary)


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


CLOUD_FORMATS: dict[str, Callable[[Path, "Cloud"], object]] = {
    "ply": lambda path, c: write_ply(path, c.xyz, c.rgb, c.conf),
    "glb": lambda path, c: write_glb(path, c.xyz, c.rgb),
}
"""Formats of the exported cloud, by file extension: each writes ``<scene>_recon.<ext>``. A new format is one entry
(the recon printout, the app's downloads and refiltering follow :func:`cloud_files`)."""


def cloud_files(scene: str) -> list[str]:
    """Names of the cloud files a result directory of ``scene`` holds, one per :data:`CLOUD_FORMATS` entry."""
    return [f"{scene}_recon.{ext}" for ext in CLOUD_FORMATS]


def write_cloud(out_dir: Path, scene: str, cloud: "Cloud") -> None:
    """Write ``cloud`` into ``out_dir`` in every :data:`CLOUD_FORMATS` format."""
    for ext, write in CLOUD_FORMATS.items():
        write(Path(out_dir) / f"{scene}_recon.{ext}", cloud)


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def check_out_dir(out: Path) -> None:
    """Refuse, before any work and creating nothing, an ``out`` the writer cannot or may not replace: a file, a path
    under a file, an unwritable place, or a non-empty directory that is not a slam3r result (no ``summary.json``),
    so re-running never deletes a user's own files. Raises :class:`slam3r.errors.InputError`."""
    from slam3r.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a directory (new or existing)")
    probe = out
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"--out {out} is under the file {probe}; give a directory path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {probe} is not writable; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "summary.json").is_file():
        raise InputError(f"output directory {out} is not empty and holds no slam3r result (no summary.json); "
                         "choose a new or empty directory")


def _swap_in(staged: Path, out: Path) -> None:
    """Make the finished directory ``staged`` the result ``out``, replacing an earlier result as a whole."""
    old = None
    out = Path(os.path.abspath(out))
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(staged, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ReconWriter:
    """Streams :class:`FrameResult` s into a staging directory beside ``out_dir`` (see module docstring); call
    :meth:`close` at the end to finish the files and swap them in, or :meth:`discard` to leave nothing."""

    def __init__(self, out_dir: str | Path, scene: str = "scene", *, conf_thres_l2w: float = 12.0,
                 num_points_save: int = 2_000_000, keep_preds: bool = True, frame_plys: bool = False,
                 seed: int = 42, low_conf_frame_thresh: float = 10.0) -> None:
        self.out = Path(out_dir)
        check_out_dir(self.out)
        self.staging = staging_dir(self.out)
        _remove_stale_staging(self.staging.parent, self.out.name)
        missing = [d for d in self.staging.parents if not d.exists()]
        self._created = missing[-1] if missing else self.staging  # removed again by discard()
        self.preds = self.staging / "preds"
        self.preds.mkdir(parents=True)
        self.scene = scene
        self.conf_thres, self.num_points, self.keep_preds = conf_thres_l2w, num_points_save, keep_preds
        self.frame_plys, self.seed = frame_plys, seed
        self.low_conf_frame_thresh = low_conf_frame_thresh
        self.files = {name: _NpyAppender(self.preds / f"{name}.npy", dt) for name, (_, dt) in PRED_FILES.items()}
        self.stamps: list[float] = []
        self.poses: list[np.ndarray] = []
        self.unregistered: list[int] = []
        self.cameras: list[dict[str, Any]] = []
        self.conf_means: list[float] = []
        self.next_frame = 0

    def add(self, r: FrameResult) -> None:
        if r.frame_id != self.next_frame:
            raise ValueError(f"frame {r.frame_id} arrived, expected {self.next_frame} (results must be in order)")
        for name, (attr, _) in PRED_FILES.items():
            self.files[name].append(getattr(r, attr))
        stamp = r.timestamp_ns / 1e9 if r.timestamp_ns is not None else float(r.frame_id)
        if r.registered:
            self.stamps.append(stamp)
            self.poses.append(r.pose_c2w)
        else:
            self.unregistered.append(r.frame_id)
        self.cameras.append({"frame_id": r.frame_id, "timestamp_ns": r.timestamp_ns,
                             "focal": r.focal if r.registered else None,
                             "is_keyframe": r.is_keyframe, "registered": r.registered,
                             "pose_c2w": np.round(r.pose_c2w, 8).tolist() if r.registered else None})
        self.conf_means.append(float(r.conf.mean()))
        if self.frame_plys:
            (self.staging / "frames").mkdir(exist_ok=True)
            xyz, rgb, conf = r.points(self.conf_thres)
            write_ply(self.staging / "frames" / f"frame_{r.frame_id}.ply", xyz, rgb, conf)
        self.next_frame += 1

    def discard(self) -> None:
        """Drop everything written so far (the run produced nothing worth keeping)."""
        for f in self.files.values():
            f.fh.close()
        shutil.rmtree(self._created, ignore_errors=True)

    def close(self, summary: RunSummary) -> RunSummary:
        """Finish all files and swap them in as ``out_dir``; returns ``summary`` as written, with the writer's
        fields (frames, points, low-confidence and unregistered frames, export check) filled in. With no frame at
        all, discards everything and raises ValueError."""
        if self.next_frame == 0:
            self.discard()
            raise ValueError("no frame was registered: nothing written")
        for f in self.files.values():
            f.close()
        notes = [f"frame {i} (timestamp_ns {self.cameras[i]['timestamp_ns']}) not registered: no confident point"
                 for i in self.unregistered]
        write_tum_trajectory(self.staging / "trajectory.txt", np.array(self.stamps),
                             np.array(self.poses).reshape(-1, 4, 4), notes=notes)
        meta = {"scene_id": self.scene, **summary.engine.metadata()}
        _write_atomic(self.preds / "metadata.json", jsonio.dumps(meta))
        _write_atomic(self.staging / "cameras.json", jsonio.dumps(self.cameras))
        arrays = [np.load(self.preds / f"{name}.npy", mmap_mode="r")
                  for name in ("registered_pcds", "registered_confs", "input_imgs")]
        cloud = select_points(*arrays, conf_thres=self.conf_thres, num_points=self.num_points, seed=self.seed)
        check = export_check(arrays[1], self.conf_thres)
        del arrays
        write_cloud(self.staging, self.scene, cloud)
        low = [i for i, c in enumerate(self.conf_means) if c < self.low_conf_frame_thresh]
        summary = summary.replace(frames=self.next_frame, points=len(cloud), low_confidence_frames=low,
                                  unregistered_frames=list(self.unregistered), export_check=check)
        _write_atomic(self.staging / "summary.json", jsonio.dumps(summary.to_json(), indent=1))
        if not self.keep_preds:
            for name in PRED_FILES:
                (self.preds / f"{name}.npy").unlink()
        _swap_in(self.staging, self.out)
        return summary


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Remove staging / replaced directories for ``name`` left by runs that were killed (their process is gone)."""
    for d in parent.glob(f".{name}.*-*"):
        kind, _, pid = d.name[len(name) + 2:].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def staging_dir(out: Path) -> Path:
    """Where a writer for ``out`` builds its files until it closes: a hidden sibling named after this process."""
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.partial-{os.getpid()}")
