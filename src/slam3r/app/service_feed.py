"""The RabbitMQ service as a live source for the page: subscribe to its point-cloud and pose exchanges (a private
auto-deleted queue on each fanout exchange) and feed what arrives into a :class:`PreviewCloud`."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from slam3r.app.preview import PreviewCloud
from slam3r.service.config import ServiceConfig
from slam3r.service.messages import decode_payload

log = logging.getLogger(__name__)


def without_credentials(url: str) -> str:
    """``amqp://user:pass@host:5672/vhost`` -> ``amqp://host:5672/vhost``, for messages shown in the page."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


HANDSHAKE_TIMEOUT_S = 5.0
"""How long the feed waits for a broker's AMQP handshake (a port that accepts but is no broker fails after this)."""


def connection_error_reason(exc: BaseException, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> str:
    """A readable reason for a failed AMQP connection (pika nests the cause in ``args``; its own text is often
    empty)."""
    import pika.exceptions as pe
    from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

    if isinstance(exc, AMQPConnectorStackTimeout):
        return f"no AMQP handshake within {timeout_s:g} s (is this a RabbitMQ port?)"
    if isinstance(exc, pe.IncompatibleProtocolError):
        return "the server does not speak AMQP 0-9-1 (not a RabbitMQ port?)"
    if isinstance(exc, pe.ProbableAuthenticationError):
        return "login refused: check the user name and password in the URL"
    if isinstance(exc, pe.ProbableAccessDeniedError):
        return "access refused: the virtual host does not exist or the user may not use it"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that host and port)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    # wrapped causes, e.g. AMQPConnectionError(AMQPConnectorSocketConnectError(exception=OSError))
    for arg in (*exc.args, getattr(exc, "exception", None)):
        if isinstance(arg, BaseException):
            return connection_error_reason(arg, timeout_s)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def message_points(msg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """xyz ``(N, 3)`` float32 and rgb ``(N, 3)`` uint8 of a decoded point-cloud message: JSON rows
    ``[x, y, z, r, g, b]`` (the rich profile), ``[x, y, z]`` (the deployed profile: no colour, shown grey) or msgpack
    ``xyz`` / ``rgb`` arrays."""
    if "xyz" in msg:
        return np.asarray(msg["xyz"], np.float32).reshape(-1, 3), np.asarray(msg["rgb"], np.uint8).reshape(-1, 3)
    rows = np.asarray(msg.get("points") or np.zeros((0, 6)), np.float64)
    if rows.ndim != 2 or rows.shape[1] not in (3, 6):
        raise ValueError(f"point rows must be [x, y, z] or [x, y, z, r, g, b], got shape {rows.shape}")
    rgb = np.clip(rows[:, 3:], 0, 255).astype(np.uint8) if rows.shape[1] == 6 else \
        np.full((len(rows), 3), 160, np.uint8)
    return rows[:, :3].astype(np.float32), rgb


class ServiceFeed(threading.Thread):
    """Consumes ``cfg``'s point-cloud and pose exchanges until :meth:`stop`; counts and previews what arrives.
    ``connected`` is set once both queues are declared, bound and consumed (messages published from then on are
    received); ``error`` holds the reason if the connection failed or dropped."""

    def __init__(self, cfg: ServiceConfig, preview: PreviewCloud) -> None:
        super().__init__(name="slam3r-service-feed", daemon=True)
        self.cfg, self.preview = cfg, preview
        self.points_messages = self.pose_messages = 0
        self.error: str | None = None
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stopping.set()

    def _on_points(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        xyz, rgb = message_points(decode_payload(body, props.content_type, props.content_encoding))
        with self._lock:
            self.preview.add_points(xyz, rgb)
            self.points_messages += 1

    def _on_pose(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        msg = decode_payload(body, props.content_type, props.content_encoding)
        with self._lock:
            self.preview.add_camera(np.asarray(msg["raw_pose_matrix"], np.float64))
            self.pose_messages += 1

    def snapshot(self) -> str:
        """Write the preview cloud received so far; returns the GLB path."""
        with self._lock:
            return str(self.preview.snapshot())

    def run(self) -> None:
        import pika

        params = pika.URLParameters(self.cfg.rabbitmq_url)
        params.connection_attempts, params.socket_timeout = 1, HANDSHAKE_TIMEOUT_S
        params.stack_timeout = HANDSHAKE_TIMEOUT_S
        try:
            conn = pika.BlockingConnection(params)
        except Exception as exc:  # noqa: BLE001 - any failure to connect is reported in the page
            self.error = (f"cannot connect to {without_credentials(self.cfg.rabbitmq_url)}: "
                          f"{connection_error_reason(exc, HANDSHAKE_TIMEOUT_S)}")
            return
        try:
            ch = conn.channel()
            for base, callback in ((self.cfg.pointcloud_exchange, self._on_points),
                                   (self.cfg.pose_exchange, self._on_pose)):
                exchange = self.cfg.name(base)
                ch.exchange_declare(exchange, exchange_type="fanout", durable=True)  # as the service declares it
                queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
                ch.queue_bind(queue, exchange)
                ch.basic_consume(queue, callback, auto_ack=True)
            self.connected.set()
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=0.2)
        except Exception as exc:  # noqa: BLE001 - a dropped connection / bad message ends the feed, with a reason
            log.exception("service feed failed")
            self.error = f"connection to {without_credentials(self.cfg.rabbitmq_url)} lost: " + \
                connection_error_reason(exc)
        finally:
            if conn.is_open:
                conn.close()
