"""Per-stream state of the service: the reconstruction engine, the map, the trajectory and the bookkeeping that
makes frame processing idempotent.

A frame is identified by ``(video_segment, timestamp_ns)`` (``video_segment`` is ``""`` for a stream sent without
the header). A key is *pending* from the moment the frame is
pushed into the engine until the engine returns its result, *cached* (its encoded outputs kept, to republish
them if RabbitMQ redelivers the frame) for the last ``republish_cache`` frames, and *seen* for the rest of the
segment, so a redelivered frame is never registered twice.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from slam3r.recon.loop import correct_pose
from slam3r.recon.point_buffer import Marker, PointBuffer
from slam3r.recon.types import FrameResult
from slam3r.service.broker import Delivery, Outgoing

Key = tuple[str, int]
"""(video_segment, timestamp_ns)."""


class StreamEngine(Protocol):
    """What the service needs from a streaming reconstruction engine
    (:class:`slam3r.recon.streaming.StreamingReconstructor` satisfies it): results come back in frame order,
    possibly later and several at once."""

    def push_many(self, rgbs: list[np.ndarray], timestamps: list[int | None] | None = None) -> list[FrameResult]:
        """Add frames (``(H, W, 3)`` uint8 RGB); returns the frames registered so far that were not returned yet."""
        ...

    def flush(self) -> list[FrameResult]:
        """End of stream: return every frame still pending."""
        ...

    def reset(self) -> None:
        """Forget everything; the next frame starts a new reconstruction."""
        ...


StreamEngineFactory = Callable[[], StreamEngine]


def safe_name(text: str) -> str:
    """A file-system-safe version of a stream / segment name."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"


