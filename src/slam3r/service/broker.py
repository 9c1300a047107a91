"""The service's AMQP link: one thread owns the pika connection (pika is not thread-safe).

It declares the topology, consumes the frame and restart queues into a bounded in-memory inbox, and executes the
*outbox* the worker fills: publishes (with publisher confirms) and acknowledgements, strictly in order, so a frame
is acknowledged only after its outputs were confirmed by the broker.

Failure handling: any connection / channel error closes the connection and reconnects with exponential backoff
(0.5 s doubling to ``reconnect_max_s``, with jitter). Every connection has a new *generation*: deliveries carry the
generation they came with, and acknowledgements of an older generation are dropped (RabbitMQ has already requeued
those frames and will redeliver them). Publishes still in the outbox are retried on the new connection, so outputs
are delivered at least once (a frame processed just before a drop can be published twice). Outputs are persistent,
so a consumer's durable queue keeps them across a broker restart.

Topology (all names prefixed with ``name_prefix``; exchanges durable, queues durable):

* one worker (``num_workers == 1``): ``frames_exchange`` (fanout) -> ``frames_queue``, the deployed layout;
* ``num_workers > 1`` (processes or hosts): ``frames_exchange`` -> ``<frames_queue>.intake``, a
  single-active-consumer queue: exactly one worker at a time (the *router*) moves each frame, with publisher
  confirms and only then acknowledging it, to the direct exchange ``<frames_exchange>.shards`` under the routing
  key ``crc32(stream_id) % shards``; each key has its queue ``<frames_queue>.shard<k>``, also
  single-active-consumer. Every worker subscribes to every shard queue (its own, ``k % num_workers ==
  worker_index``, first; the others after ``standby_delay_s``), and RabbitMQ delivers each shard to one of them at
  a time: a stream is reconstructed by one worker, and when that worker dies its unacknowledged frames are
  requeued and the shard's next consumer takes over. The single-worker queue is unbound from the frame exchange
  (and vice versa), so a queue nobody reads never fills;
* ``restart_exchange`` -> ``restart_queue`` (``<restart_queue>.w<i>`` per worker when there are several),
  ``dead_letter_exchange -> dead_letter_queue``, and the fanout output exchanges.

Prefetch is channel-wide (``global_qos``) and can be raised at run time with :meth:`BrokerLink.set_prefetch`
(RabbitMQ applies a new channel-wide limit immediately).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from slam3r.service.config import ServiceConfig
from slam3r.service.encodings.base import Payload

log = logging.getLogger(__name__)


@dataclass
class Delivery:
    """A message received from the frame or restart queue."""

    source: Literal["frames", "restart"]
    generation: int
    tag: int
    body: bytes
    headers: dict[str, Any]
    content_type: str | None = None
    redelivered: bool = False
    queue: str = ""
    """The queue it came from (a shard queue with several workers)."""


@dataclass
class Outgoing:
    """A message to publish on ``exchange`` (the full broker-side name). Every output is persistent: a consumer's
    durable queue keeps it across a broker restart (a non-durable queue never writes it to disk)."""

    exchange: str
    payload: Payload
    headers: dict[str, Any] | None = None


@dataclass
class Settle:
    """Acknowledge (or, with ``requeue``, return to the queue) the delivery ``tag`` of ``generation``."""

    generation: int
    tag: int
    requeue: bool = False


class FatalBrokerError(RuntimeError):
    """The broker refused the topology (e.g. an existing queue declared with other arguments)."""


def queue_names(cfg: ServiceConfig) -> tuple[str, str]:
    """(frames queue, restart queue) of this worker (with several workers, the frames queue is the intake)."""
    if cfg.num_workers > 1:
        return cfg.name(cfg.frames_queue) + ".intake", cfg.name(cfg.restart_queue) + f".w{cfg.worker_index}"
    return cfg.name(cfg.frames_queue), cfg.name(cfg.restart_queue)


def shard_queue(cfg: ServiceConfig, k: int) -> str:
    return cfg.name(cfg.frames_queue) + f".shard{k}"


def shard_exchange(cfg: ServiceConfig) -> str:
    return cfg.name(cfg.frames_exchange) + ".shards"


def shard_of(cfg: ServiceConfig, headers: dict[str, Any] | None) -> int:
    """The shard of a frame message (its ``stream_id`` header; malformed ones go to their own shard too, where the
    owner dead-letters them)."""
    value = (headers or {}).get(cfg.stream_header, cfg.default_stream)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return zlib.crc32(text.encode()) % cfg.shards


def delete_topology(ch: Any, cfg: ServiceConfig, workers: int = 1) -> None:
    """Delete, on the pika channel ``ch``, every exchange and queue that workers ``0 .. workers - 1`` of a
    ``workers``-worker deployment with ``cfg``'s names (prefix included) declare; missing ones are no error. For
    test and bench runs on a shared broker, which must leave nothing behind."""
    names = {cfg.name(cfg.frames_queue), cfg.name(cfg.restart_queue), cfg.name(cfg.dead_letter_queue)}
    for i in range(workers):
        names.update(queue_names(dataclasses.replace(cfg, worker_index=i, num_workers=workers)))
    names.update(shard_queue(cfg, k) for k in range(cfg.shards))
    for name in sorted(names):
        ch.queue_delete(name)
    for base in (cfg.frames_exchange, cfg.restart_exchange, cfg.dead_letter_exchange, cfg.pose_exchange,
                 cfg.pointcloud_exchange, cfg.vis_exchange):
        ch.exchange_delete(cfg.name(base))
    ch.exchange_delete(shard_exchange(cfg))


_SAC = {"x-single-active-consumer": True}


def connection_name(cfg: ServiceConfig) -> str:
    """The ``connection_name`` client property of this worker (shown by ``rabbitmqctl list_connections``)."""
    return f"slam3r-serve-{cfg.name_prefix}w{cfg.worker_index}"


class BrokerLink(threading.Thread):
    """Owns the AMQP connection (see module docstring). Thread-safe methods: :meth:`send`, :meth:`set_prefetch`,
    :meth:`stop_consuming`, :meth:`close`; the worker reads deliveries from :attr:`inbox`."""

    def __init__(self, cfg: ServiceConfig, consume: bool = True) -> None:
        super().__init__(name="slam3r-amqp", daemon=True)
        self.cfg = cfg
        self.inbox: queue.Queue[Delivery] = queue.Queue(maxsize=cfg.max_in_flight + cfg.prefetch)
        self.generation = 0
        self.connected = threading.Event()
        self.fatal: BaseException | None = None
        self.reconnects = 0
        self._consume = consume
        self._outbox: deque[Outgoing | Settle] = deque()
        self._prefetch = cfg.prefetch
        self._applied_prefetch = 0
        self._stop_consuming = threading.Event()
        self._closing = threading.Event()
        self._close_deadline = float("inf")
        self._conn: Any = None
        self._consumer_tags: list[str] = []
        self._later: list[tuple[float, str, str]] = []

    # ------------------------------------------------------------------ called from other threads

    def send(self, items: list[Outgoing | Settle]) -> None:
        """Queue publishes / acknowledgements, executed in order by the link thread."""
        if items:
            self._outbox.extend(items)
            self._wake()

    def set_prefetch(self, n: int) -> None:
        """Channel-wide prefetch to apply (clamped to [cfg.prefetch, cfg.max_in_flight])."""
        n = max(self.cfg.prefetch, min(self.cfg.max_in_flight, n))
        if n != self._prefetch:
            self._prefetch = n
            self._wake()

    def stop_consuming(self) -> None:
        """Cancel the consumers (no new deliveries; those already received stay unacknowledged until settled)."""
        self._stop_consuming.set()
        self._wake()

    def close(self, timeout: float) -> None:
        """Execute what is left in the outbox (for up to ``timeout`` s), close the connection, end the thread."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake()
        self.join(timeout + 10)

    def outbox_size(self) -> int:
        return len(self._outbox)

    def _wake(self) -> None:
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(lambda: None)
            except Exception:  # connection closing: the loop notices by itself
                pass

    # ------------------------------------------------------------------ link thread

    def run(self) -> None:
        import pika.exceptions

        backoff = 0.5
        while not self._closing.is_set() or (self._outbox and time.monotonic() < self._close_deadline):
            try:
                self._connect()
                backoff = 0.5
                self._serve()
                return
            except FatalBrokerError as exc:
                self.fatal = exc
                log.error("%s", exc)
                return
            except Exception as exc:  # any failure of the link: start over on a new connection
                self.connected.clear()
                self._drop_connection()
                expected = isinstance(exc, (pika.exceptions.AMQPError, OSError))
                log.warning("broker connection lost (%s: %s); reconnecting in %.1f s", type(exc).__name__, exc,
                            backoff, exc_info=not expected)
            if self._closing.is_set():
                if not self._outbox:
                    break
                time.sleep(min(backoff, max(0.0, self._close_deadline - time.monotonic())))
            else:
                self._closing.wait(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)
            self.reconnects += 1
        self._drop_connection()

    def _connect(self) -> None:
        import pika
        import pika.exceptions

        params = pika.URLParameters(self.cfg.rabbitmq_url)
        params.heartbeat = 30
        params.blocked_connection_timeout = 60
        params.client_properties = {"connection_name": connection_name(self.cfg)}
        conn = pika.BlockingConnection(params)
        self.generation += 1
        self._conn = conn
        try:
            ch = conn.channel()
            pub = conn.channel()
            pub.confirm_delivery()
            self._declare(ch)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._drop_connection()
            raise FatalBrokerError(f"RabbitMQ refused the service's exchanges/queues: {exc.reply_text} "
                                   "(delete or rename the conflicting ones, or set SLAM3R_NAME_PREFIX)") from None
        self._ch, self._pub = ch, pub
        self._applied_prefetch = 0
        self._consumer_tags = []
        self._apply_prefetch()
        self._later = []
        if self._consume and not self._stop_consuming.is_set():
            now = time.monotonic()
            self._later = [(now + delay, source, qname) for source, qname, delay in self._subscriptions()]
            self._subscribe_due()
        self.connected.set()
        log.info("connected to RabbitMQ (generation %d)", self.generation)

    def _declare(self, ch: Any) -> None:
        cfg = self.cfg
        frames_q, restart_q = queue_names(cfg)
        for base in (cfg.pose_exchange, cfg.pointcloud_exchange, cfg.vis_exchange):
            ch.exchange_declare(cfg.name(base), exchange_type="fanout", durable=True)
        sharded = cfg.num_workers > 1
        for exchange, qname, args in (
                (cfg.name(cfg.frames_exchange), frames_q, _SAC if sharded else None),
                (cfg.name(cfg.restart_exchange), restart_q, None),
                (cfg.name(cfg.dead_letter_exchange), cfg.name(cfg.dead_letter_queue), None)):
            ch.exchange_declare(exchange, exchange_type="fanout", durable=True)
            ch.queue_declare(qname, durable=True, arguments=args)
            ch.queue_bind(qname, exchange)
        if sharded:
            ch.exchange_declare(shard_exchange(cfg), exchange_type="direct", durable=True)
            for k in range(cfg.shards):
                ch.queue_declare(shard_queue(cfg, k), durable=True, arguments=_SAC)
                ch.queue_bind(shard_queue(cfg, k), shard_exchange(cfg), routing_key=str(k))
        other = cfg.name(cfg.frames_queue) if sharded else cfg.name(cfg.frames_queue) + ".intake"
        self._unbind_if_present(other, cfg.name(cfg.frames_exchange))

    def _unbind_if_present(self, qname: str, exchange: str) -> None:
        """Unbind the other topology's frame queue (left by an earlier run) so it does not fill unread."""
        import pika.exceptions

        probe = self._conn.channel()
        pika_log = logging.getLogger("pika.channel")
        level = pika_log.level
        pika_log.setLevel(logging.ERROR)               # a missing queue is the normal case, not a warning
        try:
            depth = probe.queue_declare(qname, passive=True).method.message_count
            probe.queue_unbind(qname, exchange)
            log.warning("unbound queue %s from %s (left by a run with another worker count; %d message(s) in it: "
                        "delete it or drain it with a run of that kind)", qname, exchange, depth)
        except pika.exceptions.ChannelClosedByBroker:
            return                                   # not there: nothing to do
        finally:
            pika_log.setLevel(level)
        if probe.is_open:
            probe.close()

    def _subscriptions(self) -> list[tuple[str, str, float]]:
        """(source, queue, delay s) this worker consumes."""
        cfg = self.cfg
        frames_q, restart_q = queue_names(cfg)
        if cfg.num_workers == 1:
            return [("frames", frames_q, 0.0), ("restart", restart_q, 0.0)]
        subs = [("intake", frames_q, 0.0), ("restart", restart_q, 0.0)]
        for k in range(cfg.shards):
            own = k % cfg.num_workers == cfg.worker_index
            subs.append(("frames", shard_queue(cfg, k), 0.0 if own else cfg.standby_delay_s))
        return subs

    def _subscribe_due(self) -> None:
        """Start the consumers whose delay has passed."""
        now = time.monotonic()
        due = [s for s in self._later if s[0] <= now]
        self._later = [s for s in self._later if s[0] > now]
        for _, source, qname in due:
            callback = self._route if source == "intake" else self._on_message(source, self.generation, qname)
            self._consumer_tags.append(self._ch.basic_consume(qname, callback))

    def _route(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        """Router: move an intake frame to its shard queue (persistent, confirmed), then acknowledge it."""
        import pika

        out = pika.BasicProperties(content_type=props.content_type, headers=props.headers, delivery_mode=2)
        self._pub.basic_publish(shard_exchange(self.cfg), str(shard_of(self.cfg, props.headers)), body, out)
        ch.basic_ack(method.delivery_tag)

    def _on_message(self, source: Literal["frames", "restart"], generation: int, qname: str) -> Any:
        def callback(ch: Any, method: Any, props: Any, body: bytes) -> None:
            d = Delivery(source, generation, method.delivery_tag, body, dict(props.headers or {}),
                         props.content_type, bool(method.redelivered), qname)
            try:
                self.inbox.put_nowait(d)
            except queue.Full:           # cannot happen while prefetch <= inbox size; never drop a frame
                ch.basic_nack(method.delivery_tag, requeue=True)
        return callback

    def _apply_prefetch(self) -> None:
        if self._prefetch != self._applied_prefetch:
            self._ch.basic_qos(prefetch_count=self._prefetch, global_qos=True)
            self._applied_prefetch = self._prefetch

    def _serve(self) -> None:
        while True:
            self._conn.process_data_events(time_limit=0.2)
            self._drain()
            self._apply_prefetch()
            if self._stop_consuming.is_set():
                self._later = []
                for tag in self._consumer_tags:
                    self._ch.basic_cancel(tag)
                self._consumer_tags = []
            elif self._later:
                self._subscribe_due()
            if self._closing.is_set() and (not self._outbox or time.monotonic() >= self._close_deadline):
                if self._outbox:
                    log.warning("closing with %d unsent outbox item(s); unacknowledged frames will be redelivered",
                                len(self._outbox))
                self._drop_connection()
                return

    def _drain(self) -> None:
        import pika

        while self._outbox:
            item = self._outbox[0]
            if isinstance(item, Settle):
                if item.generation == self.generation:
                    if item.requeue:
                        self._ch.basic_nack(item.tag, requeue=True)
                    else:
                        self._ch.basic_ack(item.tag)
            else:
                p = item.payload
                props = pika.BasicProperties(content_type=p.content_type, content_encoding=p.content_encoding,
                                             headers=item.headers, delivery_mode=2)
                self._pub.basic_publish(item.exchange, "", p.wire_body(), props)
            self._outbox.popleft()          # only once done: a failure leaves it for the next connection

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self.connected.clear()
        if conn is not None:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:  # already broken; nothing more to release
                pass
