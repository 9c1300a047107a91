"""Scale-out on RabbitMQ's own mechanisms: several worker processes (standing for hosts) share the streams
through single-active-consumer shard queues; a ``kill -9`` of one mid-stream hands its streams over without
losing a frame. Also: a worker's mesher process dies with it."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from service_helpers import Harness, needs_broker, textured_frames
from slam3r.service.broker import queue_names, shard_of, shard_queue
from slam3r.service.publish import FramePublisher

pytestmark = needs_broker

WORKER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from service_helpers import FakeEngine
    from slam3r.service.config import ServiceConfig
    from slam3r.service.worker import Service

    log = open({log!r}, "a", buffering=1)

    class Logged(FakeEngine):
        def push_many(self, rgbs, timestamps=None):
            time.sleep(0.04 * len(rgbs))
            for ts in timestamps:
                log.write(json.dumps([{index}, self.stream, ts]) + "\\n")
            return super().push_many(rgbs, timestamps)

    cfg = ServiceConfig(rabbitmq_url={url!r}, name_prefix={prefix!r}, encoding="json", decode_min_side=0,
                        num_workers={n}, worker_index={index}, shards={shards}, standby_delay_s=2.0,
                        batch_size=2, prefetch=4)
    svc = Service(cfg, Logged, net_size=64, conf_thres_l2w=12.0)
    _stream = svc._stream

    def tagged(stream_id, groups, out):            # tell each engine which stream it reconstructs
        st = _stream(stream_id, groups, out)
        engine = st.engine
        engine.stream = stream_id
        return st

    svc._stream = tagged
    sys.exit(svc.run())
""")


def consumers(h: Harness, name: str) -> int:
    return h.ch.queue_declare(name, passive=True).method.consumer_count


def start_workers(h: Harness, cfg, log: Path) -> list[subprocess.Popen]:
    """``cfg.num_workers`` worker processes; returns once every one consumes every shard and the intake."""
    procs = []
    for i in range(cfg.num_workers):
        script = WORKER.format(tests=str(Path(__file__).parent), log=str(log), index=i, url=cfg.rabbitmq_url,
                               prefix=h.prefix, n=cfg.num_workers, shards=cfg.shards)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env={**os.environ}))
    deadline = time.monotonic() + 120
    queues = [shard_queue(cfg, k) for k in range(cfg.shards)] + [queue_names(cfg)[0]]
    while True:                                    # every worker consumes every shard (owner or standby)
        try:
            if all(consumers(h, q) == cfg.num_workers for q in queues):
                return procs
        except Exception:
            h.ch = h.conn.channel()                # a passive declare of a missing queue closes the channel
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            for p in procs:
                p.kill()
            raise AssertionError("workers did not start")
        time.sleep(0.3)


def test_a_killed_worker_hands_its_streams_over_without_losing_frames(tmp_path):
    n, shards, per_stream = 3, 6, 30
    h = Harness()
    cfg = h.cfg.__class__(**{**h.cfg.__dict__, "num_workers": n, "shards": shards})
    streams = {}
    for i in range(200):                               # one stream per shard
        k = shard_of(cfg, {"stream_id": f"cam{i}"})
        streams.setdefault(k, f"cam{i}")
        if len(streams) == shards:
            break
    procs = []
    try:
        procs += start_workers(h, cfg, tmp_path / "pushed.jsonl")
        frames = textured_frames(per_stream, seed=9)
        victim = procs[0]                               # worker 0: the router and the owner of shards 0 and 3
        with FramePublisher(cfg.rabbitmq_url, cfg.name(cfg.frames_exchange)) as pub:
            for t, rgb in enumerate(frames):
                for s in streams.values():
                    pub.frame(rgb, 1000 + t, "seg", stream_id=s)
                if t == per_stream // 3:
                    h.wait_for(lambda: len(h.received["pose"]) >= 20, 60, "first poses")
                    victim.send_signal(signal.SIGKILL)
                    victim.wait(10)
            for s in streams.values():
                pub.end_segment("seg", s)
        want = {(s, 1000 + t) for s in streams.values() for t in range(per_stream)}
        h.wait_for(lambda: want <= {(m["stream_id"], m["timestamp_ns"]) for m in h.received["pose"]}, 120,
                   "a pose for every frame")
        h.wait_for(lambda: sum(m.get("event") == "end" for m in h.received["vis"]) >= shards, 60, "segment ends")
        h.collect(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        h.close(workers=n)
    count = collections.Counter((m["stream_id"], m["timestamp_ns"]) for m in h.received["pose"])
    assert set(count) == want                                         # nothing lost, nothing invented
    workers = collections.defaultdict(set)
    for line in (tmp_path / "pushed.jsonl").read_text().splitlines():
        worker, stream, _ = json.loads(line)
        workers[stream].add(worker)
    killed_streams = {s for s, w in workers.items() if 0 in w}
    assert killed_streams, "the killed worker owned no stream: nothing was handed over"
    dupes = {key for key, c in count.items() if c > 1}
    # At most one duplicate per frame (same timestamp_ns): frames the killed worker had published but not yet
    # acknowledged, and frames it had routed without acknowledging the intake copy (the next router re-routes).
    assert all(count[key] == 2 for key in dupes)
    assert len(dupes) <= 2 * 4 * n                                     # bounded by what was in flight
    # each stream was reconstructed by one worker at a time: the survivors never shared a stream
    for s in streams.values():                   # one owner at a time: the killed worker, then one successor
        assert len(workers[s]) == (2 if s in killed_streams else 1), (s, workers[s])
    assert procs[1].returncode == 0 and procs[2].returncode == 0


def test_the_mesher_dies_with_its_worker():
    pytest.importorskip("open3d")
    script = textwrap.dedent("""
        import sys, time
        from slam3r.service.mesher import Mesher
        m = Mesher()
        m.start()
        print(m._proc.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)                                              # alive
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 30
        while True:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break                                                  # gone with its parent
            try:
                os.waitpid(child, os.WNOHANG)                          # (reap if it was re-parented to us)
            except ChildProcessError:
                pass
            status = Path(f"/proc/{child}/status")
            if status.exists() and "zombie" in status.read_text():
                break
            assert time.monotonic() < deadline, "the mesher outlived its killed worker"
            time.sleep(0.2)
    finally:
        if parent.poll() is None:
            parent.kill()
