"""Shared helpers of the service tests: a fake engine, a broker-side test harness on the real RabbitMQ, a private
RabbitMQ node a test may stop and start (the broker-free stand-ins, NullLink and PrecomputedEngine, live in
:mod:`slam3r.service.testing`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slam3r.recon.types import FrameResult
from slam3r.service.broker import delete_topology
from slam3r.service.config import ServiceConfig
from slam3r.service.encodings import decode_payload
from slam3r.service.testing import broker_available

URL = "amqp://guest:guest@127.0.0.1:5672/"

needs_broker = pytest.mark.skipif(not broker_available(URL), reason="no RabbitMQ on 127.0.0.1:5672")


class FakeEngine:
    """StreamEngine stand-in with the real one's delivery pattern: nothing until ``init`` frames arrived, then all of
    them, then results in pairs; ``flush`` returns the rest. Records every pushed timestamp."""

    def __init__(self, init: int = 5, size: int = 16) -> None:
        self.init, self.size = init, size
        self.pushed: list[int] = []
        self._held: list[tuple[int, np.ndarray, int]] = []
        self._n = 0
        self.resets = 0

    def _result(self, fid: int, rgb: np.ndarray, ts: int) -> FrameResult:
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
        world = np.stack([xx + 0.05 * fid, yy, np.full_like(xx, 2.0)], -1)
        pose = np.eye(4)
        pose[0, 3] = 0.05 * fid
        small = np.zeros((s, s, 3), np.uint8) + rgb[:1, :1]
        return FrameResult(fid, ts, small, world - pose[:3, 3], np.full((s, s), 5, np.float32), world,
                           np.full((s, s), 20.0, np.float32), pose, 100.0, is_keyframe=fid % 3 == 0)

    def push_many(self, rgbs: list[np.ndarray], timestamps: list[int | None] | None = None) -> list[FrameResult]:
        out = []
        for rgb, ts in zip(rgbs, timestamps or [None] * len(rgbs)):
            self.pushed.append(int(ts))
            self._held.append((self._n, rgb, int(ts)))
            self._n += 1
            if self._n >= self.init and len(self._held) >= (self.init if self._n == self.init else 2):
                out += [self._result(*h) for h in self._held]
                self._held = []
        return out

    def flush(self) -> list[FrameResult]:
        out = [self._result(*h) for h in self._held]
        self._held = []
        return out

    def reset(self) -> None:
        self._held, self._n = [], 0
        self.resets += 1


def textured_frames(n: int, h: int = 72, w: int = 96, seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct textured RGB frames (a sliding random texture)."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (h, w + n * 2, 3), dtype=np.uint8)
    return [np.ascontiguousarray(tex[:, 2 * i:2 * i + w]) for i in range(n)]


class Harness:
    """Unique exchange / queue names for one test, output capture queues, cleanup."""

    def __init__(self, encoding: str = "json") -> None:
        import pika

        self.prefix = f"t{uuid.uuid4().hex[:10]}-"
        self.cfg = ServiceConfig(rabbitmq_url=URL, name_prefix=self.prefix, reconnect_max_s=1.0,
                                 shutdown_timeout_s=20.0, decode_min_side=0, encoding=encoding)
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.ch = self.conn.channel()
        self.queues: dict[str, str] = {}
        for key, base in (("pose", self.cfg.pose_exchange), ("points", self.cfg.pointcloud_exchange),
                          ("vis", self.cfg.vis_exchange)):
            ex = self.cfg.name(base)
            self.ch.exchange_declare(ex, exchange_type="fanout", durable=True)
            q = self.ch.queue_declare("", exclusive=True).method.queue
            self.ch.queue_bind(q, ex)
            self.queues[key] = q
        self.received: dict[str, list[dict[str, Any]]] = {k: [] for k in self.queues}

    def collect(self, timeout: float = 0.5) -> None:
        """Move the messages waiting in the capture queues into :attr:`received` (decoded)."""
        deadline = time.monotonic() + timeout
        while True:
            got = 0
            for key, q in self.queues.items():
                while True:
                    method, props, body = self.ch.basic_get(q, auto_ack=True)
                    if method is None:
                        break
                    msg = decode_payload(body, props.content_type, props.content_encoding)
                    msg["_content_type"], msg["_content_encoding"] = props.content_type, props.content_encoding
                    self.received[key].append(msg)
                    got += 1
            if got == 0 and time.monotonic() >= deadline:
                return
            if got == 0:
                time.sleep(0.05)

    def wait_for(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got " +
                                     ", ".join(f"{k}: {len(v)}" for k, v in self.received.items()))
            self.collect(0.1)

    def publisher(self, **kwargs: Any):
        """A :class:`~slam3r.service.publish.FramePublisher` on this test's frames exchange (``kwargs`` go to it)."""
        from slam3r.service.publish import FramePublisher

        return FramePublisher(self.cfg.rabbitmq_url, self.cfg.name(self.cfg.frames_exchange), **kwargs)

    def ends(self) -> list[dict[str, Any]]:
        """The segment-end messages received on the vis exchange so far (see :meth:`collect`)."""
        return [m for m in self.received["vis"] if m.get("event") == "end"]

    def dead_letters(self) -> list[tuple[dict[str, Any], bytes]]:
        out = []
        q = self.cfg.name(self.cfg.dead_letter_queue)
        while True:
            method, props, body = self.ch.basic_get(q, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))

    def restart(self, body: bytes = b"", headers: dict[str, Any] | None = None) -> None:
        """Publish a restart message on this test's restart exchange."""
        import pika

        self.ch.basic_publish(self.cfg.name(self.cfg.restart_exchange), "", body,
                              pika.BasicProperties(content_type="application/json", headers=headers))

    def queue_depth(self, name: str) -> int:
        return self.ch.queue_declare(self.cfg.name(name), passive=True).method.message_count

    def close(self, workers: int = 3) -> None:
        """Delete this test's exchanges and queues (those of up to ``workers`` workers)."""
        try:
            delete_topology(self.ch, self.cfg, workers)
        finally:
            self.conn.close()


