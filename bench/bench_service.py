"""Per-frame overhead of the RabbitMQ service, network inference excluded.

The engine is replaced by one that returns precomputed 224 x 224 FrameResults (a camera turning in a box room,
realistic confidences) immediately, so what is timed is the service's own work: header validation, JPEG decoding,
dedupe bookkeeping, map (point buffer) update, pose / point-cloud / map-update encoding.

* ``in-process``: :meth:`Service.handle` on prepared deliveries (no broker, no network), per encoding and frame
  size; also the JPEG decode alone. gzip (JSON encoding) is not part of it: the AMQP thread compresses when it
  publishes (zlib releases the GIL); its cost per frame is reported on its own row.
* ``broker``: the whole service on the local RabbitMQ (127.0.0.1:5672): frames published as fast as possible,
  time until the last pose arrives -> frames/s (includes publisher confirms and the consumer in this process).

``ms/frame`` is wall time; ``cpu ms`` the worker thread's CPU time (comparable on a shared machine). Prints a
table and one JSON line. Usage: ``python bench/bench_service.py [--frames 300] [--no-broker]``.

``--streams 1,2,4``: instead, throughput where several streams meet one worker: the real engine (bundled model,
CPU, ``--threads``), each stream a different rendered scene sent as JPEGs, the deliveries interleaved across the
streams and handled ``batch_size`` at a time (as the worker takes them off the queue), every count run in turn in
one process (``--rounds`` times, interleaved), with the streams' network calls batched together (``batch_streams``,
the default) and, with ``--compare``, without. Reports total frames/s (wall) and frames per CPU-second of the
process (comparable on a shared machine), and each figure's ratio to the 1-stream one.

``--streams 1,2,4 --broker --workers 1,2``: the same throughput through real worker processes, the deployment
way for one machine to use its cores: per worker count, ``slam3r serve --workers N`` (bundled model, CPU,
``--threads`` torch threads each) on unique names of the local RabbitMQ (deleted at the end), all deployments started
together and kept for the whole run; per run, every frame of ``K`` streams published (round robin, then each
stream's end marker), timed until every segment end and pose arrived; interleaved rounds. The stream ids are picked
so that stream ``k`` is owned by worker ``k % N`` (see :func:`spread_stream_ids`). Reports total frames/s, the
ratio to the same deployment's 1-stream figure (``x``) and to the first deployment's (``x first``), and frames per
CPU-second of the worker processes.

``--many-streams N``: instead, the bounded-state check with the real engine (bundled model, CPU): ``N`` streams
that each send a few frames (fewer than the engine needs to initialise) and stop, interleaved with one normal
stream; reports the worker's peak RSS, the live streams, the frames held by the engines against
``max_in_flight``, and how many of the normal stream's frames got their pose.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

import cv2
import numpy as np

from slam3r.recon.types import FrameResult
from slam3r.service.broker import Delivery, delete_topology, shard_of
from slam3r.service.config import ServiceConfig
from slam3r.service.inbound import decode_image
from slam3r.service.testing import NullLink, PrecomputedEngine, room_results
from slam3r.service.worker import Service

S = 224


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)      # JPEG-friendly texture
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def in_process(results: list[FrameResult], body: bytes, encoding: str, frames: int, batch: int) -> dict:
    cfg = ServiceConfig(encoding=encoding, batch_size=batch)
    link = NullLink()
    svc = Service(cfg, lambda: PrecomputedEngine(results), net_size=S, conf_thres_l2w=12.0, link=link)
    deliveries = [Delivery("frames", 1, i + 1, body, {"timestamp_ns": 1000 + i, "video_segment": "bench"})
                  for i in range(frames)]
    c0 = time.thread_time()
    for i in range(0, frames, batch):
        svc.handle(deliveries[i:i + batch])
    cpu_ms = 1e3 * (time.thread_time() - c0) / frames
    st = svc.stats
    payloads = [o.payload for o in link.published]
    gz = [p for p in payloads if p.compress or p.content_encoding == "gzip"]
    sample = gz[:60]
    t0 = time.perf_counter()
    for p in sample:
        p.wire_body()
    gzip_ms = 1e3 * (time.perf_counter() - t0) / max(1, len(sample)) * len(gz) / frames
    return {"overhead_ms": st.overhead_per_frame_ms, "cpu_ms": cpu_ms, "engine_ms": 1e3 * st.engine_s / frames,
            "bytes_per_frame": sum(len(p.body) for p in payloads) / frames, "gzip_ms": gzip_ms,
            "map_points": len(svc.streams["default"].buffer)}


def decode_ms(body: bytes, min_side: int, repeat: int = 50) -> tuple[float, float]:
    """Wall and CPU ms of one decode."""
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(repeat):
        decode_image(body, S, min_side)
    return 1e3 * (time.perf_counter() - t0) / repeat, 1e3 * (time.thread_time() - c0) / repeat


def through_broker(results: list[FrameResult], body: bytes, frames: int) -> dict:
    """Frames/s of the whole service on the local broker (msgpack, PrecomputedEngine)."""
    import threading

    import pika

    from slam3r.service.publish import FramePublisher

    url = "amqp://guest:guest@127.0.0.1:5672/"
    cfg = ServiceConfig(rabbitmq_url=url, name_prefix=f"bench{uuid.uuid4().hex[:8]}-", encoding="msgpack")
    svc = Service(cfg, lambda: PrecomputedEngine(results), net_size=S, conf_thres_l2w=12.0)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(cfg.name(cfg.pose_exchange), exchange_type="fanout", durable=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, cfg.name(cfg.pose_exchange))
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    svc.link.connected.wait(10)
    try:
        with FramePublisher(url, cfg.name(cfg.frames_exchange)) as pub:
            t0 = time.perf_counter()
            for i in range(frames):
                pub.publish(body, {"timestamp_ns": 1000 + i, "video_segment": "bench"})
            got = 0
            while got < frames:
                method, _, _ = ch.basic_get(q, auto_ack=True)
                if method is None:
                    time.sleep(0.002)
                    continue
                got += 1
            dt = time.perf_counter() - t0
    finally:
        svc.stop()
        thread.join(30)
        delete_topology(ch, cfg)
        conn.close()
    return {"frames_per_s": frames / dt, "overhead_ms": svc.stats.overhead_per_frame_ms}


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def many_streams(n_streams: int, per_stream: int, normal_every: int, conf_l2w: float) -> dict:
    """Bounded state under ``n_streams`` short-lived streams (see module docstring); real engine, NullLink."""
    from slam3r.runtime import load_runtime
    from slam3r.recon.config import ReconConfig
    from slam3r.recon.streaming import StreamingReconstructor

    import logging

    logging.getLogger("slam3r.service").setLevel(logging.ERROR)     # one warning per evicted stream otherwise
    rt = load_runtime("default", "cpu")
    i2p, l2w = rt.i2p, rt.l2w
    recon = ReconConfig(conf_thres_l2w=conf_l2w, conf_thres_i2p=1.0)
    cfg = ServiceConfig(decode_min_side=0)
    link = NullLink()
    svc = Service(cfg, lambda: StreamingReconstructor(i2p, l2w, recon), net_size=i2p.cfg.img_size[0],
                  conf_thres_l2w=conf_l2w, link=link)
    bodies = [jpeg(320, 240, seed=i) for i in range(8)]
    rss0 = rss_bytes()
    peak, held, live, normal_sent = rss0, 0, 0, 0
    t0 = time.perf_counter()
    schedule = []
    for r in range(per_stream):
        for s in range(n_streams):
            schedule.append((f"noise{s}", 1000 + r))
            if len(schedule) % normal_every == 0:
                schedule.append(("normal", 10_000 + len(schedule)))
    for i in range(0, len(schedule), cfg.batch_size):
        batch = [link.delivery(bodies[j % len(bodies)], {"timestamp_ns": ts, "stream_id": sid})
                 for j, (sid, ts) in enumerate(schedule[i:i + cfg.batch_size], start=i)]
        normal_sent += sum(sid == "normal" for sid, _ in schedule[i:i + cfg.batch_size])
        svc.handle(batch)
        svc.housekeeping()
        held, live = max(held, svc.held()), max(live, len(svc.streams))
        peak = max(peak, rss_bytes())
    poses = [o for o in link.published if o.exchange == cfg.name(cfg.pose_exchange)]
    normal_poses = sum(b'"stream_id":"normal"' in o.payload.body for o in poses)
    reasons = [h["x-reject-reason"].split(":")[0] for h in link.dead_letters(cfg.name(cfg.dead_letter_exchange))]
    return {"streams": n_streams, "frames": len(schedule), "seconds": time.perf_counter() - t0,
            "rss_start_mb": rss0 / 2**20, "rss_peak_mb": peak / 2**20, "max_live_streams": live,
            "max_held_frames": held, "held_budget": cfg.max_in_flight - cfg.prefetch,
            "normal_frames_sent": normal_sent, "normal_poses": normal_poses, "evicted": svc.stats.evicted,
            "dead_letter_reasons": {r: reasons.count(r) for r in set(reasons)}}


def _stream_bodies(n_streams: int, frames: int, size: int = 224) -> list[list[bytes]]:
    """JPEGs of ``frames`` rendered frames of one synthetic scene per stream."""
    from slam3r.data.synth.sequence import render_sequence

    out = []
    for k in range(n_streams):
        rgb = render_sequence(seed=2_000_000 + k, num_frames=frames, width=size, height=size).rgb
        out.append([cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
                    .tobytes() for f in rgb])
    return out


def streams_run(nets, bodies: list[list[bytes]], batch_streams: bool, batch_size: int) -> dict:
    """All frames of ``bodies`` (one list per stream) through one worker; frames/s and frames per CPU-second."""
    import dataclasses

    from slam3r.recon.config import ReconConfig
    from slam3r.recon.streaming import StreamingReconstructor
    from slam3r.runtime import resolve_settings

    i2p, l2w = nets
    recon = resolve_settings(ReconConfig, "recon", weights="default").value
    cfg = dataclasses.replace(ServiceConfig(), batch_size=batch_size, batch_streams=batch_streams)
    link = NullLink()
    svc = Service(cfg, lambda: StreamingReconstructor(i2p, l2w, recon), net_size=i2p.cfg.img_size[0],
                  conf_thres_l2w=recon.conf_thres_l2w, link=link)
    order = [(k, i) for i in range(len(bodies[0])) for k in range(len(bodies))]        # round robin
    deliveries = [link.delivery(bodies[k][i], {"timestamp_ns": 1000 + i, "stream_id": f"s{k}",
                                               "video_segment": "bench"}) for k, i in order]
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(deliveries), batch_size):
        svc.handle(deliveries[i:i + batch_size])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = svc.stats.registered + svc.stats.unregistered
    return {"frames": done, "seconds": wall, "frames_per_s": done / wall, "frames_per_cpu_s": done / cpu}


def throughput(counts: list[int], frames: int, rounds: int, compare: bool, batch_size: int,
               threads: int = 1) -> list[dict]:
    """Interleaved runs of ``streams_run`` for every stream count (and mode); per-run rows plus the medians."""
    from slam3r.runtime import load_runtime

    rt = load_runtime("default", "cpu", threads)
    nets = (rt.i2p, rt.l2w)
    bodies = _stream_bodies(max(counts), frames)
    modes = (True, False) if compare else (True,)
    runs: dict[tuple[int, bool], list[dict]] = {}
    streams_run(nets, [b[:8] for b in bodies[:1]], True, batch_size)          # warm-up (first calls), not counted
    for r in range(rounds):
        for n in counts:
            for mode in modes if n > 1 else (True,):                             # one stream: nothing to batch
                res = streams_run(nets, bodies[:n], mode, batch_size)
                runs.setdefault((n, mode), []).append(res)
                print(f"round {r + 1}: {n} stream(s), batch_streams={mode}: {res['frames']} frames, "
                      f"{res['frames_per_s']:.2f} frames/s, {res['frames_per_cpu_s']:.2f} frames/CPU-s", flush=True)
    base = {k: float(np.median([x[k] for x in runs[(counts[0], True)]])) for k in ("frames_per_s",
                                                                                   "frames_per_cpu_s")}
    if base["frames_per_s"] == 0:
        raise SystemExit(f"no frame was registered in the {counts[0]}-stream runs: give more --stream-frames")
    rows = []
    for (n, mode), rs in runs.items():
        med = {k: float(np.median([x[k] for x in rs])) for k in ("frames_per_s", "frames_per_cpu_s")}
        rows.append({"streams": n, "batch_streams": mode, **med, "x_wall": med["frames_per_s"] / base["frames_per_s"],
                     "x_cpu": med["frames_per_cpu_s"] / base["frames_per_cpu_s"],
                     "runs_frames_per_s": [round(x["frames_per_s"], 2) for x in rs]})
    return rows


def print_throughput(args: argparse.Namespace) -> None:
    """``--streams``: the interleaved throughput check, printed as a table and a ``BENCH`` JSON line."""
    import os

    rows = throughput([int(n) for n in args.streams.split(",")], args.stream_frames, args.rounds, args.compare,
                      args.batch_size, args.threads)
    print(f"{'streams':>7} {'batched':>7} {'frames/s':>9} {'x':>6} {'frames/CPU-s':>13} {'x':>6}")
    for r in rows:
        print(f"{r['streams']:>7} {str(r['batch_streams']):>7} {r['frames_per_s']:>9.2f} {r['x_wall']:>6.2f} "
              f"{r['frames_per_cpu_s']:>13.2f} {r['x_cpu']:>6.2f}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps({"bench": "service_streams", "threads": args.threads, "batch_size": args.batch_size,
                      "load_avg": load, "results": [{k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in r.items()} for r in rows]}))


# ---------------------------------------------------------------------------------------------- --broker mode

def spread_stream_ids(n_streams: int, workers: int, shards: int) -> list[str]:
    """``n_streams`` stream ids, stream ``k`` owned by worker ``k % workers``: its shard ``crc32(id) % shards`` is
    one of that worker's own (``shard % workers == k % workers``). Hashed ids often pile up on one worker (4 random
    ids over 2 workers split 2/2 only 3 times in 8), so the bench picks them; a deployment can do the same."""
    cfg = ServiceConfig(shards=shards)
    ids: list[str] = []
    i = 0
    while len(ids) < n_streams:
        name = f"cam{i}"
        if shard_of(cfg, {"stream_id": name}) % workers == len(ids) % workers:
            ids.append(name)
        i += 1
    return ids


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants (Linux ``/proc``)."""
    import os

    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue                                     # ended meanwhile
    return total


