"""Stand-ins for running the worker without a broker or networks (unit tests and ``bench/bench_service.py``).

* :class:`NullLink` replaces :class:`~slam3r.service.broker.BrokerLink`: it keeps what the worker would publish and
  acknowledge, and :meth:`NullLink.delivery` makes the deliveries to hand to :meth:`Service.handle
  <slam3r.service.worker.Service.handle>`;
* :class:`PrecomputedEngine` (a :class:`~slam3r.service.stream.StreamEngine`) returns the next precomputed
  :class:`~slam3r.recon.types.FrameResult` for every pushed frame (optionally holding the first ``init`` frames
  back, as the real engine does), and
  :func:`room_results` computes realistic ones (a camera turning in a box room).
"""

from __future__ import annotations

import dataclasses
import queue
from typing import Any

import numpy as np

from slam3r.recon.types import FrameResult
from slam3r.service.broker import Delivery, Outgoing, Settle
from slam3r.service.encodings import decode_payload


def broker_available(url: str = "amqp://guest:guest@127.0.0.1:5672/") -> bool:
    """Whether a RabbitMQ broker answers at ``url`` (one attempt, 2 s timeout): the one probe of tests and benches."""
    import pika

    sep = "&" if "?" in url else "?"
    try:
        pika.BlockingConnection(pika.URLParameters(url + sep + "connection_attempts=1&socket_timeout=2")).close()
        return True
    except Exception:  # any failure means: no usable broker
        return False


class NullLink:
    """Records the worker's outbox: :attr:`published` (``Outgoing``) and :attr:`settled` (delivery tags)."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[Delivery] = queue.Queue()
        self.published: list[Outgoing] = []
        self.settled: list[int] = []
        self.prefetch = 0
        self._tag = 0
        self.fatal = None

    def send(self, items: list[Outgoing | Settle]) -> None:
        for item in items:
            if isinstance(item, Settle):
                self.settled.append(item.tag)
            else:
                self.published.append(item)

    def set_prefetch(self, n: int) -> None:
        self.prefetch = n

    def delivery(self, body: bytes, headers: dict[str, Any], source: str = "frames",
                 redelivered: bool = False) -> Delivery:
        """A new delivery (unique tag, generation 1)."""
        self._tag += 1
        return Delivery(source, 1, self._tag, body, dict(headers), None, redelivered)  # type: ignore[arg-type]

    def messages(self, exchange: str) -> list[dict[str, Any]]:
        """The decoded messages published on ``exchange`` (full broker-side name), in order."""
        return [decode_payload(o.payload.wire_body(), o.payload.content_type, o.payload.content_encoding)
                for o in self.published if o.exchange == exchange and o.headers is None]

    def dead_letters(self, exchange: str) -> list[dict[str, Any]]:
        """Headers of the messages dead-lettered on ``exchange``."""
        return [dict(o.headers) for o in self.published if o.exchange == exchange and o.headers is not None]


class PrecomputedEngine:
    """Returns the next of ``results`` (cycled) for every pushed frame, with the pushed timestamp; the first
    ``init`` frames of a reconstruction are held back until the ``init``-th arrives (``flush`` with fewer than
    ``min_frames`` raises, like the real engine's "not enough frames to initialise")."""

    def __init__(self, results: list[FrameResult], init: int = 1, min_frames: int = 1) -> None:
        self.results, self.init, self.min_frames = results, init, min_frames
        self.n = 0
        self.pushed: list[int | None] = []
        self._held: list[int | None] = []

    def _next(self, ts: int | None) -> FrameResult:
        r = self.results[self.n % len(self.results)]
        self.n += 1
        return dataclasses.replace(r, frame_id=self.n - 1, timestamp_ns=ts)

    def push_many(self, rgbs: list[np.ndarray], timestamps: list[int | None] | None = None) -> list[FrameResult]:
        stamps = list(timestamps or [None] * len(rgbs))
        self.pushed += stamps
        self._held += stamps
        if self.n == 0 and len(self._held) < self.init:
            return []
        out = [self._next(ts) for ts in self._held]
        self._held = []
        return out

    def flush(self) -> list[FrameResult]:
        if self._held and self.n == 0 and len(self._held) < self.min_frames:
            raise ValueError(f"not enough frames to initialise: {len(self._held)} frame(s)")
        out = [self._next(ts) for ts in self._held]
        self._held = []
        return out

    def reset(self) -> None:
        self.n, self._held = 0, []


def room_results(n: int, size: int = 224, seed: int = 0) -> list[FrameResult]:
    """``n`` FrameResults (``size`` x ``size`` maps) of a camera turning at the centre of a 4 x 2.5 x 3 box room."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    f = 200.0 * size / 224
    rays = np.stack([(u - size / 2) / f, (v - size / 2) / f, np.ones_like(u)], -1)
    half = np.array([2.0, 1.25, 1.5])
    out = []
    for i in range(n):
        yaw = 2 * np.pi * i / 120
        rot = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
        d = rays @ rot.T
        t = np.min(half / np.maximum(np.abs(d), 1e-9), axis=-1, keepdims=True)
        world = (d * t + rng.normal(0, 0.003, d.shape)).astype(np.float32)
        pose = np.eye(4)
        pose[:3, :3] = rot
        conf = (1 + np.exp(rng.normal(2.5, 1.0, (size, size)))).astype(np.float32)
        rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        out.append(FrameResult(i, None, rgb, (rays * t).astype(np.float32), conf, world, conf, pose, f,
                               is_keyframe=i % 5 == 0))
    return out
