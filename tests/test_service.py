"""The RabbitMQ service with a fake engine, against the real broker on 127.0.0.1:5672."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from service_helpers import (URL, FakeEngine, Harness, close_broker_connection, exchange_exists, needs_broker,
                             queue_exists, run_in_thread, textured_frames)
from slam3r.service.broker import connection_name
from slam3r.service.publish import encode_jpeg, publish_stream
from slam3r.service.worker import Service

pytestmark = needs_broker


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.close()


def start(h: Harness, engines: list[FakeEngine] | None = None, **changes) -> tuple[Service, object, list[int]]:
    """Start a fake-engine service on the harness's names; waits until it consumes."""
    engines = engines if engines is not None else []

    def make() -> FakeEngine:
        engines.append(FakeEngine())
        return engines[-1]

    svc = Service(dataclasses.replace(h.cfg, **changes), make, net_size=64, conf_thres_l2w=12.0)
    thread, code = run_in_thread(svc)
    assert svc.link.connected.wait(10), "service did not connect"
    return svc, thread, code


def stop(svc: Service, thread, code: list[int]) -> None:
    svc.stop()
    thread.join(30)
    assert not thread.is_alive() and code == [0]


def first_occurrences(msgs: list[dict], segment: str | None = None) -> list[int]:
    seen, order = set(), []
    for m in msgs:
        if segment is not None and m["video_segment"] != segment:
            continue
        if m["timestamp_ns"] not in seen:
            seen.add(m["timestamp_ns"])
            order.append(m["timestamp_ns"])
    return order


def test_every_frame_in_order_then_segment_end(harness):
    engines: list[FakeEngine] = []
    svc, thread, code = start(harness, engines)
    frames = textured_frames(40)
    with harness.publisher() as pub:
        for i, rgb in enumerate(frames):
            pub.frame(rgb, 1000 + i, "seg-a")
        pub.end_segment("seg-a")
    stamps = [1000 + i for i in range(40)]
    harness.wait_for(harness.ends, 30, "segment end")
    harness.collect(0.3)
    poses, points = harness.received["pose"], harness.received["points"]
    assert [m["timestamp_ns"] for m in poses] == stamps          # each once, in order
    assert [m["timestamp_ns"] for m in points] == stamps
    p = poses[7]
    assert p["_content_type"] == "application/json" and p["_content_encoding"] is None
    assert set(p) >= {"timestamp_ns", "processing_timestamp", "position", "orientation", "raw_pose_matrix"}
    assert p["position"]["x"] == pytest.approx(0.05 * 7) and p["orientation"]["w"] == pytest.approx(1.0)
    assert np.asarray(p["raw_pose_matrix"]).shape == (4, 4)
    pts = np.asarray(points[3]["points"])
    assert points[3]["_content_encoding"] == "gzip" and pts.shape == (256, 6)
    vis = harness.received["vis"]
    assert [m["event"] for m in vis if m["type"] == "segment"] == ["start", "end"]
    end = [m for m in vis if m.get("event") == "end"][0]
    assert end["frames"] == 40 and end["points"] > 0
    # The incremental map updates add up to the final map.
    slots = {i for m in vis if m["type"] == "points" for i in m["index"]}
    assert len(slots) == end["points"]
    assert engines[0].pushed == stamps and engines[0].resets == 1
    assert harness.queue_depth(harness.cfg.frames_queue) == 0      # everything acknowledged
    stop(svc, thread, code)


def test_connection_drop_loses_nothing_and_registers_once(harness):
    engines: list[FakeEngine] = []
    svc, thread, code = start(harness, engines, encoding="msgpack")
    frames = textured_frames(40, seed=1)
    with harness.publisher() as pub:
        for i, rgb in enumerate(frames[:20]):
            pub.frame(rgb, 5000 + i, "seg-b")
        harness.wait_for(lambda: len(harness.received["pose"]) >= 10, 20, "first poses")
        close_broker_connection(connection_name(svc.cfg))
        for i, rgb in enumerate(frames[20:], start=20):
            pub.frame(rgb, 5000 + i, "seg-b")
        pub.end_segment("seg-b")
    harness.wait_for(harness.ends, 40, "segment end")
    harness.collect(0.3)
    stamps = [5000 + i for i in range(40)]
    assert svc.link.reconnects >= 1
    assert first_occurrences(harness.received["pose"]) == stamps
    assert first_occurrences(harness.received["points"]) == stamps
    assert harness.received["points"][0]["_content_type"] == "application/msgpack"
    assert harness.received["points"][0]["xyz"].dtype == np.float32
    assert engines[0].pushed == stamps                 # redelivered frames were not registered twice
    assert svc.stats.duplicates > 0                    # ... but were recognised (frames held by the engine)
    assert harness.queue_depth(harness.cfg.frames_queue) == 0
    stop(svc, thread, code)


