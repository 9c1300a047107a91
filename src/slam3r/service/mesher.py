"""Surface meshing off the hot path: Open3D screened Poisson in a separate (spawned) process.

The child dies with its parent (``prctl(PR_SET_PDEATHSIG)`` on Linux, a parent watch elsewhere), so a worker killed
with ``kill -9`` leaves no orphan. The service hands a subsampled snapshot of the map to :class:`Mesher` and keeps processing frames; results are
collected later with :meth:`Mesher.poll`. One job runs at a time. *Live* jobs (mesh updates for viewers) coalesce
per key: while the process is busy only the newest snapshot of each key waits, older ones are dropped. *Save* jobs
(the mesh of a finished segment, written to a PLY file) are never dropped and run before waiting live jobs.

Pipeline of one job (run in the child): normals from a hybrid KD search (radius ``normal_radius``, ``normal_nn``
neighbours) oriented towards the nearest camera centre; Poisson reconstruction (``depth``, ``scale``); vertices
whose Poisson density is in the lowest ``density_quantile`` removed (spurious surface far from the data); crop to
the points' bounding box grown by ``normal_radius``; quadric decimation to ``decimate`` of the triangles (at least ``min_triangles``); vertex
colours from the nearest input point.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeshParams:
    """Poisson meshing settings (lengths in scene units)."""

    depth: int = 8
    scale: float = 1.1
    normal_radius: float = 0.05
    normal_nn: int = 20
    density_quantile: float = 0.02
    decimate: float = 0.1
    min_triangles: int = 1000


@dataclass
class MeshJob:
    """A snapshot to mesh: points ``(N, 3)`` float32, colours ``(N, 3)`` uint8, camera centres ``(C, 3)``."""

    key: Hashable
    xyz: np.ndarray
    rgb: np.ndarray
    cameras: np.ndarray
    keyframe_id: int
    save_path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeshResult:
    """A finished job: ``vertices (V, 3)`` float32, ``faces (F, 3)`` int32, ``colors (V, 3)`` uint8; ``error`` is
    set (and the arrays empty) if meshing failed."""

    key: Hashable
    keyframe_id: int
    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    save_path: str | None
    info: dict[str, Any]
    seconds: float
    error: str | None = None


def poisson_mesh(xyz: np.ndarray, rgb: np.ndarray, cameras: np.ndarray,
                 params: MeshParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mesh a coloured point set (see module docstring). Returns vertices, faces, vertex colours (uint8)."""
    import open3d as o3d
    from scipy.spatial import cKDTree

    pts = np.asarray(xyz, np.float64)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=params.normal_radius, max_nn=params.normal_nn))
    normals = np.asarray(pcd.normals)
    if len(cameras):
        _, nearest = cKDTree(np.asarray(cameras, np.float64)).query(pts)
        to_cam = np.asarray(cameras, np.float64)[nearest] - pts
        flip = np.einsum("ij,ij->i", normals, to_cam) < 0
        normals[flip] *= -1
        pcd.normals = o3d.utility.Vector3dVector(normals)
    mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(
        pcd, depth=params.depth, scale=params.scale, linear_fit=False)
    density = np.asarray(density)
    if len(density) and params.density_quantile > 0:
        mesh.remove_vertices_by_mask(density < np.quantile(density, params.density_quantile))
    margin = params.normal_radius                # keeps a flat (zero-thickness) map croppable
    mesh = mesh.crop(o3d.geometry.AxisAlignedBoundingBox(pts.min(0) - margin, pts.max(0) + margin))
    n_tri = len(mesh.triangles)
    target = max(params.min_triangles, int(n_tri * params.decimate))
    if n_tri > target:
        mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=target)
    mesh.remove_unreferenced_vertices()
    vertices = np.asarray(mesh.vertices, np.float32)
    faces = np.asarray(mesh.triangles, np.int32)
    if len(vertices):
        _, nearest = cKDTree(pts).query(vertices)
        colors = np.asarray(rgb, np.uint8)[nearest]
    else:
        colors = np.zeros((0, 3), np.uint8)
    return vertices, faces, colors