class Deployment:
    """``slam3r serve --workers N`` (bundled model, CPU, ``threads`` torch threads per worker) on its own names of
    the local RabbitMQ; counts the poses and segment ends it publishes (consumed, not polled). Close to stop the
    workers and delete every exchange and queue it made."""

    def __init__(self, workers: int, threads: int, shards: int, log_path: str, map_update_frames: int) -> None:
        import os
        import subprocess
        import sys
        from collections import Counter

        import pika

        url = "amqp://guest:guest@127.0.0.1:5672/"
        # standby_delay_s: no worker takes a shard over during the run, so each stream stays with its owner even
        # when one worker loads its model later than the others' standby delay
        self.cfg = ServiceConfig(rabbitmq_url=url, name_prefix=f"bench{uuid.uuid4().hex[:8]}-", shards=shards,
                                 num_workers=workers, standby_delay_s=3600.0)
        self.workers, self.poses, self.ends, self.arrived = workers, Counter(), {}, {}
        params = pika.URLParameters(url)
        params.heartbeat = 0                  # idle while another deployment runs: no heartbeats to miss
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.probe = self.conn.channel()      # passive declares (a failing one closes its channel)
        for base, callback in ((self.cfg.pose_exchange, self._pose), (self.cfg.vis_exchange, self._vis)):
            ex = self.cfg.name(base)
            self.ch.exchange_declare(ex, exchange_type="fanout", durable=True)
            q = self.ch.queue_declare("", exclusive=True).method.queue
            self.ch.queue_bind(q, ex)
            self.ch.basic_consume(q, callback, auto_ack=True)
        env = {**os.environ, "RABBITMQ_URL": url, "SLAM3R_NAME_PREFIX": self.cfg.name_prefix,
               "SLAM3R_SHARDS": str(shards), "SLAM3R_STANDBY_DELAY_S": str(self.cfg.standby_delay_s),
               "SLAM3R_MAP_UPDATE_FRAMES": str(map_update_frames),
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "slam3r.cli", "serve", "--weights", "default",
                                      "--device", "cpu", "--threads", str(threads), "--workers", str(workers),
                                      "--log-level", "WARNING"], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def _pose(self, ch, method, props, body: bytes) -> None:
        m = json.loads(body)
        key = (m["stream_id"], m["video_segment"])
        self.poses[key] += 1
        self.arrived[key] = time.perf_counter()

    def _vis(self, ch, method, props, body: bytes) -> None:
        from slam3r.service.encodings import JSON

        if props.content_type != JSON:                   # map updates (gzip JSON): not decoded here
            return
        m = json.loads(body)
        if m.get("type") == "segment_boundary":
            key = (m["stream_id"], m["previous_segment"])
            self.ends[key] = m["frames"]
            self.arrived[key] = time.perf_counter()

    def wait(self, cond, timeout: float, what: str) -> None:
        """Serve the output consumers until ``cond()`` holds; fail if the workers died or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not cond():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.workers} worker(s): no {what} (exit code {self.proc.poll()}; see "
                                 f"{self.log.name})")
            self.conn.process_data_events(time_limit=0.2)

    def wait_consuming(self, timeout: float = 300.0) -> None:
        """Until each shard queue has its owner as its one consumer and every worker consumes the intake (one
        worker: the frames queue has its consumer)."""
        from slam3r.service.broker import queue_names, shard_queue

        want = {queue_names(self.cfg)[0]: self.workers}
        if self.workers > 1:
            want.update({shard_queue(self.cfg, k): 1 for k in range(self.cfg.shards)})

        def ready() -> bool:
            try:
                return all(self.probe.queue_declare(q, passive=True).method.consumer_count == n
                           for q, n in want.items())
            except Exception:  # not declared yet: the passive declare closed the channel
                self.probe = self.conn.channel()
                return False
        self.wait(ready, timeout, "consumers on every queue")

    def close(self) -> None:
        import signal
        import subprocess

        import pika

        from slam3r.service.broker import delete_topology

        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)        # forwarded to every worker: graceful shutdown
                try:
                    self.proc.wait(120)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(30)
            conn = pika.BlockingConnection(pika.URLParameters(self.cfg.rabbitmq_url))    # a fresh one: always works
            try:
                delete_topology(conn.channel(), self.cfg, self.workers)
            finally:
                conn.close()
        finally:
            if self.conn.is_open:
                self.conn.close()
            self.log.close()


def broker_run(dep: Deployment, ids: list[str], bodies: list[list[bytes]], segment: str,
               timeout: float = 900.0) -> dict:
    """Publish every frame of ``bodies`` (stream ``k`` as ``ids[k]``, round robin) and each stream's end marker as
    fast as possible; wall time until every segment end and every pose arrived, the workers' CPU time."""
    from slam3r.service.publish import FramePublisher

    keys = [(sid, segment) for sid in ids]
    t0, c0 = time.perf_counter(), tree_cpu_s(dep.proc.pid)
    with FramePublisher(dep.cfg.rabbitmq_url, dep.cfg.name(dep.cfg.frames_exchange)) as pub:
        for i in range(len(bodies[0])):
            for k, sid in enumerate(ids):
                pub.publish(bodies[k][i], {"timestamp_ns": 1000 + i, "video_segment": segment, "stream_id": sid})
        for sid in ids:
            pub.end_segment(segment, sid)
    dep.wait(lambda: all(k in dep.ends and dep.poses[k] >= dep.ends[k] for k in keys), timeout,
             f"segment end and poses of {segment}")
    wall, cpu = max(dep.arrived[k] for k in keys) - t0, tree_cpu_s(dep.proc.pid) - c0
    frames = len(ids) * len(bodies[0])
    return {"frames": frames, "registered": sum(dep.ends[k] for k in keys), "seconds": wall,
            "frames_per_s": frames / wall, "frames_per_cpu_s": frames / cpu}


