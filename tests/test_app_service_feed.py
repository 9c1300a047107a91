"""The app's RabbitMQ source: point-cloud and pose messages published in the service's format reach the preview."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from slam3r.app.preview import PreviewCloud
from slam3r.app.service_feed import ServiceFeed, connection_error_reason, message_points, without_credentials
from slam3r.recon.types import FrameResult
from slam3r.service.config import ServiceConfig
from slam3r.service.messages import Codec, decode_payload

URL = "amqp://guest:guest@127.0.0.1:5672/"


def frame(fid: int, n: int = 12) -> FrameResult:
    rng = np.random.default_rng(fid)
    pts = rng.normal(size=(n, n, 3)).astype(np.float32)
    pose = np.eye(4)
    pose[:3, 3] = [fid, 0, 0]
    return FrameResult(fid, 1000 * fid, rng.integers(0, 255, (n, n, 3), dtype=np.uint8), pts,
                       np.full((n, n), 5, np.float32), pts, np.full((n, n), 20, np.float32), pose, 50.0)


@pytest.mark.parametrize("encoding", ["json", "msgpack", "deployed"])
def test_message_points_every_encoding(encoding: str) -> None:
    r = frame(1)
    xyz, rgb, conf = r.points(1.0)
    payload = Codec(encoding).points(r, xyz, rgb, conf, "default", "seg")
    msg = decode_payload(payload.wire_body(), payload.content_type, payload.content_encoding)
    got_xyz, got_rgb = message_points(msg)
    np.testing.assert_allclose(got_xyz, xyz, atol=1e-4)
    if encoding == "deployed":  # the deployed rows carry no colour
        assert got_rgb.shape == rgb.shape and (got_rgb == 160).all()
    else:
        np.testing.assert_array_equal(got_rgb, rgb)


def test_message_points_refuses_other_row_widths() -> None:
    with pytest.raises(ValueError, match="point rows"):
        message_points({"points": [[1.0, 2.0, 3.0, 4.0]]})


def test_feed_receives_points_and_poses(tmp_path: Path) -> None:
    pika = pytest.importorskip("pika")
    try:
        pika.BlockingConnection(pika.URLParameters(URL + "?connection_attempts=1&socket_timeout=2")).close()
    except Exception:
        pytest.skip("no RabbitMQ on 127.0.0.1:5672")
    cfg = ServiceConfig(rabbitmq_url=URL, name_prefix=f"apptest-{uuid.uuid4().hex[:8]}.")
    feed = ServiceFeed(cfg, PreviewCloud(tmp_path, conf_thres=1.0))
    feed.start()
    conn = None
    try:
        assert feed.connected.wait(10), feed.error
        conn = pika.BlockingConnection(pika.URLParameters(URL))
        ch = conn.channel()
        codec = Codec("json")
        for fid in range(3):
            r = frame(fid)
            for exchange, payload in ((cfg.pointcloud_exchange, codec.points(r, *r.points(1.0), "default", "s")),
                                      (cfg.pose_exchange, codec.pose(r, "default", "s"))):
                ch.basic_publish(cfg.name(exchange), "", payload.wire_body(),
                                 pika.BasicProperties(content_type=payload.content_type,
                                                      content_encoding=payload.content_encoding))
        deadline = time.time() + 10
        while (feed.points_messages, feed.pose_messages) != (3, 3) and time.time() < deadline:
            time.sleep(0.05)
        assert (feed.points_messages, feed.pose_messages) == (3, 3)
        assert len(feed.preview) == 3 * 12 * 12
        np.testing.assert_allclose([c[0] for c in feed.preview.cameras], [0, 1, 2])
        assert Path(feed.snapshot()).stat().st_size > 0
    finally:
        feed.stop()
        feed.join(5)
        if conn is not None:
            ch = conn.channel()
            for base in (cfg.pointcloud_exchange, cfg.pose_exchange):
                ch.exchange_delete(cfg.name(base))
            conn.close()
    assert feed.error is None


def test_unreachable_broker_is_reported_without_credentials(tmp_path: Path) -> None:
    assert without_credentials("amqp://guest:secret@rabbit:5672/v") == "amqp://rabbit:5672/v"
    feed = ServiceFeed(ServiceConfig(rabbitmq_url="amqp://guest:secret@127.0.0.1:1/"), PreviewCloud(tmp_path, 1.0))
    feed.start()
    feed.join(30)
    assert not feed.is_alive() and not feed.connected.is_set()
    assert feed.error == "cannot connect to amqp://127.0.0.1:1/: connection refused (nothing listens on that host " \
        "and port)" and "secret" not in feed.error


def test_a_port_that_is_no_broker_is_reported_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import threading

    import slam3r.app.service_feed as sf

    monkeypatch.setattr(sf, "HANDSHAKE_TIMEOUT_S", 1.0)
    with socket.socket() as silent, socket.socket() as talker:  # one never answers, one answers in HTTP
        for s in (silent, talker):
            s.bind(("127.0.0.1", 0))
            s.listen()

        def answer_http() -> None:
            conn, _ = talker.accept()
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

        threading.Thread(target=answer_http, daemon=True).start()
        for sock, reason in ((silent, "no AMQP handshake within 1 s (is this a RabbitMQ port?)"),
                             (talker, "the server does not speak AMQP 0-9-1 (not a RabbitMQ port?)")):
            url = f"amqp://guest:guest@127.0.0.1:{sock.getsockname()[1]}/"
            feed = ServiceFeed(ServiceConfig(rabbitmq_url=url), PreviewCloud(tmp_path, 1.0))
            feed.start()
            feed.join(30)
            assert not feed.connected.is_set()
            assert feed.error == f"cannot connect to {without_credentials(url)}: {reason}"


def test_connection_error_reasons() -> None:
    import pika.exceptions as pe
    from pika.adapters.utils.connection_workflow import AMQPConnectorSocketConnectError

    assert connection_error_reason(pe.AMQPConnectionError(AMQPConnectorSocketConnectError(
        ConnectionRefusedError(111, "Connection refused")))) == "connection refused (nothing listens on that host " \
        "and port)"
    assert connection_error_reason(pe.ProbableAuthenticationError("403")).startswith("login refused")
    assert connection_error_reason(pe.ProbableAccessDeniedError("530")).startswith("access refused")
    assert connection_error_reason(OSError(113, "No route to host")) == "No route to host"
    assert connection_error_reason(pe.AMQPConnectionError()) == "AMQPConnectionError"  # never an empty reason
    assert connection_error_reason(RuntimeError("boom")) == "RuntimeError: boom"