def write_mesh_ply(path: str, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY with coloured vertices and triangle faces."""
    from pathlib import Path

    v = np.empty(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                       ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = vertices.T
    v["red"], v["green"], v["blue"] = colors.T
    f = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    f["n"], f["idx"] = 3, faces
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(v)}", "property float x",
              "property float y", "property float z", "property uchar red", "property uchar green",
              "property uchar blue", f"element face {len(f)}", "property list uchar int vertex_indices", "end_header"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(v.tobytes())
        fh.write(f.tobytes())


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when its parent does, even after a ``kill -9`` of the parent: on Linux the kernel
    sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``; strictly, when the parent *thread* that started this process ends,
    so :meth:`Mesher.start` belongs in the worker's long-lived thread); elsewhere a watcher thread polls the
    parent's pid."""
    import ctypes
    import os
    import signal
    import sys
    import threading
    import time

    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:     # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:                  # the parent died before the call
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child(jobs: Any, results: Any, params: MeshParams, parent_pid: int) -> None:
    """Child process main loop: mesh jobs until a ``None`` job arrives (or the parent dies)."""
    import time

    die_with_parent(parent_pid)
    import open3d as o3d

    o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
    while True:
        job = jobs.get()
        if job is None:
            return
        t0 = time.perf_counter()
        try:
            v, f, c = poisson_mesh(job.xyz, job.rgb, job.cameras, params)
            if job.save_path:
                write_mesh_ply(job.save_path, v, f, c)
            err = None
        except Exception as exc:  # reported to the parent, never kills the mesher
            v, f, c = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32), np.zeros((0, 3), np.uint8)
            err = f"{type(exc).__name__}: {exc}"
        results.put(MeshResult(job.key, job.keyframe_id, v, f, c, job.save_path, job.info,
                               time.perf_counter() - t0, err))


class Mesher:
    """Parent-side handle of the meshing process (not thread-safe: use it from one thread)."""

    def __init__(self, params: MeshParams | None = None, max_points: int = 50_000, seed: int = 0) -> None:
        self.params = params or MeshParams()
        self.max_points = max_points
        self._rng = np.random.default_rng(seed)
        self._ctx = mp.get_context("spawn")
        self._jobs = self._ctx.Queue()
        self._results = self._ctx.Queue()
        self._proc: Any = None
        self._busy = False
        self._live: dict[Hashable, MeshJob] = {}
        self._saves: deque[MeshJob] = deque()
        self.coalesced = 0

    def start(self) -> None:
        """Spawn the meshing process (imports Open3D there)."""
        if self._proc is None:
            import os

            self._proc = self._ctx.Process(target=_child, args=(self._jobs, self._results, self.params, os.getpid()),
                                           name="slam3r-mesher", daemon=True)
            self._proc.start()

    @property
    def busy(self) -> bool:
        """A job is running in the child."""
        return self._busy

    def snapshot(self, key: Hashable, xyz: np.ndarray, rgb: np.ndarray, cameras: np.ndarray, keyframe_id: int,
                 save_path: str | None = None, info: dict[str, Any] | None = None) -> MeshJob:
        """A job from (possibly huge) map arrays, randomly subsampled to ``max_points`` (copies the data)."""
        if len(xyz) > self.max_points:
            keep = self._rng.choice(len(xyz), self.max_points, replace=False)
            xyz, rgb = xyz[keep], rgb[keep]
        return MeshJob(key, np.array(xyz, np.float32), np.array(rgb, np.uint8), np.array(cameras, np.float32),
                       keyframe_id, save_path, dict(info or {}))

    def submit(self, job: MeshJob) -> bool:
        """Queue a job; returns False when a live job replaced a waiting one of the same key (coalesced)."""
        replaced = False
        if job.save_path:
            self._saves.append(job)
        else:
            replaced = job.key in self._live
            self.coalesced += replaced
            self._live[job.key] = job
        self._dispatch()
        return not replaced

    def pending(self) -> int:
        """Jobs waiting or running."""
        return len(self._saves) + len(self._live) + int(self._busy)

    def _dispatch(self) -> None:
        if self._busy or self._proc is None:
            return
        if self._saves:
            job = self._saves.popleft()
        elif self._live:
            key = next(iter(self._live))
            job = self._live.pop(key)
        else:
            return
        self._jobs.put(job)
        self._busy = True

    def poll(self, timeout: float = 0.0) -> list[MeshResult]:
        """Finished jobs (waits up to ``timeout`` s for the first one); starts the next waiting job."""
        out: list[MeshResult] = []
        while True:
            try:
                res = self._results.get(timeout=timeout) if timeout > 0 and not out else self._results.get_nowait()
            except queue.Empty:
                break
            self._busy = False
            out.append(res)
            self._dispatch()
        if self._busy and self._proc is not None and not self._proc.is_alive():
            log.error("mesher process died (exit code %s); restarting it", self._proc.exitcode)
            self._proc = None
            self._busy = False
            self.start()
            self._dispatch()
        return out

    def close(self, timeout: float = 30.0) -> list[MeshResult]:
        """Finish queued save jobs (waiting live jobs are dropped), stop the process; returns the last results."""
        import time

        self._live.clear()
        out: list[MeshResult] = []
        deadline = time.monotonic() + timeout
        while self._proc is not None and (self._busy or self._saves) and time.monotonic() < deadline:
            out += self.poll(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
        if self._proc is not None:
            if self._busy or self._saves:
                log.warning("mesher: %d job(s) unfinished after %.0f s; stopping it", self.pending(), timeout)
                self._proc.terminate()
            else:
                self._jobs.put(None)
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5)
            self._proc = None
        return out
