"""The service's message contract: frame messages in, pose / point / mesh / segment messages out.

Input (``video_frames_exchange``): body = one encoded JPEG or PNG image; headers

* ``timestamp_ns`` (required): integer capture time in ns (an integer string is accepted); frames are
  identified by (stream, ``video_segment``, ``timestamp_ns``), so a redelivered frame is recognised;
* ``video_segment`` (required): segment name; a new value ends the previous segment of the stream;
* ``stream_id`` (optional, header name configurable): which camera / drone; default ``"default"``;
* ``end_of_segment`` (optional, true): the message is an end marker for ``video_segment`` (body ignored).

Anything else (empty / undecodable body, missing or mistyped headers) raises :class:`RejectedMessage`, whose
``reason`` the service puts in the ``x-reject-reason`` header of the dead-lettered copy.

Outputs, in one of two encodings chosen by configuration (the AMQP ``content_type`` / ``content_encoding`` say
which):

* ``json`` (the deployed contract): poses as plain JSON (``application/json``); point clouds, meshes and
  visualisation messages as gzip-compressed JSON (``application/json`` + ``gzip``, compression level 1, applied
  by the AMQP thread: see :meth:`Payload.wire_body`);
* ``msgpack`` (``application/msgpack``): the same fields, arrays as ``{"dtype", "shape", "data"}`` maps whose
  ``data`` holds the raw little-endian bytes (C order).

Fields (every message also carries ``stream_id`` and ``video_segment``):

* pose: ``timestamp_ns``, ``processing_timestamp`` (UNIX seconds, float), ``position{x,y,z}``,
  ``orientation{x,y,z,w}`` (unit quaternion of the camera-to-world rotation), ``raw_pose_matrix`` (4x4
  camera-to-world, rows), ``frame_id``, ``focal`` (pixels at network resolution), ``is_keyframe``;
* point cloud: ``timestamp_ns``, ``frame_id``, ``points``: the frame's confident world points, at most
  ``points_per_message`` (random subsample). JSON layout ``[[x, y, z, r, g, b], ...]`` with x, y, z in scene units
  rounded to 1e-4 and r, g, b integers 0-255; msgpack: ``xyz`` (N, 3) float32, ``rgb`` (N, 3) uint8, ``conf`` (N,)
  float32 arrays;
* visualisation (``type`` says which):
  ``mesh``: ``vertices`` [[x,y,z]], ``faces`` [[i,j,k]], ``vertex_colors`` [[r,g,b]] floats in [0, 1] (the
  Open3D / three.js convention), ``keyframe_id`` (last keyframe in the meshed map);
  ``points``: incremental map update: ``reset`` (drop what you hold first), ``index`` (slot ids: a later update of
  the same slot replaces it), ``points`` as above, ``part`` / ``parts`` when split;
  ``segment``: ``event`` ``start`` / ``end``, ``frames``, ``points``, ``files`` (paths written).
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from slam3r.recon.point_buffer import PointDelta
from slam3r.recon.types import FrameResult
from slam3r.service.jsonpoints import point_rows_json

JSON = "application/json"
MSGPACK = "application/msgpack"
GZIP = "gzip"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_MAX_NAME = 200
_SPLICE = "\x00points\x00"
_SPLICE_JSON = json.dumps(_SPLICE).encode()
MIN_SIDE = 32
"""Frames with a shorter side are rejected: no usable detail, most likely a broken producer."""


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
    timestamp_ns: int | None
    """None only for end-of-segment markers."""
    end_of_segment: bool = False


@dataclass(frozen=True)
class Payload:
    """An encoded output message and its AMQP content properties.

    For ``gzip`` payloads ``body`` holds the uncompressed JSON: :meth:`wire_body` compresses it when the AMQP
    thread publishes (zlib releases the GIL, so compression overlaps the worker's next frame).
    """

    body: bytes
    content_type: str
    content_encoding: str | None = None

    def wire_body(self) -> bytes:
        """The bytes to publish."""
        if self.content_encoding == GZIP:
            return gzip.compress(self.body, compresslevel=1, mtime=0)
        return self.body


# ---------------------------------------------------------------------------------------------------- decoding


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
    if "video_segment" not in headers:
        raise RejectedMessage("missing header video_segment")
    segment = _name(headers["video_segment"], "video_segment")
    stream = headers.get(stream_header)
    stream_id = default_stream if stream is None else _name(stream, stream_header)
    end = _flag(headers.get("end_of_segment", False))
    if "timestamp_ns" not in headers:
        if end:
            return FrameHeader(stream_id, segment, None, True)
        raise RejectedMessage("missing header timestamp_ns")
    return FrameHeader(stream_id, segment, _timestamp(headers["timestamp_ns"]), end)


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


def decode_image(body: bytes, net_size: int, min_side: int = 0) -> np.ndarray:
    """Encoded JPEG / PNG -> RGB ``(H, W, 3)`` uint8.

    JPEGs whose short side is at least ``2 * min_side`` are decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, much
    faster) keeping the short side >= ``min_side`` (0 = always full size). The image must have a short side of at
    least :data:`MIN_SIDE` and be croppable to the ``net_size`` square network input.
    """
    import cv2

    from slam3r.geometry.camera import input_crop_resize

    if not body:
        raise RejectedMessage("empty body (expected an encoded JPEG or PNG image)")
    is_jpeg = body.startswith(_JPEG_MAGIC)
    if not (is_jpeg or body.startswith(_PNG_MAGIC)):
        raise RejectedMessage(f"body is not a JPEG or PNG image (starts with {body[:8]!r})")
    flag = cv2.IMREAD_COLOR
    size = jpeg_size(body) if is_jpeg and min_side > 0 else None
    if size is not None:
        short = min(size)
        for factor, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                                (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if short // factor >= min_side:
                flag = reduced
                break
    bgr = cv2.imdecode(np.frombuffer(body, np.uint8), flag)
    if bgr is None:
        raise RejectedMessage(f"undecodable {'JPEG' if is_jpeg else 'PNG'} image ({len(body)} bytes)")
    h, w = bgr.shape[:2]
    g = input_crop_resize(w, h, net_size)
    if min(w, h) < MIN_SIDE or min(g.resized_w, g.resized_h) < net_size:
        raise RejectedMessage(f"image {w}x{h} is too small (short side < {MIN_SIDE}) or too elongated for the "
                              f"{net_size}x{net_size} network input")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------------- encoding


def _array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    return {"dtype": dt.str, "shape": list(a.shape), "data": a.astype(dt, copy=False).tobytes()}


def _unarray(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def _rows(xyz: np.ndarray, rgb: np.ndarray) -> list[list[float | int]]:
    """JSON point layout through ``json``: [[x, y, z, r, g, b], ...], xyz rounded to 1e-4, rgb integers (the
    fallback of :func:`~slam3r.service.jsonpoints.point_rows_json` for out-of-range coordinates)."""
    return [p + c for p, c in zip(np.round(xyz.astype(np.float64), 4).tolist(), rgb.tolist())]


def quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix (or a rotation times a positive scale).

    Shepperd's method: the largest of the four squared components is computed from the diagonal, the others from
    the off-diagonal sums / differences (numerically stable for every rotation).
    """
    r = np.asarray(rot, np.float64)
    r = r / np.cbrt(np.linalg.det(r))
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = r.tolist()
    trace = m00 + m11 + m22
    if trace >= max(m00, m11, m22):
        w = 0.5 * np.sqrt(max(1.0 + trace, 0.0))
        q = [(m21 - m12) / (4 * w), (m02 - m20) / (4 * w), (m10 - m01) / (4 * w), w]
    elif m00 >= m11 and m00 >= m22:
        x = 0.5 * np.sqrt(max(1.0 + m00 - m11 - m22, 0.0))
        q = [x, (m01 + m10) / (4 * x), (m02 + m20) / (4 * x), (m21 - m12) / (4 * x)]
    elif m11 >= m22:
        y = 0.5 * np.sqrt(max(1.0 - m00 + m11 - m22, 0.0))
        q = [(m01 + m10) / (4 * y), y, (m12 + m21) / (4 * y), (m02 - m20) / (4 * y)]
    else:
        z = 0.5 * np.sqrt(max(1.0 - m00 - m11 + m22, 0.0))
        q = [(m02 + m20) / (4 * z), (m12 + m21) / (4 * z), z, (m10 - m01) / (4 * z)]
    out = np.asarray(q) / np.linalg.norm(q)
    return -out if out[3] < 0 else out