def broker_throughput(counts: list[int], frames: int, rounds: int, workers: list[int], threads: int,
                      shards: int, map_update_frames: int) -> list[dict]:
    """``--broker``: one deployment per worker count, all started together and kept for the whole run; rounds of
    every (worker count, stream count) in turn; per-run rows and the medians, each against the 1-stream figure."""
    import os
    import tempfile

    bodies = _stream_bodies(max(counts), frames)
    ids = spread_stream_ids(max(counts), max(workers), shards)
    print("streams -> worker: " + ", ".join(f"{s} (shard {shard_of(ServiceConfig(shards=shards), {'stream_id': s})})"
                                            f" -> w{k % max(workers)}" for k, s in enumerate(ids)), flush=True)
    logs = tempfile.mkdtemp(prefix="bench_service_")
    deps: dict[int, Deployment] = {}
    runs: dict[tuple[int, int], list[dict]] = {}
    try:
        for w in workers:
            deps[w] = Deployment(w, threads, shards, os.path.join(logs, f"serve_w{w}.log"), map_update_frames)
        for w, dep in deps.items():
            dep.wait_consuming()
            broker_run(dep, ids[:w], [b[:32] for b in bodies[:w]], "warmup")   # every worker's first calls
        for r in range(rounds):
            for w, dep in deps.items():
                for n in counts:
                    res = broker_run(dep, ids[:n], bodies[:n], f"r{r}n{n}")
                    runs.setdefault((w, n), []).append(res)
                    print(f"round {r + 1}: {w} worker(s), {n} stream(s): {res['frames']} frames "
                          f"({res['registered']} registered), {res['frames_per_s']:.2f} frames/s, "
                          f"{res['frames_per_cpu_s']:.2f} frames/worker-CPU-s", flush=True)
    finally:
        for dep in deps.values():
            dep.close()
    med = {key: {k: float(np.median([x[k] for x in rs])) for k in ("frames_per_s", "frames_per_cpu_s")}
           for key, rs in runs.items()}
    first = med[(workers[0], counts[0])]["frames_per_s"]
    return [{"workers": w, "streams": n, **m, "x_wall": m["frames_per_s"] / med[(w, counts[0])]["frames_per_s"],
             "x_first": m["frames_per_s"] / first, "runs_frames_per_s": [round(x["frames_per_s"], 2)
                                                                          for x in runs[(w, n)]]}
            for (w, n), m in med.items()]