def queue_exists(name: str, url: str = URL) -> bool:
    """Whether queue ``name`` exists on the broker (a passive declare on a throwaway connection)."""
    return _declared("queue_declare", name, url)


def exchange_exists(name: str, url: str = URL) -> bool:
    """Whether exchange ``name`` exists on the broker (a passive declare on a throwaway connection)."""
    return _declared("exchange_declare", name, url)


def _declared(method: str, name: str, url: str) -> bool:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        getattr(conn.channel(), method)(name, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker:
        return False
    finally:
        if conn.is_open:
            conn.close()


def run_in_thread(service: Any) -> tuple[threading.Thread, list[int]]:
    """Start ``service.run()`` in a thread; the list receives its exit code."""
    code: list[int] = []
    t = threading.Thread(target=lambda: code.append(service.run()), daemon=True)
    t.start()
    return t, code


def close_broker_connection(name: str) -> None:
    """Close the connection whose ``connection_name`` client property is ``name`` from the broker side."""
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    pids = [line.split("\t")[0] for line in out.splitlines() if f'"{name}"' in line or f"<<\"{name}\">>" in line]
    assert pids, f"connection {name!r} not found in:\n{out}"
    for pid in pids:
        subprocess.run(["rabbitmqctl", "-q", "close_connection", pid, "test: simulated broker drop"], check=True,
                       capture_output=True, timeout=60)


def _rabbitmq_scripts() -> Path | None:
    """The directory of RabbitMQ's own start scripts (Debian's /usr/sbin ones are wrappers that switch to the
    ``rabbitmq`` user and log into the system broker's files), or None when RabbitMQ is not installed."""
    for d in (Path("/usr/lib/rabbitmq/bin"), Path(shutil.which("rabbitmq-server") or "/nonexistent").parent):
        if (d / "rabbitmq-server").is_file() and (d / "rabbitmqctl").is_file():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


needs_rabbitmq_server = pytest.mark.skipif(
    _rabbitmq_scripts() is None,
    reason="rabbitmq-server is not installed (apt-get install rabbitmq-server): the test stops and starts a "
           "private RabbitMQ node, never the shared broker")


class PrivateBroker:
    """A private RabbitMQ node that a test may stop and start: its own node name, AMQP and distribution ports,
    config, plugins file (none), Erlang cookie and data directory, all under ``root``. The shared broker on
    127.0.0.1:5672 is never touched. Use as a context manager (``close`` ends the node)."""

    def __init__(self, root: Path) -> None:
        self.scripts = _rabbitmq_scripts()
        assert self.scripts is not None, "rabbitmq-server is not installed"
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.node = f"slam3rtest{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n")
        (root / "rabbitmq-env.conf").write_text("")            # not the system's /etc/rabbitmq/rabbitmq-env.conf
        (root / "enabled_plugins").write_text("[].\n")
        cookie = root / ".erlang.cookie"                         # read by the node and by rabbitmqctl (HOME)
        cookie.write_text(uuid.uuid4().hex)
        cookie.chmod(0o400)
        self.env = {**os.environ, "HOME": str(root), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_DIST_PORT": str(_free_port()), "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
                    "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
                    "RABBITMQ_MNESIA_BASE": str(root / "mnesia"), "RABBITMQ_LOG_BASE": str(root / "log"),
                    "RABBITMQ_PID_FILE": str(root / "node.pid"), "ERL_EPMD_ADDRESS": "127.0.0.1",
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 1:1"}   # one scheduler: the CPUs are shared
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "PrivateBroker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        """Start the node (returns at once; :meth:`wait_up` waits for it)."""
        with open(self.root / "server.out", "ab") as out:
            self.proc = subprocess.Popen([str(self.scripts / "rabbitmq-server")], env=self.env, cwd=self.root,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def is_up(self) -> bool:
        """Whether the node accepts AMQP connections."""
        return broker_available(self.url)

    def wait_up(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_up():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"RabbitMQ node {self.node} exited ({self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"RabbitMQ node {self.node} not up after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl -n <node> args`` against this node; returns its stdout."""
        return subprocess.run([str(self.scripts / "rabbitmqctl"), "-n", self.node, *args], env=self.env,
                              check=True, capture_output=True, text=True, timeout=timeout).stdout

    def stop_app(self) -> None:
        """Stop RabbitMQ on the node (connections closed, listener gone, queues shut down; the Erlang VM stays);
        returns once the AMQP port refuses connections."""
        self.ctl("stop_app")
        assert not self.is_up()

    def start_app(self) -> None:
        """Start RabbitMQ again (same port, same data directory: durable queues and persistent messages are
        recovered from disk); returns once it accepts connections."""
        self.ctl("start_app")
        self.wait_up()

    def log_tail(self, n: int = 30) -> str:
        logs = sorted((self.root / "log").glob("*.log")) + [self.root / "server.out"]
        return "\n".join("\n".join(p.read_text(errors="replace").splitlines()[-n:]) for p in logs if p.exists())

    def close(self) -> None:
        """End the node (SIGTERM: a clean shutdown; SIGKILL after 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