def test_malformed_messages_are_dead_lettered_with_a_reason(harness):
    svc, thread, code = start(harness, max_pixels=100_000)
    good = encode_jpeg(textured_frames(1)[0])
    tiny = encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    cases = [
        (b"not an image", {"timestamp_ns": 1, "video_segment": "s"}, "not a JPEG or PNG"),
        (b"", {"timestamp_ns": 2, "video_segment": "s"}, "empty body"),
        (good[:200], {"timestamp_ns": 3, "video_segment": "s"}, "undecodable"),
        (good, {"video_segment": "s"}, "missing header timestamp_ns"),
        (good, {"timestamp_ns": "soon", "video_segment": "s"}, "timestamp_ns must be an integer"),
        (encode_jpeg(np.zeros((300, 400, 3), np.uint8)), {"timestamp_ns": 6, "video_segment": "s"},
         "over the limit"),
        (good, {"timestamp_ns": 7, "video_segment": "s", "stream_id": {"id": 1}}, "stream_id must be a string"),
        (tiny, {"timestamp_ns": 8, "video_segment": "s"}, "too small"),
    ]
    with harness.publisher() as pub:
        for body, headers, _ in cases:
            pub.publish(body, headers)
        for i, rgb in enumerate(textured_frames(6)):
            pub.frame(rgb, 100 + i, "s")
        pub.end_segment("s")
    harness.wait_for(harness.ends, 20, "segment end")
    dead = harness.dead_letters()
    assert len(dead) == len(cases)
    for (headers, body), (sent_body, sent_headers, reason) in zip(dead, cases):
        assert reason in headers["x-reject-reason"]
        assert body == sent_body and headers.get("timestamp_ns") == sent_headers.get("timestamp_ns")
    assert [m["timestamp_ns"] for m in harness.received["pose"]] == [100 + i for i in range(6)]
    assert svc.stats.rejected == len(cases)
    assert harness.queue_depth(harness.cfg.frames_queue) == 0
    stop(svc, thread, code)


def test_two_workers_share_streams_through_single_active_consumer_shards(harness):
    from slam3r.service.broker import shard_of

    shards = 4
    names = [f"drone-{i}" for i in range(12)]
    a = next(n for n in names if shard_of(dataclasses.replace(harness.cfg, shards=shards), {"stream_id": n}) == 0)
    b = next(n for n in names if shard_of(dataclasses.replace(harness.cfg, shards=shards), {"stream_id": n}) == 1)
    harness.ch.exchange_declare(harness.cfg.name(harness.cfg.frames_exchange), exchange_type="fanout", durable=True)
    harness.ch.queue_declare(harness.cfg.name(harness.cfg.frames_queue), durable=True)    # a single-worker run's
    harness.ch.queue_bind(harness.cfg.name(harness.cfg.frames_queue), harness.cfg.name(harness.cfg.frames_exchange))
    engines = [[], []]
    runs = [start(harness, engines[i], worker_index=i, num_workers=2, shards=shards, standby_delay_s=0.5)
            for i in range(2)]
    frames = textured_frames(12, seed=2)
    with harness.publisher() as pub:
        for i, rgb in enumerate(frames):
            pub.frame(rgb, 10 + i, "seg", stream_id=a)
            pub.frame(rgb, 10 + i, "seg", stream_id=b)
        pub.end_segment("seg", a)
        pub.end_segment("seg", b)
    harness.wait_for(lambda: len(harness.ends()) == 2, 30, "2 ends")
    harness.collect(0.3)
    for stream in (a, b):
        got = [m["timestamp_ns"] for m in harness.received["pose"] if m["stream_id"] == stream]
        assert got == [10 + i for i in range(12)]
    # shard 0 (stream a) is worker 0's own, shard 1 (stream b) worker 1's: each stream reconstructed once
    assert [e.pushed for e in engines[0]] == [[10 + i for i in range(12)]]
    assert [e.pushed for e in engines[1]] == [[10 + i for i in range(12)]]
    assert set(runs[0][0].streams) == {a} and set(runs[1][0].streams) == {b}
    # the single-worker queue was unbound: nothing reached it
    assert harness.queue_depth(harness.cfg.frames_queue) == 0
    for svc, thread, code in runs:
        stop(svc, thread, code)


