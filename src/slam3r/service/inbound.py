"""Parsing what the service receives: frame messages (headers, then the image) and restart messages.

Frame message (``video_frames_exchange``): body = one encoded JPEG or PNG image; headers

* ``timestamp_ns`` (required): integer capture time in ns (an integer string is accepted, as the deployment's
  producers send it); frames are identified by (stream, segment, ``timestamp_ns``), so a redelivered frame is
  recognised;
* ``video_segment`` (optional): segment name; a new value ends the previous segment of the stream. A stream sent
  without it (the phone server, the simulator's single-video mode) is one implicit segment, internally ``""``;
* ``stream_id`` (optional, header name configurable): which camera / drone; default ``"default"``;
* ``end_of_segment`` (optional, true): the message is an end marker for its segment (body ignored).

Other headers (``width``, ``ntp_time``, ...) are ignored. Anything unusable (empty / undecodable body, an image
over ``max_pixels``, mistyped headers) raises :class:`RejectedMessage`, whose ``reason`` the service puts in the
``x-reject-reason`` header of the dead-lettered copy.

Restart message (``restart_exchange``): any body (the deployment sends ``{"type": "restart"}``); a ``stream_id``
header, or a ``stream_id`` field of a JSON body, restricts it to that stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_NAME = 200
MIN_SIDE = 32
"""Frames with a shorter side are rejected: no usable detail, most likely a broken producer."""
IMPLICIT_SEGMENT = ""
"""Segment of the frames sent without a ``video_segment`` header."""


class RejectedMessage(ValueError):
    """A message the service cannot process; ``reason`` explains why (sent as ``x-reject-reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FrameHeader:
    """Validated headers of an input message."""

    stream_id: str
    segment: str
    """The ``video_segment`` header, or :data:`IMPLICIT_SEGMENT` without one."""
    timestamp_ns: int | None
    """None only for end-of-segment markers."""
    end_of_segment: bool = False

    @property
    def implicit(self) -> bool:
        return self.segment == IMPLICIT_SEGMENT


def _name(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise RejectedMessage(f"header {what} is not UTF-8 text") from None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RejectedMessage(f"header {what} must be a string, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > _MAX_NAME:
        raise RejectedMessage(f"header {what} must have 1 to {_MAX_NAME} characters")
    return text


def _flag(value: Any) -> bool:
    if isinstance(value, (bool, int)):
        return bool(value)
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no", ""):
            return False
    raise RejectedMessage(f"header end_of_segment must be true/false, got {value!r}")


def _timestamp(value: Any) -> int:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise RejectedMessage(f"header timestamp_ns must be an integer (ns), got {value!r}")
    if value < 0:
        raise RejectedMessage(f"header timestamp_ns must be >= 0, got {value}")
    return value


def read_header(headers: dict[str, Any] | None, stream_header: str = "stream_id",
                default_stream: str = "default") -> FrameHeader:
    """Validate the headers of an input message (cheap; done before the image is decoded)."""
    headers = headers or {}
    raw_segment = headers.get("video_segment")
    segment = IMPLICIT_SEGMENT if raw_segment is None else _name(raw_segment, "video_segment")
    stream = headers.get(stream_header)
    stream_id = default_stream if stream is None else _name(stream, stream_header)
    end = _flag(headers.get("end_of_segment", False))
    if "timestamp_ns" not in headers:
        if end:
            return FrameHeader(stream_id, segment, None, True)
        raise RejectedMessage("missing header timestamp_ns")
    return FrameHeader(stream_id, segment, _timestamp(headers["timestamp_ns"]), end)


def restart_target(body: bytes, headers: dict[str, Any] | None, stream_header: str = "stream_id") -> str | None:
    """The stream a restart message names (header, else a JSON body's ``stream_id``), or None for every stream."""
    value = (headers or {}).get(stream_header)
    if value is None and body[:1] == b"{":
        try:
            msg = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            msg = {}
        value = msg.get(stream_header) if isinstance(msg, dict) else None
    return None if value is None else _name(value, stream_header)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, or None if not found."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:                       # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            return (w, h) if w and h else None
        i += 2 + length
    return None


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (bytes 16-24), or None if absent."""
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def decode_image(body: bytes, net_size: int, min_side: int = 0, max_pixels: int = 0) -> np.ndarray:
    """Encoded JPEG / PNG -> RGB ``(H, W, 3)`` uint8.

    The size is read from the header first: an image of more than ``max_pixels`` pixels (0 = no limit) is
    rejected before any decoding (a few hundred kB of PNG can expand to gigabytes). JPEGs whose short side is at
    least ``2 * min_side`` are decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, much faster) keeping the short side
    >= ``min_side`` (0 = always full size). The image must have a short side of at least :data:`MIN_SIDE` and be
    croppable to the ``net_size`` square network input.
    """
    import cv2

    from slam3r.geometry.camera import input_crop_resize

    if not body:
        raise RejectedMessage("empty body (expected an encoded JPEG or PNG image)")
    is_jpeg = body.startswith(_JPEG_MAGIC)
    if not (is_jpeg or body.startswith(_PNG_MAGIC)):
        raise RejectedMessage(f"body is not a JPEG or PNG image (starts with {body[:8]!r})")
    kind = "JPEG" if is_jpeg else "PNG"
    size = jpeg_size(body) if is_jpeg else png_size(body)
    if size is None:
        raise RejectedMessage(f"undecodable {kind} image ({len(body)} bytes): no size in its header")
    if max_pixels and size[0] * size[1] > max_pixels:
        raise RejectedMessage(f"{kind} image {size[0]}x{size[1]} has {size[0] * size[1] / 1e6:.1f} MP, over the "
                              f"limit of {max_pixels / 1e6:.1f} MP (max_pixels); not decoded")
    flag = cv2.IMREAD_COLOR
    if is_jpeg and min_side > 0:
        short = min(size)
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if short // factor >= min_side:
                flag = reduced
                break
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), flag)
    if bgr is None:
        raise RejectedMessage(f"undecodable {kind} image ({len(body)} bytes)")
    h, w = bgr.shape[:2]
    g = input_crop_resize(w, h, net_size)
    if min(w, h) < MIN_SIDE or min(g.resized_w, g.resized_h) < net_size:
        raise RejectedMessage(f"image {w}x{h} is too small (short side < {MIN_SIDE}) or too elongated for the "
                              f"{net_size}x{net_size} network input")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
