"""The real-time reconstruction worker: frames from RabbitMQ in; poses, points, meshes and segment events out.

Threads: :class:`~slam3r.service.broker.BrokerLink` owns the AMQP connection; :meth:`Service.run` (the calling
thread) decodes, runs the engine and encodes; meshing runs in a separate process
(:class:`~slam3r.service.mesher.Mesher`).

Delivery guarantees:

* a frame is acknowledged only after every output it produced was confirmed by the broker; frames the engine holds
  back (its initial window, its registration batches) stay unacknowledged until their results come. The AMQP
  prefetch is therefore ``prefetch + frames held by the engines`` (capped by ``max_in_flight``), so the engine is
  never starved of frames;
* malformed messages (empty / undecodable body, missing or mistyped headers, images too small) are published to the
  dead-letter exchange with an ``x-reject-reason`` header, then acknowledged; nothing is dropped silently;
* a redelivered frame (same stream, ``video_segment`` and ``timestamp_ns``) is not registered again: its cached
  outputs are republished, or, while it is still inside the engine, the new delivery is acknowledged with the
  result;
* end of a segment (a frame with a new ``video_segment``, an ``end_of_segment`` marker, a restart message or
  shutdown): the engine is flushed, the outputs published, the segment saved (when enabled: points PLY, TUM
  trajectory, mesh PLY) and the reconstruction reset;
* SIGTERM / SIGINT: stop consuming, process the frames already received (up to ``shutdown_timeout_s``), finish
  every stream as above, publish / acknowledge, close. Frames not acknowledged by then are redelivered by RabbitMQ.

Several streams (``stream_id`` header) are reconstructed independently; with ``num_workers > 1`` each worker keeps
the streams with ``crc32(stream_id) % num_workers == worker_index`` and acknowledges the others unprocessed (they
are handled by their own worker, which receives its own copy through the fanout exchange).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np

from slam3r.recon.point_buffer import PointBuffer
from slam3r.recon.types import FrameResult
from slam3r.service.broker import BrokerLink, Delivery, Outgoing, Settle, queue_names
from slam3r.service.config import ServiceConfig
from slam3r.service.messages import Codec, Payload, RejectedMessage, confident_points, decode_image, read_header
from slam3r.service.mesher import MeshParams, Mesher, MeshResult
from slam3r.service.stream import EngineFactory, Key, StreamState

log = logging.getLogger(__name__)

_Item = Outgoing | Settle


@dataclass
class ServiceStats:
    """Counters of one worker (seconds are wall time in the worker thread)."""

    received: int = 0
    registered: int = 0
    rejected: int = 0
    duplicates: int = 0
    unregistered: int = 0
    segments: int = 0
    meshes: int = 0
    busy_s: float = 0.0
    engine_s: float = 0.0

    @property
    def overhead_per_frame_ms(self) -> float:
        """Worker time per received frame, engine excluded (decode, bookkeeping, map, encoding)."""
        return 1e3 * (self.busy_s - self.engine_s) / max(1, self.received)


class Service:
    """One worker (see module docstring).

    Args:
        cfg: service settings.
        make_engine: builds a fresh engine for a new stream.
        net_size: network input size (images must be croppable to it).
        conf_thres_l2w: points above this L2W confidence are published and mapped.
        link: an existing :class:`BrokerLink` (tests); default: one built from ``cfg``.
    """

    def __init__(self, cfg: ServiceConfig, make_engine: EngineFactory, net_size: int, conf_thres_l2w: float,
                 link: BrokerLink | None = None) -> None:
        self.cfg = cfg
        self.make_engine = make_engine
        self.net_size = net_size
        self.conf_thres_l2w = conf_thres_l2w
        self.link = link or BrokerLink(cfg)
        self.codec = Codec(cfg.encoding, cfg.points_per_message)
        self.mesher = Mesher(MeshParams(depth=cfg.mesh_depth), cfg.mesh_max_points) if cfg.enable_mesh else None
        self.streams: dict[str, StreamState] = {}
        self.stats = ServiceStats()
        self._stop = threading.Event()
        self._warned_in_flight = False
        self._ex_pose = cfg.name(cfg.pose_exchange)
        self._ex_points = cfg.name(cfg.pointcloud_exchange)
        self._ex_vis = cfg.name(cfg.vis_exchange)
        self._ex_dead = cfg.name(cfg.dead_letter_exchange)

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully (thread-safe; also bound to SIGTERM / SIGINT)."""
        self._stop.set()

    def run(self) -> int:
        """Serve until :meth:`stop` / SIGTERM; returns the process exit code (0 after a graceful shutdown)."""
        restore = self._install_signals()
        try:
            self.link.start()
            if self.mesher is not None:
                self.mesher.start()
            log.info("serving %s (worker %d/%d, %s encoding)", queue_names(self.cfg)[0], self.cfg.worker_index,
                     self.cfg.num_workers, self.cfg.encoding)
            while not self._stop.is_set():
                if self.link.fatal is not None:
                    if self.mesher is not None:
                        self.mesher.close(timeout=1.0)
                    return 2
                batch = self._take(0.05)
                if batch:
                    self.handle(batch)
                self._poll_mesher()
                self._update_prefetch()
            return self._shutdown()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def _install_signals(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: self.stop())
        return previous

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        log.info("shutting down: finishing received frames (up to %.0f s)", self.cfg.shutdown_timeout_s)
        self.link.stop_consuming()
        while time.monotonic() < deadline:
            batch = self._take(0.2)
            if not batch:
                break
            self.handle(batch)
        out: list[_Item] = []
        for st in self.streams.values():
            if st.segment is not None:
                self._finish(st, "shutdown", out)
        self.link.send(out)
        self.link.close(max(1.0, deadline - time.monotonic()))
        if self.mesher is not None:
            self._poll_mesher()
            for res in self.mesher.close(max(1.0, deadline - time.monotonic())):
                self._mesh_done(res)
        log.info("stopped: %s", self.stats)
        return 0

    def _take(self, timeout: float) -> list[Delivery]:
        """Up to ``batch_size`` deliveries (waits up to ``timeout`` for the first)."""
        try:
            batch = [self.link.inbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < self.cfg.batch_size:
            try:
                batch.append(self.link.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _update_prefetch(self) -> None:
        held = sum(len(st.pending) for st in self.streams.values())
        if self.cfg.prefetch + held > self.cfg.max_in_flight and not self._warned_in_flight:
            log.warning("the engines hold %d frames: max_in_flight (%d) limits the prefetch; raise it if streams "
                        "stall", held, self.cfg.max_in_flight)
            self._warned_in_flight = True
        self.link.set_prefetch(self.cfg.prefetch + held)

    # ------------------------------------------------------------------ frame handling

    def _owns(self, stream_id: str) -> bool:
        return zlib.crc32(stream_id.encode()) % self.cfg.num_workers == self.cfg.worker_index

    def _stream(self, stream_id: str) -> StreamState:
        st = self.streams.get(stream_id)
        if st is None:
            buffer = PointBuffer(self.cfg.voxel_size, self.cfg.max_pointcloud_size)
            st = self.streams[stream_id] = StreamState(stream_id, self.make_engine, buffer, self.cfg.republish_cache)
        return st

    def handle(self, batch: list[Delivery]) -> None:
        """Process a batch of deliveries (frames and restarts, in order) and queue the resulting publishes and
        acknowledgements on the link. Called by :meth:`run`; benchmarks call it directly."""
        t0 = time.perf_counter()
        out: list[_Item] = []
        groups: dict[str, list[tuple[Key, np.ndarray]]] = {}
        for d in batch:
            try:
                if d.source == "restart":
                    self._restart(d, groups, out)
                else:
                    self._accept(d, groups, out)
            except Exception as exc:  # a bug must not stop the service: dead-letter the message, keep going
                log.exception("internal error on a message from %s", d.source)
                self._reject(d, f"internal error: {type(exc).__name__}: {exc}", out)
        for stream_id in list(groups):
            self._push(self.streams[stream_id], groups, out)
        self.link.send(out)
        self.stats.busy_s += time.perf_counter() - t0

    def _accept(self, d: Delivery, groups: dict[str, list[tuple[Key, np.ndarray]]], out: list[_Item]) -> None:
        """Validate a frame message and queue it for the engine (or answer it from the dedupe state)."""
        self.stats.received += 1
        try:
            h = read_header(d.headers, self.cfg.stream_header, self.cfg.default_stream)
        except RejectedMessage as exc:
            self._reject(d, exc.reason, out)
            return
        if not self._owns(h.stream_id):
            out.append(Settle(d.generation, d.tag))
            return
        st = self._stream(h.stream_id)
        if h.end_of_segment:
            if st.segment == h.segment:
                self._push(st, groups, out)
                self._finish(st, "end_of_segment", out)
            out.append(Settle(d.generation, d.tag))
            return
        key = (h.segment, h.timestamp_ns)
        if self._duplicate(st, key, d, out):
            return
        if h.segment != st.segment:
            last = st.closed.get(h.segment)
            if last is not None and h.timestamp_ns <= last:
                self._reject(d, f"late frame: segment {h.segment!r} of stream {h.stream_id!r} already finished "
                                f"at timestamp_ns {last}", out)
                return
            self._push(st, groups, out)
            if st.segment is not None:
                self._finish(st, "new segment", out)
            st.segment = h.segment
            out.append(Outgoing(self._ex_vis, self.codec.segment("start", st.stream_id, h.segment, 0, 0)))
        try:
            rgb = decode_image(d.body, self.net_size, self.cfg.decode_min_side)
        except RejectedMessage as exc:
            self._reject(d, exc.reason, out)
            return
        st.seen.add(key)
        st.last_timestamp = max(st.last_timestamp, h.timestamp_ns)
        st.pending[key] = [d]
        groups.setdefault(st.stream_id, []).append((key, rgb))

    def _duplicate(self, st: StreamState, key: Key, d: Delivery, out: list[_Item]) -> bool:
        """Handle a frame already registered or in the engine; False for a new frame."""
        if key in st.cache:
            out.extend(st.cache[key])
            out.append(Settle(d.generation, d.tag))
        elif key in st.pending:
            st.pending[key].append(d)          # acknowledged together with the result
        elif key in st.seen:
            log.info("redelivered frame %s of stream %s: registered earlier, outputs no longer cached",
                     key, st.stream_id)
            out.append(Settle(d.generation, d.tag))
        else:
            return False
        self.stats.duplicates += 1
        return True

    def _push(self, st: StreamState, groups: dict[str, list[tuple[Key, np.ndarray]]], out: list[_Item]) -> None:
        """Run the engine on the frames of ``st`` collected so far in this batch."""
        items = groups.pop(st.stream_id, None)
        if not items:
            return
        t0 = time.perf_counter()
        try:
            results = st.engine.push_many([rgb for _, rgb in items], [key[1] for key, _ in items])
        except Exception as exc:  # an engine failure must not kill the service: dead-letter and start over
            self._engine_failed(st, exc, out)
            return
        finally:
            self.stats.engine_s += time.perf_counter() - t0
        try:
            self._emit(st, results, out)
        except Exception as exc:  # same recovery as an engine failure
            self._engine_failed(st, exc, out)

    def _emit(self, st: StreamState, results: list[FrameResult], out: list[_Item]) -> None:
        """Publish the outputs of registered frames, update the map, then settle the frames' deliveries."""
        if not results:
            return
        settles: list[_Item] = []
        for r in results:
            key = (st.segment, int(r.timestamp_ns))
            if key not in st.pending:
                log.error("engine returned frame %s of stream %s that is not pending; ignored", key, st.stream_id)
                continue
            while next(iter(st.pending)) != key:     # frames pushed earlier that the engine skipped
                skipped, deliveries = st.pending.popitem(last=False)
                log.warning("engine produced no result for frame %s of stream %s", skipped, st.stream_id)
                st.unregistered += 1
                self.stats.unregistered += 1
                settles += [Settle(x.generation, x.tag) for x in deliveries]
            deliveries = st.pending.pop(key)
            xyz, rgb, conf = confident_points(r, self.conf_thres_l2w)
            created = st.buffer.insert(xyz, rgb, conf)
            outputs = [Outgoing(self._ex_pose, self.codec.pose(r, st.stream_id, key[0])),
                       Outgoing(self._ex_points, self.codec.points(r, xyz, rgb, conf, st.stream_id, key[0]))]
            st.remember(key, outputs)
            st.record(r, created)
            self.stats.registered += 1
            out.extend(outputs)
            settles += [Settle(x.generation, x.tag) for x in deliveries]
        delta = st.buffer.changes_since(st.vis_marker)
        st.vis_marker = delta.marker
        if delta.reset or len(delta.index):
            for p in self.codec.map_update(delta, results[-1].frame_id, st.stream_id, st.segment or ""):
                out.append(Outgoing(self._ex_vis, p))
        self._maybe_mesh(st)
        out.extend(settles)

    def _engine_failed(self, st: StreamState, exc: Exception, out: list[_Item]) -> None:
        log.exception("engine failed on stream %s; its pending frames are dead-lettered and the map restarts",
                      st.stream_id, exc_info=exc)
        reason = f"engine error: {type(exc).__name__}: {exc}"
        for deliveries in st.pending.values():
            for d in deliveries:
                self._reject(d, reason, out)
        st.pending.clear()
        st.reset_reconstruction()
        st.vis_marker = None

    def _finish(self, st: StreamState, why: str, out: list[_Item]) -> None:
        """End the current segment of ``st``: flush, publish, save, reset."""
        if st.has_engine and (st.pending or st.frames):
            t0 = time.perf_counter()
            try:
                results = st.engine.flush()
            except Exception as exc:  # same policy as a failing push
                self._engine_failed(st, exc, out)
                results = []
            self.stats.engine_s += time.perf_counter() - t0
            self._emit(st, results, out)
        if st.pending:
            log.warning("segment %r of stream %s ended with %d frame(s) the engine could not register "
                        "(too few frames to initialise?)", st.segment, st.stream_id, len(st.pending))
            for deliveries in st.pending.values():
                out.extend(Settle(x.generation, x.tag) for x in deliveries)
            st.unregistered += len(st.pending)
            self.stats.unregistered += len(st.pending)
            st.pending.clear()
        files: dict[str, str] = {}
        if self.cfg.save_segments and st.frames:
            target, files = st.save(self.cfg.segment_output_dir)
            if self.mesher is not None:
                files["mesh"] = str(target / "mesh.ply")
                xyz, rgb, _ = st.buffer.points(copy=False)
                self.mesher.submit(self.mesher.snapshot((st.stream_id, st.segment), xyz, rgb, st.camera_centres(),
                                                        st.last_keyframe_id, save_path=files["mesh"]))
        log.info("segment %r of stream %s finished (%s): %d frames registered, %d not, %d points%s", st.segment,
                 st.stream_id, why, st.frames, st.unregistered, len(st.buffer),
                 f", saved to {files['points']}" if files else "")
        out.append(Outgoing(self._ex_vis, self.codec.segment("end", st.stream_id, st.segment or "", st.frames,
                                                             len(st.buffer), files)))
        self.stats.segments += 1
        st.close_segment()
        st.vis_marker = None

    def _restart(self, d: Delivery, groups: dict[str, list[tuple[Key, np.ndarray]]], out: list[_Item]) -> None:
        """A restart message: finish the named stream (header ``stream_id``) or every stream."""
        target = d.headers.get(self.cfg.stream_header)
        for st in list(self.streams.values()):
            if target is None or str(target) == st.stream_id:
                self._push(st, groups, out)
                if st.segment is not None:
                    self._finish(st, "restart", out)
        out.append(Settle(d.generation, d.tag))

    def _reject(self, d: Delivery, reason: str, out: list[_Item]) -> None:
        """Dead-letter ``d`` with ``x-reject-reason`` and acknowledge it."""
        log.warning("rejected message from %s: %s", d.source, reason)
        self.stats.rejected += 1
        headers = dict(d.headers)
        headers["x-reject-reason"] = reason
        headers["x-original-queue"] = queue_names(self.cfg)[0 if d.source == "frames" else 1]
        payload = Payload(d.body, d.content_type or "application/octet-stream")
        out.append(Outgoing(self._ex_dead, payload, headers, persistent=True))
        out.append(Settle(d.generation, d.tag))

    # ------------------------------------------------------------------ meshing

    def _maybe_mesh(self, st: StreamState) -> None:
        if self.mesher is None or st.frames_since_mesh < self.cfg.mesh_update_frequency \
                or st.voxels_since_mesh < self.cfg.mesh_min_new_voxels:
            return
        xyz, rgb, _ = st.buffer.points(copy=False)
        self.mesher.submit(self.mesher.snapshot((st.stream_id, st.segment), xyz, rgb, st.camera_centres(),
                                                st.last_keyframe_id))
        st.frames_since_mesh = st.voxels_since_mesh = 0

    def _poll_mesher(self) -> None:
        if self.mesher is not None:
            for res in self.mesher.poll():
                self._mesh_done(res)

    def _mesh_done(self, res: MeshResult) -> None:
        stream_id, segment = res.key
        if res.error:
            log.error("meshing failed for stream %s segment %r: %s", stream_id, segment, res.error)
            return
        self.stats.meshes += 1
        if res.save_path:
            log.info("segment mesh written: %s (%d faces, %.1f s)", res.save_path, len(res.faces), res.seconds)
            return
        st = self.streams.get(stream_id)
        if self.cfg.use_mesh_vis and st is not None and st.segment == segment:
            self.link.send([Outgoing(self._ex_vis, self.codec.mesh(res.vertices, res.faces, res.colors,
                                                                   res.keyframe_id, stream_id, segment))])
