"""The broker stops and starts mid-stream: a real ``slam3r publish`` and ``slam3r serve`` lose no frame.

A private RabbitMQ node (:class:`service_helpers.PrivateBroker`, never the shared broker) is stopped
(``rabbitmqctl stop_app``: every connection closed, the port refused, the queues shut down, transient messages
dropped) while ``slam3r publish`` streams an image folder at a fixed rate, with frames in every state (acknowledged,
held by the engine, delivered, waiting in the queue); it stays down until the worker has noticed and the publisher
has failed to reconnect twice, then starts again on the same port and data directory. Every published frame must
get a pose (timestamps contiguous at the publishing rate) and be registered once by the worker; a pose published
twice is byte-identical (same ``timestamp_ns``, same pose). The consumer keeps a durable queue and acknowledges
what it read, as a consumer that must not miss a pose across a broker restart does.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest

from service_helpers import PrivateBroker, needs_rabbitmq_server

pytestmark = [needs_rabbitmq_server, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
FPS, FRAMES = 5, 60
SEGMENT = "restart-test"


class DurableCollector:
    """Reads the pose and visualisation exchanges through durable queues of its own (manual acknowledgements),
    reconnecting whenever the broker is back. ``poses``: (body, decoded) of every pose read; a message the
    broker redelivers *to this collector* (read, not yet acknowledged when the connection dropped) is not
    counted again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues = {"pose": "test-restart-poses", "vis": "test-restart-vis"}
        self.poses: list[tuple[bytes, dict[str, Any]]] = []
        self.vis: list[dict[str, Any]] = []
        self._conn: Any = None
        self._seen: set[bytes] = set()

    def _connect(self) -> None:
        import pika

        self._conn = pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1"))
        self._ch = self._conn.channel()
        for key, exchange in (("pose", "slam3r_pose_exchange"), ("vis", "slam3r_reconstruction_vis_exchange")):
            self._ch.exchange_declare(exchange, exchange_type="fanout", durable=True)
            self._ch.queue_declare(self.queues[key], durable=True)
            self._ch.queue_bind(self.queues[key], exchange)

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    def poll(self) -> int:
        """Read up to 50 waiting messages per queue (nothing while the broker is down); returns how many."""
        from slam3r.service.encodings import decode_payload

        got = 0
        try:
            if not self.connected:
                self._connect()
            for key, q in self.queues.items():
                for _ in range(50):
                    method, props, body = self._ch.basic_get(q)
                    if method is None:
                        break
                    got += 1
                    if not (method.redelivered and body in self._seen):
                        msg = decode_payload(body, props.content_type, props.content_encoding)
                        self.poses.append((body, msg)) if key == "pose" else self.vis.append(msg)
                        self._seen.add(body)
                    self._ch.basic_ack(method.delivery_tag)
        except Exception:  # broker down or restarting: read again once it is back
            self._conn = None
        return got

    def depth(self, queue: str) -> int:
        """Messages waiting (not delivered) in ``queue``."""
        return self._ch.queue_declare(queue, passive=True).method.message_count if self.connected else 0

    def drain(self) -> None:
        """Read until the queues are empty."""
        while self.poll():
            pass

    def close(self) -> None:
        if self.connected:
            for q in self.queues.values():
                self._ch.queue_delete(q)
            self._conn.close()


def frame_folder(path: Path) -> Path:
    from slam3r.data.synth import render_sequence

    path.mkdir()
    for i, rgb in enumerate(render_sequence(seed=7, num_frames=FRAMES, width=128, height=96, threads=1).rgb):
        cv2.imwrite(str(path / f"{i:04d}.png"), rgb[..., ::-1])
    return path


class Scenario:
    """``slam3r serve`` and ``slam3r publish`` subprocesses on a private node, their logs, the collector, and a
    timeline of the states reached (printed with ``-s``)."""

    def __init__(self, tmp_path: Path, broker: PrivateBroker, weights: Path) -> None:
        self.tmp, self.broker, self.t0 = tmp_path, broker, time.monotonic()
        self.env = {**os.environ, "RABBITMQ_URL": broker.url, "PYTHONPATH": str(ROOT / "src"),
                    "SLAM3R_CONF_THRES_I2P": "1", "SLAM3R_CONF_THRES_L2W": "1",  # random tiny networks: conf ~2
                    "SLAM3R_RECONNECT_MAX_S": "1", "SLAM3R_PREFETCH": "4"}
        self.procs: dict[str, subprocess.Popen] = {}
        self.collector = DurableCollector(broker.url)
        self.timeline: list[str] = []
        self.poses_before = 0
        self.cli("serve", "--weights", str(weights), "--device", "cpu", "--threads", "1")

    def cli(self, name: str, *args: str) -> None:
        with open(self.tmp / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "slam3r.cli", name, *args], env=self.env,
                                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def mark(self, what: str) -> None:
        self.timeline.append(f"{time.monotonic() - self.t0:6.1f} s  {what}")

    def wait(self, cond: Callable[[], Any], what: str, running: tuple[str, ...], timeout: float = 90.0) -> None:
        """Poll the collector until ``cond()``; fails at once when one of the ``running`` processes exited."""
        deadline = time.monotonic() + timeout
        while True:
            self.collector.poll()
            if cond():
                self.mark(what)
                return
            for name in running:
                p = self.procs[name]
                assert p.poll() is None, f"{name} exited ({p.returncode}) before {what}:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what} ({len(self.collector.poses)} poses)"
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM to what still runs; the worker's exit status."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            p.wait(60)
        self.collector.close()
        return self.procs["serve"].returncode


