"""The output directory of a reconstruction, in one place: its layout, the registry of cloud formats, the writer
that builds it as results are produced (:class:`ReconWriter`) and the reader of a finished one (:class:`RunOutput`,
used by refilter, the app, ``slam3r view``, ``slam3r eval``, ``slam3r export`` and loop closure).

Per-frame predictions are kept in the reference's ``preds/`` layout (streamed into ``.npy`` files, so RAM stays
flat for any video length), beside the confidence-filtered subsampled cloud in every :data:`CLOUD_FORMATS` format,
the camera trajectory (TUM) and intrinsics, and a metadata / summary JSON.

Layout of ``OUT/``::

    <scene>_recon.<ext>      for each CLOUD_FORMATS entry (ply, glb): points with L2W conf > conf_thres_l2w,
                             random-subsampled to num_points_save
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
    frames/frame_<i>.ply     with --frame-plys: each frame's confident points

Nothing in ``OUT/`` is ever half-written: the writer builds the whole directory in a hidden sibling
``.<OUT name>.partial-<pid>/`` and swaps it in when it closes, so an existing ``OUT/`` from an earlier run is replaced
as a whole (never a mix of old and new files), and a run that ends before its first registered frame leaves nothing.
Frames that could not be registered (no confident point to place them) are listed in ``summary.json``
(``unregistered_frames``), have ``"registered": false`` and null ``pose_c2w`` / ``focal`` in ``cameras.json``, a comment
line instead of a pose in ``trajectory.txt``, and no points in the cloud.

To add a cloud format: a module in ``slam3r/data/`` with a ``write(path, cloud: PointCloud)`` function, and its
entry in :data:`CLOUD_FORMATS`; the writer, refilter, loop closure, the app's downloads and the recon printout follow.
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
from slam3r.data.cloud import PointCloud, select_points
from slam3r.data.files import write_atomic
from slam3r.data.glb import write_glb_cloud
from slam3r.data.ply import read_ply, write_ply, write_ply_cloud
from slam3r.data.trajectory_io import read_tum_trajectory, write_tum_trajectory
from slam3r.recon.diagnostics import export_check
from slam3r.recon.summary import RunSummary
from slam3r.recon.types import FrameResult

CLOUD_FORMATS: dict[str, Callable[[Path, PointCloud], object]] = {
    "ply": write_ply_cloud,
    "glb": write_glb_cloud,
}
"""Formats of the exported cloud, by file extension: each writes ``<scene>_recon.<ext>``. The only list of formats:
the writer, refilter, loop closure, the app's downloads and the recon printout all follow it."""

TRAJECTORY = "trajectory.txt"
CAMERAS = "cameras.json"
SUMMARY = "summary.json"
PREDS = "preds"
METADATA = "metadata.json"
FRAMES = "frames"