class StreamState:
    """Everything the service keeps for one stream (one camera / drone)."""

    def __init__(self, stream_id: str, make_engine: StreamEngineFactory, buffer: PointBuffer, republish_cache: int,
                 closed_memory: int = 64) -> None:
        self.stream_id = stream_id
        self._make_engine = make_engine
        self._engine: StreamEngine | None = None
        self.buffer = buffer
        self.segment: str | None = None
        self.pending: OrderedDict[Key, list[Delivery]] = OrderedDict()
        self.seen: set[Key] = set()
        self.cache: OrderedDict[Key, list[Outgoing]] = OrderedDict()
        self._cache_size = republish_cache
        self.closed: OrderedDict[str, int] = OrderedDict()
        """Recently finished segments -> their last timestamp_ns (older frames of them are late redeliveries)."""
        self._closed_memory = closed_memory
        self.last_timestamp = -1
        self.timestamps: list[int] = []
        self.poses: list[np.ndarray] = []
        self.frame_ids: list[int] = []
        """Engine frame id of each of :attr:`poses` (loop corrections are per frame id)."""
        self.applied: dict[int, np.ndarray] = {}
        """Loop-closure correction (4x4 world similarity) already applied to each frame's points and pose."""
        self.map_version = 0
        """The engine's loop-closure map version the map holds (:meth:`apply_loop_corrections`)."""
        self.frames = 0
        self.unregistered = 0
        self.last_keyframe_id = -1
        self.vis_marker: Marker | None = None
        self.frames_since_map = 0
        """Registered frames not yet in a map update."""
        self.last_frame: tuple[int, int | None] = (-1, None)
        """(frame id, timestamp_ns) of the latest registered frame."""
        self.frames_since_mesh = 0
        self.voxels_since_mesh = 0
        self.last_active = 0.0
        """``time.monotonic()`` of the stream's latest frame (idle eviction)."""

    @property
    def engine(self) -> StreamEngine:
        """The stream's engine (created on first use)."""
        if self._engine is None:
            self._engine = self._make_engine()
        return self._engine

    @property
    def has_engine(self) -> bool:
        return self._engine is not None

    def remember(self, key: Key, outputs: list[Outgoing]) -> None:
        """Keep a registered frame's outputs for republishing (bounded, oldest dropped)."""
        self.cache[key] = outputs
        while len(self.cache) > self._cache_size:
            self.cache.popitem(last=False)

    def is_known(self, key: Key) -> bool:
        """The frame was pushed in this segment (pending, cached or seen)."""
        return key in self.pending or key in self.cache or key in self.seen

    def record(self, r: FrameResult, new_voxels: int) -> None:
        """Account a registered frame (trajectory, counters)."""
        self.timestamps.append(int(r.timestamp_ns) if r.timestamp_ns is not None else r.frame_id)
        self.poses.append(np.asarray(r.pose_c2w, np.float64))
        self.frame_ids.append(r.frame_id)
        self.frames += 1
        self.frames_since_map += 1
        self.last_frame = (r.frame_id, r.timestamp_ns)
        self.frames_since_mesh += 1
        self.voxels_since_mesh += new_voxels
        if r.is_keyframe:
            self.last_keyframe_id = r.frame_id

    def apply_loop_corrections(self) -> bool:
        """When the engine's loop closure has closed a loop since the last call (``map_update`` of
        :class:`~slam3r.recon.streaming.StreamingReconstructor`; engines without one never move the map): move
        each frame's points in the map (tagged by frame id) and its trajectory pose by the change of its
        correction since the last call, and re-bin the map. Returns whether it moved."""
        get = getattr(self._engine, "map_update", None)
        update = get(self.map_version) if get is not None else None
        if update is None:
            return False
        change = {}
        for fid, C in zip(update.frame_ids, update.corrections):
            before = self.applied.get(fid, np.eye(4))
            if not np.array_equal(C, before):  # frames emitted after the last optimisation keep the identity
                change[fid] = C @ np.linalg.inv(before)
                self.applied[fid] = C
        self.buffer.transform_tags(change)
        self.poses = [correct_pose(change[f], P) if f in change else P for f, P in zip(self.frame_ids, self.poses)]
        self.map_version = update.version
        return True

    def camera_centres(self) -> np.ndarray:
        """``(N, 3)`` camera positions of the registered frames."""
        if not self.poses:
            return np.zeros((0, 3))
        return np.stack(self.poses)[:, :3, 3]

    def reset_reconstruction(self) -> None:
        """Start the map of the current segment over (engine, points, trajectory); dedupe state is kept."""
        if self._engine is not None:
            self._engine.reset()
        self.buffer.clear()
        self.timestamps, self.poses, self.frame_ids = [], [], []
        self.applied, self.map_version = {}, 0
        self.frames = self.unregistered = 0
        self.last_keyframe_id = -1
        self.frames_since_mesh = self.voxels_since_mesh = self.frames_since_map = 0

    def close_segment(self) -> None:
        """Forget the finished segment (its name is remembered to recognise late frames)."""
        if self.segment is not None:
            self.closed[self.segment] = max(self.last_timestamp, self.closed.get(self.segment, -1))
            self.closed.move_to_end(self.segment)
            while len(self.closed) > self._closed_memory:
                self.closed.popitem(last=False)
        self.last_timestamp = -1
        self.reset_reconstruction()
        self.segment = None
        self.pending.clear()
        self.seen.clear()

    def save(self, out_dir: str | Path) -> tuple[Path, dict[str, str]]:
        """Write ``points.ply`` (the map) and ``trajectory.tum`` to a new directory
        ``out_dir/<stream>/<segment>[-partN]``; returns it and the written files."""
        from slam3r.data.ply import write_ply
        from slam3r.data.trajectory_io import write_tum_trajectory

        base = Path(out_dir) / safe_name(self.stream_id) / safe_name(self.segment or "segment")
        target, part = base, 1
        while target.exists():
            part += 1
            target = base.with_name(f"{base.name}-part{part}")
        target.mkdir(parents=True)
        xyz, rgb, conf = self.buffer.points(copy=False)
        files = {"points": str(write_ply(target / "points.ply", xyz, rgb, conf))}
        if self.poses:
            t = np.asarray(self.timestamps, np.float64) / 1e9
            files["trajectory"] = str(write_tum_trajectory(target / "trajectory.tum", t, np.stack(self.poses)))
        return target, files