def print_broker_throughput(args: argparse.Namespace) -> None:
    """``--streams ... --broker``: printed as a table and a ``BENCH`` JSON line."""
    import os

    load0 = " ".join(f"{x:.2f}" for x in os.getloadavg())
    workers = [int(w) for w in args.workers.split(",")]
    rows = broker_throughput([int(n) for n in args.streams.split(",")], args.stream_frames, args.rounds, workers,
                             args.threads, args.shards, args.map_update_frames)
    print(f"{'workers':>7} {'streams':>7} {'frames/s':>9} {'x':>6} {'x first':>7} {'frames/worker-CPU-s':>20}")
    for r in rows:
        print(f"{r['workers']:>7} {r['streams']:>7} {r['frames_per_s']:>9.2f} {r['x_wall']:>6.2f} "
              f"{r['x_first']:>7.2f} {r['frames_per_cpu_s']:>20.2f}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps({"bench": "service_streams_broker", "threads_per_worker": args.threads, "shards": args.shards,
                      "map_update_frames": args.map_update_frames,
                      "stream_frames": args.stream_frames, "load_avg_before": load0, "load_avg_after": load,
                      "results": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                  for r in rows]}))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--no-broker", action="store_true", help="skip the run through RabbitMQ")
    ap.add_argument("--many-streams", type=int, default=0, metavar="N",
                    help="run the bounded-state check with N short-lived streams instead")
    ap.add_argument("--frames-per-stream", type=int, default=3)
    ap.add_argument("--normal-every", type=int, default=10, help="one normal-stream frame every this many")
    ap.add_argument("--conf-l2w", type=float, default=1.5, help="L2W confidence threshold (points kept)")
    ap.add_argument("--streams", default="", metavar="N,N,...",
                    help="run the throughput check for these stream counts instead (e.g. 1,2,4)")
    ap.add_argument("--stream-frames", type=int, default=60, help="--streams: frames per stream")
    ap.add_argument("--rounds", type=int, default=2, help="--streams: interleaved repetitions")
    ap.add_argument("--compare", action="store_true", help="--streams: also run without batch_streams")
    ap.add_argument("--batch-size", type=int, default=ServiceConfig().batch_size,
                    help="--streams: deliveries per worker batch")
    ap.add_argument("--threads", type=int, default=1, help="--streams: torch threads (per worker with --broker)")
    ap.add_argument("--broker", action="store_true",
                    help="--streams: real worker processes (slam3r serve --workers N) on the local RabbitMQ")
    ap.add_argument("--workers", default="1", metavar="N,N,...",
                    help="--broker: worker counts, one deployment each, interleaved in the same run (e.g. 1,2)")
    ap.add_argument("--shards", type=int, default=ServiceConfig().shards, help="--broker: shard queues")
    ap.add_argument("--map-update-frames", type=int, default=ServiceConfig().map_update_frames,
                    help="--broker: the workers' map_update_frames (1: about the cadence before, an update after every batch)")
    return ap