PRED_FILES = {  # preds/<name>.npy: (the FrameResult attribute it stacks, dtype)
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


@dataclass
class CameraArrays:
    """``cameras.json`` as arrays, V frames in stream order.

    Attributes:
        frame_ids: ``(V,)`` int64 stream indices.
        c2w: ``(V, 4, 4)`` float64 camera-to-world poses (OpenCV axes, scene units); NaN where not registered.
        focal: ``(V,)`` float64 focal lengths in pixels at network resolution; NaN where not registered.
        keyframe: ``(V,)`` bool, the frame was a keyframe when its result was emitted.
        registered: ``(V,)`` bool.
    """

    frame_ids: np.ndarray
    c2w: np.ndarray
    focal: np.ndarray
    keyframe: np.ndarray
    registered: np.ndarray

    @classmethod
    def from_json(cls, cams: list[dict[str, Any]]) -> "CameraArrays":
        nan = np.full((4, 4), np.nan)
        return cls(frame_ids=np.array([c["frame_id"] for c in cams], np.int64),
                   c2w=np.array([c["pose_c2w"] if c["pose_c2w"] is not None else nan for c in cams],
                                np.float64).reshape(-1, 4, 4),
                   focal=np.array([c["focal"] for c in cams], np.float64),  # None -> NaN
                   keyframe=np.array([bool(c.get("is_keyframe")) for c in cams], bool),
                   registered=np.array([c.get("registered", c["pose_c2w"] is not None) for c in cams], bool))


class RunOutput:
    """A reconstruction output directory (layout: module docstring): where each of its files is, what a finished one
    holds, and the in-place updates of a finished one (a re-filtered cloud, loop-corrected poses, its summary).

    ``scene`` is read from ``preds/metadata.json`` unless given (the writer gives it while it builds the directory).
    Arrays of ``preds/`` are memory-mapped (read-only)."""

    def __init__(self, path: str | Path, scene: str | None = None) -> None:
        self.path = Path(path)
        self._scene = scene

    # --------------------------------------------------------------------------------------------- layout
    @property
    def preds_dir(self) -> Path:
        return self.path / PREDS

    @property
    def metadata_path(self) -> Path:
        return self.preds_dir / METADATA

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def cameras_path(self) -> Path:
        return self.path / CAMERAS

    @property
    def trajectory_path(self) -> Path:
        return self.path / TRAJECTORY

    def pred_path(self, name: str) -> Path:
        """``preds/<name>.npy``; ``name`` is a :data:`PRED_FILES` key."""
        return self.preds_dir / f"{name}.npy"

    def cloud_path(self, ext: str = "ply") -> Path:
        """The exported cloud in the :data:`CLOUD_FORMATS` format ``ext``."""
        return self.path / f"{self.scene}_recon.{ext}"

    def frame_ply_path(self, frame_id: int) -> Path:
        return self.path / FRAMES / f"frame_{frame_id}.ply"

    @property
    def scene(self) -> str:
        """The scene name the output files are named after."""
        if self._scene is None:
            self._scene = str(self.metadata()["scene_id"])
        return self._scene

    # -------------------------------------------------------------------------------------------- reading
    def is_result(self) -> bool:
        """Whether this is a finished slam3r result (it has a ``summary.json``)."""
        return self.summary_path.is_file()

    def has_preds(self) -> bool:
        """Whether the per-frame predictions were kept (a run without ``--no-preds``)."""
        return self.pred_path("registered_pcds").is_file()

    def require_preds(self, needed_by: str) -> None:
        """Raise FileNotFoundError naming ``needed_by`` when the per-frame predictions are missing."""
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a directory")
        if not self.has_preds():
            raise FileNotFoundError(f"{self.pred_path('registered_pcds')} not found: {needed_by} needs the "
                                    "per-frame predictions (run slam3r recon without --no-preds)")

    def metadata(self) -> dict[str, Any]:
        """``preds/metadata.json``: scene_id, init_winsize, kf_stride, init_ref_id."""
        if not self.metadata_path.is_file():
            raise FileNotFoundError(f"{self.metadata_path} not found: not a reconstruction directory written with "
                                    "predictions")
        return json.loads(self.metadata_path.read_text())

    def summary(self) -> dict[str, Any]:
        """``summary.json`` as written (``{}`` when there is none): the one reader of a run's summary."""
        return json.loads(self.summary_path.read_text()) if self.summary_path.is_file() else {}

    def cameras(self) -> list[dict[str, Any]]:
        """``cameras.json``: one dict per frame (frame_id, timestamp_ns, focal, is_keyframe, registered,
        pose_c2w; focal and pose null where not registered)."""
        return json.loads(self.cameras_path.read_text())

    def camera_arrays(self) -> CameraArrays:
        return CameraArrays.from_json(self.cameras())

    def trajectory(self) -> tuple[np.ndarray, np.ndarray]:
        """``trajectory.txt``: timestamps ``(N,)`` seconds and camera-to-world poses ``(N, 4, 4)`` of the
        registered frames."""
        return read_tum_trajectory(self.trajectory_path)

    def pred(self, name: str) -> np.ndarray:
        """``preds/<name>.npy`` memory-mapped (see :data:`PRED_FILES` for names, shapes and dtypes)."""
        return np.load(self.pred_path(name), mmap_mode="r")

    def world_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points ``(V, S, S, 3)``, L2W confidences ``(V, S, S)`` and colours ``(V, S, S, 3)`` (mapped)."""
        return self.pred("registered_pcds"), self.pred("registered_confs"), self.pred("input_imgs")

    def select(self, conf_thres: float, num_points: int, seed: int = 42) -> PointCloud:
        """:func:`~slam3r.data.cloud.select_points` over ``preds/`` (the export's selection)."""
        return select_points(*self.world_points(), conf_thres=conf_thres, num_points=num_points, seed=seed)

    def cloud(self) -> PointCloud:
        """The exported cloud, read back from its PLY."""
        return read_ply(self.cloud_path("ply"))

    def files(self) -> list[Path]:
        """The result's deliverables that exist: the cloud in every format, trajectory, summary and cameras."""
        paths = [self.cloud_path(ext) for ext in CLOUD_FORMATS]
        return [p for p in (*paths, self.trajectory_path, self.summary_path, self.cameras_path) if p.is_file()]

    # ------------------------------------------------------------------------------------------- updating
    def write_cloud(self, cloud: PointCloud) -> None:
        """Write ``cloud`` in every :data:`CLOUD_FORMATS` format (each file complete or absent)."""
        for ext, write in CLOUD_FORMATS.items():
            write(self.cloud_path(ext), cloud)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_atomic(self.summary_path, jsonio.dumps(summary, indent=1))

    def write_cameras(self, cameras: list[dict[str, Any]]) -> None:
        write_atomic(self.cameras_path, jsonio.dumps(cameras))

    def write_metadata(self, metadata: dict[str, Any]) -> None:
        write_atomic(self.metadata_path, jsonio.dumps(metadata))

    def write_trajectory(self, stamps: np.ndarray, c2w: np.ndarray, notes: list[str] | tuple = ()) -> None:
        write_tum_trajectory(self.trajectory_path, stamps, c2w, notes=notes)

    def drop_preds(self) -> None:
        """Delete the per-frame prediction arrays (``metadata.json`` stays)."""
        for name in PRED_FILES:
            self.pred_path(name).unlink(missing_ok=True)


def unregistered_notes(cameras: list[dict[str, Any]]) -> list[str]:
    """The comment lines of ``trajectory.txt`` for the frames of ``cameras`` (``cameras.json``) without a pose."""
    return [f"frame {c['frame_id']} (timestamp_ns {c['timestamp_ns']}) not registered: no confident point"
            for c in cameras if c["pose_c2w"] is None]


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
    if out.is_dir() and any(out.iterdir()) and not RunOutput(out).is_result():
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
        self.layout = RunOutput(self.staging, scene)  # the files, at their places in the staging directory
        self.layout.preds_dir.mkdir(parents=True)
        self.scene = scene
        self.conf_thres, self.num_points, self.keep_preds = conf_thres_l2w, num_points_save, keep_preds
        self.frame_plys, self.seed = frame_plys, seed
        self.low_conf_frame_thresh = low_conf_frame_thresh
        self.files = {name: _NpyAppender(self.layout.pred_path(name), dt) for name, (_, dt) in PRED_FILES.items()}
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
            path = self.layout.frame_ply_path(r.frame_id)
            path.parent.mkdir(exist_ok=True)
            write_ply(path, *r.points(self.conf_thres))
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
        notes = unregistered_notes(self.cameras)
        out = self.layout
        out.write_trajectory(np.array(self.stamps), np.array(self.poses).reshape(-1, 4, 4), notes=notes)
        out.write_metadata({"scene_id": self.scene, **summary.engine.metadata()})
        out.write_cameras(self.cameras)
        cloud = out.select(self.conf_thres, self.num_points, self.seed)
        check = export_check(out.pred("registered_confs"), self.conf_thres)
        out.write_cloud(cloud)
        low = [i for i, c in enumerate(self.conf_means) if c < self.low_conf_frame_thresh]
        summary = summary.replace(frames=self.next_frame, points=len(cloud), low_confidence_frames=low,
                                  unregistered_frames=list(self.unregistered), export_check=check)
        out.write_summary(summary.to_json())
        if not self.keep_preds:
            out.drop_preds()
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