def test_broker_stop_and_start_mid_stream_loses_no_frame(tmp_path, tiny_weights_dir):
    with PrivateBroker(tmp_path / "rmq") as broker:
        broker.start()
        run = Scenario(tmp_path, broker, tiny_weights_dir)       # the worker retries until the node is up
        frames = frame_folder(tmp_path / "frames")
        try:
            broker.wait_up()
            run.mark("broker up")
            run.wait(lambda: "connected to RabbitMQ" in run.log("serve") and run.collector.connected, "worker up",
                     ("serve",))
            run.cli("publish", str(frames), "--fps", str(FPS), "--segment", SEGMENT, "--url", broker.url,
                    "--retry", "120")
            run.wait(lambda: run.collector.poses, "first poses", ("serve", "publish"))
            restart_mid_stream(run)
            run.wait(lambda: run.procs["publish"].poll() is not None, "publisher done", ())
            run.wait(lambda: any(m.get("type") == "segment_boundary" for m in run.collector.vis), "segment end",
                     ("serve",))
            run.collector.drain()                                  # (poses come before their segment's end)
        finally:
            code = run.stop()
            print("\n" + "\n".join(run.timeline))
    check(run, code)


def restart_mid_stream(run: Scenario) -> None:
    """Stop the node mid-stream with frames in every state (acknowledged, held by the engine, delivered, waiting in
    the queue, being published), keep it down until both sides noticed (the publisher failed to reconnect twice),
    start it again. To have frames *waiting* (a backlog, as when the worker is slower than the camera: the frames a
    restart loses when they are transient) the worker is paused (SIGSTOP) until some are; the publisher is paused
    while ``rabbitmqctl stop_app`` runs, which takes long on a loaded machine: the stop always lands mid-stream."""
    worker, publisher = run.procs["serve"], run.procs["publish"]
    lost = run.log("serve").count("broker connection lost")         # (also logged while the node was booting)
    worker.send_signal(signal.SIGSTOP)
    try:
        run.wait(lambda: run.collector.depth("slam3r_video_frames_queue") >= 3, "a backlog", ("publish",))
        publisher.send_signal(signal.SIGSTOP)
        assert publisher.poll() is None, "the publisher finished before the broker stopped"
        run.poses_before = len(run.collector.poses)
        probe(run.broker.url, put=True)
        run.broker.stop_app()
        run.mark("broker stopped")
    finally:
        worker.send_signal(signal.SIGCONT)
        publisher.send_signal(signal.SIGCONT)
    run.wait(lambda: run.log("serve").count("broker connection lost") > lost and
             run.log("publish").count("retrying") >= 3, "both sides noticed", ("serve", "publish"))
    run.broker.start_app()
    run.mark("broker started again")
    assert probe(run.broker.url) == 1, "the node kept a transient message: it did not really restart"


def probe(url: str, put: bool = False) -> int:
    """Put a transient and a persistent message on the durable queue ``test-restart-probe`` (``put``), or take
    what it holds (a restarted node keeps the persistent one only); returns how many it held."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.queue_declare("test-restart-probe", durable=True)
        if put:
            ch.confirm_delivery()
            for mode in (1, 2):
                ch.basic_publish("", "test-restart-probe", b"probe", pika.BasicProperties(delivery_mode=mode))
            return 2
        return ch.queue_purge("test-restart-probe").method.message_count
    finally:
        conn.close()


def check(run: Scenario, code: int) -> None:
    serve_log, publish_log, poses = run.log("serve"), run.log("publish"), run.collector.poses
    assert run.procs["publish"].returncode == 0, publish_log
    sent = int(re.search(r"published (\d+) frames", publish_log).group(1))
    assert sent == FRAMES
    count = collections.Counter(msg["timestamp_ns"] for _, msg in poses)
    stamps = sorted(count)
    # 0 frames lost: one pose for each of the frames sent, contiguous at the publishing rate
    assert len(stamps) == sent and stamps == [stamps[0] + i * 10**9 // FPS for i in range(sent)]
    assert {msg["video_segment"] for _, msg in poses} == {SEGMENT}
    # a duplicate is the same message again: same timestamp_ns, same pose. A frame's pose is republished when
    # RabbitMQ redelivers the frame, and once more when the publisher re-sent the frame or the worker retried the
    # publish (docs/service.md, "Broker restart")
    first: dict[int, bytes] = {}
    for body, msg in poses:
        assert first.setdefault(msg["timestamp_ns"], body) == body
    assert max(count.values()) <= 3
    # both recovered: the publisher reconnected and went on, the worker reconnected and went on, and registered
    # each frame once
    assert "retrying" in publish_log and 0 < run.poses_before < len(poses)
    assert "connected to RabbitMQ (generation 2)" in serve_log and code == 0
    stats = re.search(r"stopped: ServiceStats\((.*?)\)", serve_log).group(1)
    assert f"registered={sent}," in stats and "rejected=0," in stats, stats
    print(f"frames sent {sent}, poses {len(poses)} ({len(poses) - sent} duplicates), {run.poses_before} before "
          f"the stop; worker: {stats}")
