"""The real-time reconstruction worker: frames from RabbitMQ in; poses, points, meshes and segment events out.

Threads: :class:`~slam3r.service.broker.BrokerLink` owns the AMQP connection; :meth:`Service.run` (the calling
thread) decodes, runs the engine and encodes; meshing runs in a separate process
(:class:`~slam3r.service.mesher.Mesher`).

Delivery guarantees:

* a frame is acknowledged only after every output it produced (persistent, so a durable consumer queue keeps it
  across a broker restart) was confirmed by the broker; frames the engine holds back (its initial window, its
  registration batches) stay unacknowledged until their results come. The AMQP prefetch is therefore
  ``prefetch + frames held by the engines`` (capped by ``max_in_flight``), so the engine is never starved of
  frames;
* malformed messages (empty / undecodable body, missing or mistyped headers, images too small or over
  ``max_pixels``) and the frames of a segment too short to initialise are published to the dead-letter exchange
  with an ``x-reject-reason`` header, then acknowledged; nothing is dropped silently;
* a redelivered frame (same stream, ``video_segment`` and ``timestamp_ns``) is not registered again: its cached
  outputs are republished, or, while it is still inside the engine, the new delivery is acknowledged with the
  result;
* end of a segment (a frame with a new ``video_segment``, an ``end_of_segment`` marker, a restart message, the
  stream's eviction or shutdown): the engine is flushed, the outputs published, the segment saved (when enabled:
  points PLY, TUM trajectory, mesh PLY) and the reconstruction reset. A stream sent without ``video_segment`` is
  one implicit segment; in it, a new (not redelivered) frame older than the latest one starts a new segment (a
  replayed recording);
* a restart message finishes the named stream (or every stream) and forgets it, finished segments included, so a
  replay of the same recording (same segment names and timestamps) is processed again;
* bounded state: at most ``max_streams`` live streams (a new one finishes and forgets the least recently used),
  streams idle for ``stream_idle_s`` are finished and forgotten, and when the frames held by the engines would
  use up ``max_in_flight`` the least recently used holding stream is finished, so no stream starves the others;
* SIGTERM / SIGINT: stop consuming, process the frames already received (up to ``shutdown_timeout_s``), finish
  every stream as above, publish / acknowledge, close. Frames not acknowledged by then are redelivered by RabbitMQ.

Several streams (``stream_id`` header) are reconstructed independently; with ``num_workers > 1`` RabbitMQ hands
each shard of streams to one worker at a time (see :mod:`slam3r.service.broker`).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from slam3r.recon.batching import drive_many
from slam3r.recon.point_buffer import PointBuffer
from slam3r.recon.types import FrameResult
from slam3r.service.broker import BrokerLink, Delivery, Outgoing, Settle, queue_names
from slam3r.service.config import ServiceConfig
from slam3r.service.encodings import MapContext, Payload, make_encoding
from slam3r.service.inbound import FrameHeader, RejectedMessage, decode_image, read_header, restart_target
from slam3r.service.mesher import MeshParams, Mesher, MeshResult
from slam3r.service.stream import Key, StreamEngineFactory, StreamState

log = logging.getLogger(__name__)

_Item = Outgoing | Settle
Groups = dict[str, list[tuple[Key, np.ndarray]]]
"""Frames of one batch waiting to be pushed, per stream."""


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
    evicted: int = 0
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
        link: an existing link (tests: :class:`slam3r.service.testing.NullLink`); default: a
            :class:`BrokerLink` built from ``cfg``.
    """

    def __init__(self, cfg: ServiceConfig, make_engine: StreamEngineFactory, net_size: int, conf_thres_l2w: float,
                 link: BrokerLink | None = None) -> None:
        self.cfg = cfg
        self.make_engine = make_engine
        self.net_size = net_size
        self.conf_thres_l2w = conf_thres_l2w
        self.link = link or BrokerLink(cfg)
        self.encoding = make_encoding(cfg.encoding, cfg.points_per_message)
        self.mesher = Mesher(MeshParams(depth=cfg.mesh_depth), cfg.mesh_max_points) if cfg.enable_mesh else None
        self.streams: OrderedDict[str, StreamState] = OrderedDict()
        """Live streams, least recently active first."""
        self.stats = ServiceStats()
        self._stop = threading.Event()
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
                self.housekeeping()
            return self._shutdown()
        finally:
            for sig, handler in restore.items():
                signal.signal(sig, handler)

    def housekeeping(self, now: float | None = None) -> None:
        """Between batches: collect meshes, finish idle streams and relieve frame pressure, adjust the prefetch."""
        self._poll_mesher()
        out: list[_Item] = []
        self._evict_idle(time.monotonic() if now is None else now, out)
        self._relieve_pressure(out)
        self.link.send(out)
        self.link.set_prefetch(self.cfg.prefetch + self.held())

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

    def held(self) -> int:
        """Frames the engines hold (unacknowledged until their results come)."""
        return sum(len(st.pending) for st in self.streams.values())

    # ------------------------------------------------------------------ bounded state

    def _stream(self, stream_id: str, groups: Groups, out: list[_Item]) -> StreamState:
        """The state of ``stream_id`` (created, evicting the least recently used stream beyond ``max_streams``)."""
        st = self.streams.get(stream_id)
        if st is None:
            while len(self.streams) >= self.cfg.max_streams:
                self._evict(next(iter(self.streams.values())), f"evicted: more than max_streams="
                                                               f"{self.cfg.max_streams} live streams", groups, out)
            buffer = PointBuffer(self.cfg.voxel_size, self.cfg.max_pointcloud_size)
            st = self.streams[stream_id] = StreamState(stream_id, self.make_engine, buffer, self.cfg.republish_cache)
        self.streams.move_to_end(stream_id)
        st.last_active = time.monotonic()
        return st

    def _evict(self, st: StreamState, why: str, groups: Groups, out: list[_Item]) -> None:
        """Finish ``st``'s segment (published, saved) and forget the stream."""
        self._push(st, groups, out)
        if st.segment is not None:
            self._finish(st, why, out)
        del self.streams[st.stream_id]
        self.stats.evicted += 1
        log.info("stream %s forgotten (%s)", st.stream_id, why)

    def _evict_idle(self, now: float, out: list[_Item]) -> None:
        if not self.link.inbox.empty():
            return                                     # frames are waiting: nobody is idle before they are seen
        for st in list(self.streams.values()):
            if now - st.last_active < self.cfg.stream_idle_s:
                break                                  # ordered by activity: the rest is more recent
            self._evict(st, f"idle for more than stream_idle_s={self.cfg.stream_idle_s:g} s", {}, out)

    def _relieve_pressure(self, out: list[_Item]) -> None:
        """Finish the least recently active holding streams while the held frames leave no room for new ones."""
        budget = self.cfg.max_in_flight - self.cfg.prefetch
        while self.held() > budget:
            st = next(s for s in self.streams.values() if s.pending)
            self._evict(st, f"its held frames with the others' exceed max_in_flight - prefetch = {budget}", {}, out)

    # ------------------------------------------------------------------ frame handling

    def handle(self, batch: list[Delivery]) -> None:
        """Process a batch of deliveries (frames and restarts, in order) and queue the resulting publishes and
        acknowledgements on the link. Called by :meth:`run`; benchmarks and tests call it directly."""
        t0 = time.perf_counter()
        out: list[_Item] = []
        groups: Groups = {}
        for d in batch:
            try:
                if d.source == "restart":
                    self._restart(d, groups, out)
                else:
                    self._accept(d, groups, out)
            except Exception as exc:  # a bug must not stop the service: dead-letter the message, keep going
                log.exception("internal error on a message from %s", d.source)
                self._reject(d, f"internal error: {type(exc).__name__}: {exc}", out)
        states = [self.streams[stream_id] for stream_id in groups]
        self._push_streams(states, groups, out)
        for st in states:
            st.last_active = time.monotonic()                           # idle counts from the end of its work
        self.link.send(out)
        self.stats.busy_s += time.perf_counter() - t0

    def _accept(self, d: Delivery, groups: Groups, out: list[_Item]) -> None:
        """Validate a frame message and queue it for the engine (or answer it from the dedupe state)."""
        self.stats.received += 1
        try:
            h = read_header(d.headers, self.cfg.stream_header, self.cfg.default_stream)
        except RejectedMessage as exc:
            self._reject(d, exc.reason, out)
            return
        st = self._stream(h.stream_id, groups, out)
        if h.end_of_segment:
            if st.segment == h.segment:
                self._push(st, groups, out)
                self._finish(st, "end_of_segment", out)
            out.append(Settle(d.generation, d.tag))
            return
        key = (h.segment, h.timestamp_ns)
        if h.implicit and st.segment == h.segment and not d.redelivered and h.timestamp_ns < st.last_timestamp:
            self._push(st, groups, out)                # timestamps went back: a new recording on this stream
            self._finish(st, "timestamps went back: a new recording", out, h.segment, h.timestamp_ns)
            st.closed.pop(h.segment, None)
            st.cache.clear()                           # same segment name, other frames
        elif self._duplicate(st, key, d, out):
            return
        if h.segment != st.segment and not self._open_segment(st, h, d, groups, out):
            return
        try:
            rgb = decode_image(d.body, self.net_size, self.cfg.decode_min_side, self.cfg.max_pixels)
        except RejectedMessage as exc:
            self._reject(d, exc.reason, out)
            return
        st.seen.add(key)
        st.last_timestamp = max(st.last_timestamp, h.timestamp_ns)
        st.pending[key] = [d]
        groups.setdefault(st.stream_id, []).append((key, rgb))

    def _open_segment(self, st: StreamState, h: FrameHeader, d: Delivery, groups: Groups,
                      out: list[_Item]) -> bool:
        """A frame of another segment: finish the current one and start ``h.segment``; False (frame rejected) for
        a late frame of a segment that already finished."""
        last = st.closed.get(h.segment)
        if last is not None and h.timestamp_ns <= last:
            self._reject(d, f"late frame: segment {h.segment!r} of stream {h.stream_id!r} already finished at "
                            f"timestamp_ns {last} (a restart message forgets finished segments)", out)
            return False
        self._push(st, groups, out)
        if st.segment is not None:
            self._finish(st, "new segment", out, h.segment, h.timestamp_ns)
        st.segment = h.segment
        start = self.encoding.segment_start(st.stream_id, h.segment, h.timestamp_ns)
        if start is not None:
            out.append(Outgoing(self._ex_vis, start))
        return True

    def _duplicate(self, st: StreamState, key: Key, d: Delivery, out: list[_Item]) -> bool:
        """Handle a frame already registered or in the engine; False for a new frame (a frame of a finished
        segment counts as a duplicate only when RabbitMQ redelivers it; otherwise it is a late frame)."""
        if key[0] != st.segment and not d.redelivered:
            return False
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

    def _push(self, st: StreamState, groups: Groups, out: list[_Item]) -> None:
        """Run the engine on the frames of ``st`` collected so far in this batch."""
        self._push_streams([st], groups, out)

    def _push_streams(self, states: list[StreamState], groups: Groups, out: list[_Item]) -> None:
        """Run the engines of ``states`` on their frames collected so far in this batch, then publish; with
        ``batch_streams`` the network calls of the streams run together (one forward for all, see
        :mod:`slam3r.recon.batching`)."""
        work = [(st, groups.pop(st.stream_id)) for st in states if groups.get(st.stream_id)]
        if not work:
            return
        t0 = time.perf_counter()
        outcomes = self._run_engines(work)
        self.stats.engine_s += time.perf_counter() - t0
        for (st, _), (results, exc) in zip(work, outcomes):
            if exc is not None:  # an engine failure must not kill the service: dead-letter and start over
                self._engine_failed(st, exc, out)
                continue
            try:
                self._emit(st, results, out)
            except Exception as exc:  # same recovery as an engine failure
                self._engine_failed(st, exc, out)

    def _run_engines(self, work: list[tuple[StreamState, list[tuple[Key, np.ndarray]]]]
                     ) -> list[tuple[list[FrameResult] | None, Exception | None]]:
        """``(results, None)`` or ``(None, error)`` per stream of ``work`` (its frames pushed to its engine); the
        engines that offer ``push_steps`` run together when ``batch_streams`` is on."""
        outcomes: list = [None] * len(work)
        together = []
        for i, (st, items) in enumerate(work):
            rgbs, timestamps = [rgb for _, rgb in items], [key[1] for key, _ in items]
            try:
                engine = st.engine
                if self.cfg.batch_streams and hasattr(engine, "push_steps"):
                    together.append((i, engine.push_steps(rgbs, timestamps)))
                    continue
                outcomes[i] = (engine.push_many(rgbs, timestamps), None)
            except Exception as exc:  # noqa: BLE001 - reported per stream
                outcomes[i] = (None, exc)
        for (i, _), outcome in zip(together, drive_many([steps for _, steps in together])):
            outcomes[i] = outcome
        return outcomes

    def _emit(self, st: StreamState, results: list[FrameResult], out: list[_Item], final: bool = False) -> None:
        """Publish the outputs of registered frames, update the map (every ``map_update_frames`` registered frames
        of the stream, and at the ``final`` emit of a segment), then settle the frames' deliveries."""
        if not results and not final:
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
            if not r.registered:  # no world point to place it by: no pose is published rather than a fake one
                log.warning("frame %s of stream %s could not be registered (no confident point)", key, st.stream_id)
                st.unregistered += 1
                self.stats.unregistered += 1
                settles += [Settle(x.generation, x.tag) for x in deliveries]
                continue
            xyz, rgb, conf = r.points(self.conf_thres_l2w)
            created = st.buffer.insert(xyz, rgb, conf, tag=r.frame_id)
            outputs = [Outgoing(self._ex_pose, self.encoding.pose(r, st.stream_id, key[0])),
                       Outgoing(self._ex_points, self.encoding.points(r, xyz, rgb, conf, st.stream_id, key[0]))]
            st.remember(key, outputs)
            st.record(r, created)
            self.stats.registered += 1
            out.extend(outputs)
            settles += [Settle(x.generation, x.tag) for x in deliveries]
        moved = st.apply_loop_corrections()  # a loop closed: the whole map moves (these results too), at once
        if moved:  # and its mesh is redone now
            st.frames_since_mesh = max(st.frames_since_mesh, self.cfg.mesh_update_frequency)
            st.voxels_since_mesh = max(st.voxels_since_mesh, self.cfg.mesh_min_new_voxels)
        if moved or st.frames_since_map >= self.cfg.map_update_frames or (final and st.frames_since_map):
            ctx = MapContext(st.buffer, st.vis_marker, *st.last_frame, st.last_keyframe_id, st.stream_id,
                             st.segment or "")
            payloads, st.vis_marker = self.encoding.map_update(ctx)
            out.extend(Outgoing(self._ex_vis, p) for p in payloads)
            st.frames_since_map = 0
        self._maybe_mesh(st)
        out.extend(settles)

    def _engine_failed(self, st: StreamState, exc: Exception, out: list[_Item]) -> None:
        log.exception("engine failed on stream %s; its pending frames are dead-lettered and the map restarts",
                      st.stream_id, exc_info=exc)
        self._dead_letter_pending(st, f"engine error: {type(exc).__name__}: {exc}", out)
        st.reset_reconstruction()
        st.vis_marker = None

    def _dead_letter_pending(self, st: StreamState, reason: str, out: list[_Item]) -> None:
        for deliveries in st.pending.values():
            for d in deliveries:
                self._reject(d, reason, out)
        st.pending.clear()

    def _flush(self, st: StreamState, out: list[_Item]) -> None:
        """Register what the engine still holds; a segment too short to initialise is dead-lettered, with why."""
        if not (st.has_engine and (st.pending or st.frames)):
            return
        t0 = time.perf_counter()
        try:
            results = st.engine.flush()
        except Exception as exc:  # same policy as a failing push, unless the segment was simply too short
            if st.frames:
                self._engine_failed(st, exc, out)
            else:
                log.warning("segment %r of stream %s: %d frame(s), too few to initialise (%s); dead-lettered",
                            st.segment, st.stream_id, len(st.pending), exc)
                self._dead_letter_pending(st, f"segment too short to initialise: {len(st.pending)} frame(s) "
                                              f"received ({exc})", out)
            results = []
        finally:
            self.stats.engine_s += time.perf_counter() - t0
        self._emit(st, results, out, final=True)
        if st.pending:
            self._dead_letter_pending(st, f"segment ended with {len(st.pending)} frame(s) the engine did not "
                                          "register (too few to initialise)", out)

    def _finish(self, st: StreamState, why: str, out: list[_Item], next_segment: str | None = None,
                next_timestamp: int | None = None) -> None:
        """End the current segment of ``st``: flush, publish, save, reset."""
        self._flush(st, out)
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
        ts = next_timestamp if next_timestamp is not None else (st.last_timestamp if st.last_timestamp >= 0 else None)
        out.append(Outgoing(self._ex_vis, self.encoding.segment_end(st.stream_id, st.segment or "", next_segment,
                                                                    ts, st.frames, len(st.buffer), files, why)))
        self.stats.segments += 1
        st.close_segment()
        st.vis_marker = None

    def _restart(self, d: Delivery, groups: Groups, out: list[_Item]) -> None:
        """A restart message: finish and forget the named stream, or every stream (finished segments too)."""
        try:
            target = restart_target(d.body, d.headers, self.cfg.stream_header)
        except RejectedMessage as exc:
            self._reject(d, exc.reason, out)
            return
        for st in list(self.streams.values()):
            if target is None or target == st.stream_id:
                self._evict(st, "restart", groups, out)
        out.append(Settle(d.generation, d.tag))

    def _reject(self, d: Delivery, reason: str, out: list[_Item]) -> None:
        """Dead-letter ``d`` with ``x-reject-reason`` and acknowledge it."""
        log.warning("rejected message from %s: %s", d.source, reason)
        self.stats.rejected += 1
        headers = dict(d.headers)
        headers["x-reject-reason"] = reason
        headers["x-original-queue"] = d.queue or queue_names(self.cfg)[0 if d.source == "frames" else 1]
        payload = Payload(d.body, d.content_type or "application/octet-stream")
        out.append(Outgoing(self._ex_dead, payload, headers))
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
            ts = st.last_timestamp if st.last_timestamp >= 0 else None
            self.link.send([Outgoing(self._ex_vis, self.encoding.mesh(res.vertices, res.faces, res.colors,
                                                                      res.keyframe_id, ts, stream_id, segment))])
