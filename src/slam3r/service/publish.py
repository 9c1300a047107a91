"""``slam3r publish``: stream a video, an image folder or a camera into the RabbitMQ frame exchange.

Each frame is sent as a JPEG with the headers the service expects (``timestamp_ns``, ``video_segment`` and, when
given, ``stream_id``), with publisher confirms; at the end an ``end_of_segment`` marker makes the service flush and
save the segment.

Frames are *persistent* (``delivery_mode=2``): the durable frame queue then keeps them on disk, so frames waiting
for the worker survive a broker restart (transient ones are lost with it). A publish the broker does not confirm
(connection lost) is retried on a new connection: the frame may then arrive twice, with the same
``timestamp_ns``, and the service registers it once (docs/service.md, "Broker restart").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="video file, image folder, camera index (0) or stream URL")
    parser.add_argument("--fps", type=float, default=None,
                        help="frames per second to publish: videos are subsampled to it and every source is paced "
                             "to it (default: the video's own rate; 10 for image folders)")
    parser.add_argument("--segment", default=None, help="video_segment header (default: <source name>-<time>)")
    parser.add_argument("--stream-id", default=None, help="stream_id header (default: none, the service's default)")
    parser.add_argument("--url", default=None, help=f"broker URL (default: $RABBITMQ_URL or {DEFAULT_URL})")
    parser.add_argument("--exchange", default="video_frames_exchange", help="frame exchange name")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality (default: 90)")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--no-end-marker", action="store_true", help="do not send the end_of_segment marker")
    parser.add_argument("--retry", type=float, default=60.0,
                        help="seconds to keep retrying when the broker connection is lost (default: 60)")


class FramePublisher:
    """Publishes encoded frames to a fanout exchange with publisher confirms (a context manager)."""

    def __init__(self, url: str, exchange: str = "video_frames_exchange", retry_s: float = 0.0) -> None:
        import pika

        self._pika = pika
        self.url, self.exchange, self.retry_s = url, exchange, retry_s
        self.connection_name = f"slam3r-publish-{os.getpid()}-{id(self):x}"
        """Shown by ``rabbitmqctl list_connections``."""
        self.resent = 0
        self._connect()

    def _connect(self) -> None:
        params = self._pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.connection_name}
        self.conn = self._pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.ch.exchange_declare(self.exchange, exchange_type="fanout", durable=True)
        self.ch.confirm_delivery()

    def __enter__(self) -> "FramePublisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def publish(self, body: bytes, headers: dict[str, Any]) -> None:
        """Publish one persistent message and wait for the broker's confirm; raises
        ``pika.exceptions.UnroutableError`` if no queue is bound (service down). A lost connection is retried
        (reconnecting every second) for up to ``retry_s`` seconds, then raised."""
        exc = self._pika.exceptions
        props = self._pika.BasicProperties(content_type="image/jpeg" if body[:2] == b"\xff\xd8" else "image/png",
                                           headers=headers, delivery_mode=2)
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                if not self.conn.is_open:
                    self._connect()
                    self.resent += 1
                self.ch.basic_publish(self.exchange, "", body, props, mandatory=True)
                return
            except (exc.AMQPConnectionError, exc.ChannelWrongStateError, exc.StreamLostError,
                    exc.ConnectionClosedByBroker, ConnectionError) as err:
                if time.monotonic() >= deadline:
                    raise
                print(f"slam3r publish: broker connection lost ({type(err).__name__}); retrying", file=sys.stderr)
                self._drop()
                time.sleep(1.0)

    def _drop(self) -> None:
        try:
            if self.conn.is_open:
                self.conn.close()
        except Exception:  # already broken
            pass

    def frame(self, rgb: np.ndarray, timestamp_ns: int, segment: str, stream_id: str | None = None,
              quality: int = 90) -> None:
        """JPEG-encode and publish an ``(H, W, 3)`` uint8 RGB frame."""
        headers: dict[str, Any] = {"timestamp_ns": int(timestamp_ns), "video_segment": segment}
        if stream_id is not None:
            headers["stream_id"] = stream_id
        self.publish(encode_jpeg(rgb, quality), headers)

    def end_segment(self, segment: str, stream_id: str | None = None) -> None:
        """Send the end-of-segment marker."""
        headers: dict[str, Any] = {"video_segment": segment, "end_of_segment": True}
        if stream_id is not None:
            headers["stream_id"] = stream_id
        self.publish(b"", headers)

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def publish_stream(pub: FramePublisher, frames: Iterable[tuple[np.ndarray, int | None]], segment: str,
                   stream_id: str | None = None, fps: float | None = None, quality: int = 90,
                   max_frames: int | None = None, end_marker: bool = True) -> int:
    """Publish ``(rgb, timestamp_ns | None)`` frames, paced to ``fps`` when given; returns the number sent.

    Timestamps are the wall clock at the start plus the source's own timestamp (or ``i / fps``), so they are
    unique and increasing within the segment.
    """
    t0_wall, t0 = time.time_ns(), time.monotonic()
    period = 1.0 / fps if fps else 0.0
    sent = 0
    for rgb, ts in frames:
        if max_frames is not None and sent >= max_frames:
            break
        if period:
            delay = t0 + sent * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        offset = ts if ts is not None else int(sent * (period or 0.1) * 1e9)
        pub.frame(rgb, t0_wall + offset, segment, stream_id, quality)
        sent += 1
    if end_marker:
        pub.end_segment(segment, stream_id)
    return sent


def run(args: argparse.Namespace) -> int:
    import pika.exceptions

    from slam3r.data.sources import VideoSource, open_source
    from slam3r.service.config import mask_url

    url = args.url or os.environ.get("RABBITMQ_URL", DEFAULT_URL)
    try:
        # on an image folder --fps is the publishing rate, not a subsampling of the (timeless) images
        source = open_source(args.source, fps=None if Path(str(args.source)).is_dir() else args.fps)
    except (FileNotFoundError, ValueError) as exc:
        print(f"slam3r publish: error: {exc}", file=sys.stderr)
        return 2
    fps = args.fps
    if fps is None:
        fps = source.native_fps if isinstance(source, VideoSource) and source.native_fps > 0 else None
        fps = fps or (10.0 if Path(str(args.source)).is_dir() else None)
    segment = args.segment or f"{Path(str(args.source)).stem or 'camera'}-{time.strftime('%Y%m%dT%H%M%S')}"
    try:
        with FramePublisher(url, args.exchange, retry_s=args.retry) as pub:
            n = publish_stream(pub, ((rgb, ts) for _, rgb, ts in source), segment, args.stream_id, fps,
                               args.quality, args.max_frames, not args.no_end_marker)
    except pika.exceptions.UnroutableError:
        print(f"slam3r publish: error: no queue is bound to exchange {args.exchange!r} (is `slam3r serve` running?)",
              file=sys.stderr)
        return 1
    except pika.exceptions.AMQPError as exc:
        print(f"slam3r publish: error: broker error at {mask_url(url)}: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"published {n} frames of segment {segment!r} to {args.exchange} at {mask_url(url)}")
    return 0