def confident_points(r: FrameResult, conf_thres: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same as ``r.points(conf_thres)`` (xyz ``(M, 3)`` float32, rgb ``(M, 3)`` uint8, conf ``(M,)``), through flat
    gathers of whole rows (several times faster than 2-D boolean masks on 224 x 224 maps)."""
    keep = np.flatnonzero(r.conf.reshape(-1) > conf_thres)

    def rows(a: np.ndarray) -> np.ndarray:
        a = np.ascontiguousarray(a).reshape(-1, 3)
        return a.view(np.dtype((np.void, 3 * a.itemsize))).reshape(-1).take(keep).view(a.dtype).reshape(-1, 3)

    return rows(r.pts3d_world), rows(r.rgb), np.take(r.conf.reshape(-1), keep)


class Codec:
    """Encodes output messages in the configured encoding (see the module docstring for the fields)."""

    def __init__(self, encoding: Literal["json", "msgpack"] = "json", points_per_message: int = 50_000,
                 seed: int = 0) -> None:
        if encoding not in ("json", "msgpack"):
            raise ValueError(f"unknown encoding {encoding!r}")
        self.encoding = encoding
        self.points_per_message = points_per_message
        self._rng = np.random.default_rng(seed)

    def _encode(self, msg: dict[str, Any], compress: bool, points_text: bytes | None = None) -> Payload:
        """Encode ``msg``; ``points_text`` (JSON only) is spliced in as the ``points`` field."""
        if self.encoding == "msgpack":
            import msgpack

            return Payload(msgpack.packb(msg, use_bin_type=True), MSGPACK)
        if points_text is not None:
            msg["points"] = _SPLICE
        text = json.dumps(msg, separators=(",", ":")).encode()
        if points_text is not None:
            text = text.replace(_SPLICE_JSON, points_text, 1)
        return Payload(text, JSON, GZIP if compress else None)

    def _points(self, msg: dict[str, Any], xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray) -> bytes | None:
        """Add the point arrays to ``msg`` (msgpack) or return the JSON text of the ``points`` field."""
        if self.encoding == "msgpack":
            msg.update(xyz=_array(xyz.astype(np.float32, copy=False)), rgb=_array(rgb.astype(np.uint8, copy=False)),
                       conf=_array(conf.astype(np.float32, copy=False)))
            return None
        text = point_rows_json(xyz, rgb)
        if text is None:
            msg["points"] = _rows(xyz, rgb)
        return text

    def pose(self, r: FrameResult, stream_id: str, segment: str) -> Payload:
        c2w = np.asarray(r.pose_c2w, np.float64)
        q = quaternion_xyzw(c2w[:3, :3])
        t = c2w[:3, 3]
        msg = {"timestamp_ns": r.timestamp_ns, "processing_timestamp": time.time(),
               "position": {"x": float(t[0]), "y": float(t[1]), "z": float(t[2])},
               "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])},
               "raw_pose_matrix": c2w.tolist(), "frame_id": r.frame_id, "focal": float(r.focal),
               "is_keyframe": bool(r.is_keyframe), "stream_id": stream_id, "video_segment": segment}
        return self._encode(msg, compress=False)

    def points(self, r: FrameResult, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stream_id: str,
               segment: str) -> Payload:
        """Point-cloud message of frame ``r`` from its confident points (subsampled to the message cap)."""
        if len(xyz) > self.points_per_message:
            keep = np.sort(self._rng.choice(len(xyz), self.points_per_message, replace=False))
            xyz, rgb, conf = xyz[keep], rgb[keep], conf[keep]
        msg: dict[str, Any] = {"timestamp_ns": r.timestamp_ns, "frame_id": r.frame_id, "stream_id": stream_id,
                               "video_segment": segment}
        return self._encode(msg, True, self._points(msg, xyz, rgb, conf))

    def map_update(self, delta: PointDelta, frame_id: int, stream_id: str, segment: str) -> list[Payload]:
        """Visualisation ``points`` messages for a buffer delta, split into parts of at most the message cap."""
        n, cap = len(delta.index), self.points_per_message
        parts = max(1, -(-n // cap))
        out = []
        for p in range(parts):
            sl = slice(p * cap, (p + 1) * cap)
            msg: dict[str, Any] = {"type": "points", "reset": delta.reset and p == 0, "frame_id": frame_id,
                                   "part": p, "parts": parts, "stream_id": stream_id, "video_segment": segment}
            if self.encoding == "msgpack":
                msg["index"] = _array(delta.index[sl])
            else:
                msg["index"] = delta.index[sl].tolist()
            out.append(self._encode(msg, True, self._points(msg, delta.xyz[sl], delta.rgb[sl], delta.conf[sl])))
        return out

    def mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, keyframe_id: int, stream_id: str,
             segment: str) -> Payload:
        """Mesh message; ``colors`` ``(V, 3)`` uint8 are sent as floats in [0, 1] (JSON) / uint8 (msgpack)."""
        msg: dict[str, Any] = {"type": "mesh", "keyframe_id": keyframe_id, "stream_id": stream_id,
                               "video_segment": segment}
        if self.encoding == "msgpack":
            msg.update(vertices=_array(vertices.astype(np.float32)), faces=_array(faces.astype(np.int32)),
                       vertex_colors=_array(colors.astype(np.uint8)))
        else:
            msg.update(vertices=np.round(vertices.astype(np.float64), 4).tolist(), faces=faces.tolist(),
                       vertex_colors=np.round(colors / 255.0, 4).tolist())
        return self._encode(msg, compress=True)

    def segment(self, event: Literal["start", "end"], stream_id: str, segment: str, frames: int, points: int,
                files: dict[str, str] | None = None) -> Payload:
        msg = {"type": "segment", "event": event, "stream_id": stream_id, "video_segment": segment,
               "frames": frames, "points": points, "files": files or {}, "processing_timestamp": time.time()}
        return self._encode(msg, compress=True)


def decode_payload(body: bytes, content_type: str | None, content_encoding: str | None = None) -> dict[str, Any]:
    """Inverse of the encoders (for consumers and tests): msgpack arrays come back as numpy arrays."""
    if content_type == MSGPACK:
        import msgpack

        msg = msgpack.unpackb(body, raw=False)
        for k, v in list(msg.items()):
            if isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}:
                msg[k] = _unarray(v)
        return msg
    if content_type == JSON:
        if content_encoding == GZIP:
            body = gzip.decompress(body)
        return json.loads(body)
    raise ValueError(f"unknown content type {content_type!r}")