def test_delete_topology_removes_what_a_multi_worker_deployment_declared(harness):
    from slam3r.service.broker import BrokerLink, delete_topology, queue_names, shard_exchange, shard_queue

    cfg = dataclasses.replace(harness.cfg, num_workers=2, shards=3)
    for i in range(2):                                          # each worker declares its part of the topology
        link = BrokerLink(dataclasses.replace(cfg, worker_index=i), consume=False)
        link.start()
        assert link.connected.wait(10)
        link.close(5)
    queues = [shard_queue(cfg, k) for k in range(3)] + [cfg.name(cfg.dead_letter_queue), queue_names(cfg)[0]]
    queues += [queue_names(dataclasses.replace(cfg, worker_index=i))[1] for i in range(2)]
    exchanges = [shard_exchange(cfg)] + [cfg.name(b) for b in (cfg.frames_exchange, cfg.restart_exchange,
                                                               cfg.dead_letter_exchange, cfg.pose_exchange,
                                                               cfg.pointcloud_exchange, cfg.vis_exchange)]
    assert all(queue_exists(q) for q in queues) and all(exchange_exists(e) for e in exchanges)
    delete_topology(harness.ch, cfg, workers=2)
    assert not any(queue_exists(q) for q in queues)
    assert not any(exchange_exists(e) for e in exchanges)


def test_new_segment_and_redelivered_late_frames(harness, tmp_path):
    svc, thread, code = start(harness, save_segments=True, segment_output_dir=str(tmp_path))
    frames = textured_frames(16, seed=3)
    with harness.publisher() as pub:
        for i in range(8):
            pub.frame(frames[i], 200 + i, "one")
        for i in range(8, 16):
            pub.frame(frames[i], 200 + i, "two")        # a new segment ends "one"
        pub.frame(frames[0], 150, "one")                # an old frame of a finished segment
        pub.end_segment("two")
    harness.wait_for(lambda: len(harness.ends()) == 2, 20, "ends")
    ends = harness.ends()
    assert [(e["video_segment"], e["frames"]) for e in ends] == [("one", 8), ("two", 8)]
    for e in ends:
        assert Path(e["files"]["points"]).is_file() and Path(e["files"]["trajectory"]).is_file()
        assert len(Path(e["files"]["trajectory"]).read_text().splitlines()) == 1 + 8
    dead = harness.dead_letters()
    assert len(dead) == 1 and "late frame" in dead[0][0]["x-reject-reason"]
    stop(svc, thread, code)


def test_restart_forgets_finished_segments_so_a_replay_is_processed(harness):
    svc, thread, code = start(harness)
    frames = textured_frames(8, seed=6)
    with harness.publisher() as pub:
        for replay in range(2):
            for i, rgb in enumerate(frames):
                pub.frame(rgb, 700 + i, "0000_segment_000.mp4")
            pub.end_segment("0000_segment_000.mp4")
            harness.wait_for(lambda: len(harness.ends()) == replay + 1, 20, f"end {replay}")
            if replay == 0:                         # as the deployment's server does on start-up
                harness.restart(b'{"type":"restart"}')
                harness.wait_for(lambda: not svc.streams, 20, "the restart")
    harness.collect(0.3)
    assert [m["timestamp_ns"] for m in harness.received["pose"]] == [700 + i for i in range(8)] * 2
    assert harness.dead_letters() == []
    stop(svc, thread, code)


def test_restart_message_finishes_the_segment_and_later_frames_start_over(harness):
    engines: list[FakeEngine] = []
    svc, thread, code = start(harness, engines)
    frames = textured_frames(10, seed=5)
    with harness.publisher() as pub:
        for i in range(6):
            pub.frame(frames[i], 300 + i, "r")
        harness.wait_for(lambda: len(harness.received["pose"]) == 5, 20, "the initial window")
        harness.restart(headers={"stream_id": "default"})
        harness.wait_for(harness.ends, 20, "end")
        for i in range(6, 10):
            pub.frame(frames[i], 300 + i, "r")                 # same segment name, later frames: a new map
        pub.end_segment("r")
    harness.wait_for(lambda: len(harness.ends()) == 2, 20, "2nd end")
    events = [(m["event"], m["frames"]) for m in harness.received["vis"] if m["type"] == "segment"]
    assert events == [("start", 0), ("end", 6), ("start", 0), ("end", 4)]
    assert [m["timestamp_ns"] for m in harness.received["pose"]] == [300 + i for i in range(10)]
    assert len(engines) == 2 and engines[0].resets == 1          # the restart forgot the stream: a fresh engine
    assert harness.queue_depth(harness.cfg.restart_queue) == 0
    stop(svc, thread, code)