def main() -> None:
    args = build_parser().parse_args()
    if args.streams and args.broker:
        print_broker_throughput(args)
        return
    if args.streams:
        print_throughput(args)
        return
    if args.many_streams:
        r = many_streams(args.many_streams, args.frames_per_stream, args.normal_every, args.conf_l2w)
        for k, v in r.items():
            print(f"{k:<22} {v:.1f}" if isinstance(v, float) else f"{k:<22} {v}")
        print(json.dumps({"bench": "service_many_streams", **{k: (round(v, 1) if isinstance(v, float) else v)
                                                               for k, v in r.items()}}))
        return
    results = room_results(60)
    rows = []
    for w, h in ((1280, 720), (640, 480)):
        body = jpeg(w, h)
        for label, side in (("full", 0), ("dct-scaled", ServiceConfig().decode_min_side)):
            ms, cpu = decode_ms(body, side)
            rows.append({"case": f"jpeg decode {w}x{h} {label}", "ms": ms, "cpu_ms": cpu})
        for enc in ("msgpack", "json", "deployed"):
            r = in_process(results, body, enc, args.frames, batch=4)
            rows.append({"case": f"service {enc} {w}x{h}", "ms": r["overhead_ms"], "cpu_ms": r["cpu_ms"],
                         "kB_per_frame": r["bytes_per_frame"] / 1e3, "map_points": r["map_points"]})
            if enc in ("json", "deployed"):
                rows.append({"case": f"  + gzip in the AMQP thread ({enc})", "ms": r["gzip_ms"]})
    if not args.no_broker:
        r = through_broker(results, jpeg(1280, 720), min(args.frames, 200))
        rows.append({"case": "through broker msgpack 1280x720", "ms": r["overhead_ms"],
                     "frames_per_s": r["frames_per_s"]})
    print(f"{'case':<36} {'ms/frame':>9} {'cpu ms':>7} {'kB/frame':>9} {'frames/s':>9}")
    for r in rows:
        cpu = f"{r['cpu_ms']:.2f}" if "cpu_ms" in r else ""
        kb = f"{r['kB_per_frame']:.0f}" if "kB_per_frame" in r else ""
        fps = f"{r['frames_per_s']:.0f}" if "frames_per_s" in r else ""
        print(f"{r['case']:<36} {r['ms']:>9.2f} {cpu:>7} {kb:>9} {fps:>9}")
    print(json.dumps({"bench": "service", "results": [{k: (round(v, 3) if isinstance(v, float) else v)
                                                        for k, v in r.items()} for r in rows]}))


if __name__ == "__main__":
    main()