def test_conflicting_topology_is_a_clear_fatal_error(harness):
    harness.ch.queue_declare(harness.cfg.name(harness.cfg.frames_queue), durable=False)   # declared differently
    svc = Service(harness.cfg, FakeEngine, net_size=64, conf_thres_l2w=12.0)
    thread, code = run_in_thread(svc)
    thread.join(20)
    assert code == [2] and "refused" in str(svc.link.fatal) and "durable" in str(svc.link.fatal)


def test_unreachable_broker_is_retried_with_backoff_and_shutdown_stays_prompt():
    from slam3r.service.config import ServiceConfig

    cfg = ServiceConfig(rabbitmq_url="amqp://guest:guest@127.0.0.1:9/", reconnect_max_s=1.0, shutdown_timeout_s=2)
    svc = Service(cfg, FakeEngine, net_size=64, conf_thres_l2w=12.0)
    thread, code = run_in_thread(svc)
    time.sleep(3.0)
    assert not svc.link.connected.is_set()
    assert 2 <= svc.link.reconnects <= 5            # waits of ~0.5, 1, 1, ... s (capped), not a busy loop
    t0 = time.monotonic()
    svc.stop()
    thread.join(15)
    assert code == [0] and time.monotonic() - t0 < 8


SIGTERM_SCRIPT = textwrap.dedent("""
    import dataclasses, sys, time
    sys.path.insert(0, {tests!r})
    from service_helpers import FakeEngine, Harness
    from slam3r.service.config import ServiceConfig
    from slam3r.service.worker import Service

    class SlowEngine(FakeEngine):
        def push_many(self, rgbs, timestamps=None):
            time.sleep(0.15 * len(rgbs))
            return super().push_many(rgbs, timestamps)

    cfg = ServiceConfig(rabbitmq_url={url!r}, name_prefix={prefix!r}, save_segments=True,
                        segment_output_dir={out!r}, decode_min_side=0, batch_size=1, encoding="json")
    sys.exit(Service(cfg, SlowEngine, net_size=64, conf_thres_l2w=12.0).run())
""")


def test_sigterm_finishes_received_frames_and_saves_the_segment(harness, tmp_path):
    tests = str(Path(__file__).parent)
    script = SIGTERM_SCRIPT.format(tests=tests, url=harness.cfg.rabbitmq_url, prefix=harness.prefix,
                                   out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        pub = harness.publisher()
        deadline = time.monotonic() + 30
        while True:                              # wait until the worker's queue is bound
            try:
                pub.frame(textured_frames(1)[0], 1, "sig")
                break
            except Exception:
                assert time.monotonic() < deadline, "worker never bound its queue"
                pub.close()
                time.sleep(0.3)
                pub = harness.publisher()
        publish_stream(pub, ((rgb, None) for rgb in textured_frames(39, seed=4)), "sig", fps=None,
                       end_marker=False)
        pub.close()
        harness.wait_for(lambda: len(harness.received["pose"]) >= 8, 30, "first poses")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    harness.collect(0.5)
    done = len(harness.received["pose"])
    assert 8 <= done < 40
    assert len({m["timestamp_ns"] for m in harness.received["pose"]}) == done
    # Frames still in the queue were left for redelivery; everything received was finished and acknowledged.
    assert harness.queue_depth(harness.cfg.frames_queue) == 40 - done
    end = harness.ends()
    assert len(end) == 1 and end[0]["frames"] == done
    assert Path(end[0]["files"]["points"]).stat().st_size > 0
    assert len(Path(end[0]["files"]["trajectory"]).read_text().splitlines()) == 1 + done


def test_publish_sends_persistent_frames_and_survives_a_lost_connection(harness):
    import pika

    tap = harness.ch.queue_declare("", exclusive=True).method.queue       # sees what the publisher sends
    harness.ch.exchange_declare(harness.cfg.name(harness.cfg.frames_exchange), exchange_type="fanout", durable=True)
    harness.ch.queue_bind(tap, harness.cfg.name(harness.cfg.frames_exchange))
    svc, thread, code = start(harness)
    frames = textured_frames(24, seed=8)
    with harness.publisher(retry_s=30) as pub:
        for i, rgb in enumerate(frames):
            if i == 10:
                close_broker_connection(pub.connection_name)    # the broker drops the publisher mid-stream
            pub.frame(rgb, 900 + i, "p")
        pub.end_segment("p")
    assert pub.resent >= 1
    harness.wait_for(harness.ends, 30, "segment end")
    assert first_occurrences(harness.received["pose"]) == [900 + i for i in range(24)]       # none lost
    modes = []
    while True:
        method, props, _ = harness.ch.basic_get(tap, auto_ack=True)
        if method is None:
            break
        modes.append(props.delivery_mode)
    assert len(modes) >= 25 and set(modes) == {pika.DeliveryMode.Persistent.value}
    stop(svc, thread, code)
