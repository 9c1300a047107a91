"""The project's richer output profile, JSON flavour (``encoding: json``): colours with every point, incremental
map updates (slot ids, a later update of a slot replaces it), segment start / end events, gzip as the AMQP
``content_encoding`` of ``application/json`` (see docs/service.md for every field)."""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import numpy as np

from slam3r.recon.point_buffer import Marker, PointDelta
from slam3r.recon.types import FrameResult
from slam3r.service.encodings.base import GZIP, Encoding, MapContext, Payload, json_bytes, pose_fields
from slam3r.service.jsonpoints import point_rows_json

JSON = "application/json"
_SPLICE = "\x00points\x00"
_SPLICE_JSON = json.dumps(_SPLICE).encode()


def rows(xyz: np.ndarray, rgb: np.ndarray) -> list[list[float | int]]:
    """[[x, y, z, r, g, b], ...] through ``json``, xyz rounded to 1e-4 (the fallback of
    :func:`~slam3r.service.jsonpoints.point_rows_json` for out-of-range coordinates)."""
    return [p + c for p, c in zip(np.round(xyz.astype(np.float64), 4).tolist(), rgb.tolist())]


def segment_name(segment: str) -> str | None:
    """The ``video_segment`` field: None for a stream sent without the header (the implicit segment ``""``)."""
    return segment or None


class RichJsonEncoding(Encoding):
    """``json``: the richer profile as JSON (the subclass :class:`~slam3r.service.encodings.msgpack.
    RichMsgpackEncoding` overrides the array hooks)."""

    name = "json"
    content_types = (JSON,)

    # -------------------------------------------------------------- hooks the msgpack flavour overrides

    def _encode(self, msg: dict[str, Any], compress: bool, points_text: bytes | None = None) -> Payload:
        """Encode ``msg``; ``points_text`` is spliced in as the ``points`` field."""
        if points_text is not None:
            msg["points"] = _SPLICE
        text = json_bytes(msg)
        if points_text is not None:
            text = text.replace(_SPLICE_JSON, points_text, 1)
        return Payload(text, JSON, GZIP if compress else None)

    def _points(self, msg: dict[str, Any], xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray) -> bytes | None:
        """Add the point arrays to ``msg`` or return the JSON text of its ``points`` field."""
        text = point_rows_json(xyz, rgb)
        if text is None:
            msg["points"] = rows(xyz, rgb)
        return text

    def _index(self, index: np.ndarray) -> Any:
        return index.tolist()

    def _mesh_arrays(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> dict[str, Any]:
        return {"vertices": np.round(vertices.astype(np.float64), 4).tolist(), "faces": faces.tolist(),
                "vertex_colors": np.round(colors / 255.0, 4).tolist()}

    # -------------------------------------------------------------- messages

    def pose(self, r: FrameResult, stream_id: str, segment: str) -> Payload:
        msg = {"timestamp_ns": r.timestamp_ns, "processing_timestamp": time.time(), **pose_fields(r),
               "frame_id": r.frame_id, "focal": float(r.focal), "is_keyframe": bool(r.is_keyframe),
               "stream_id": stream_id, "video_segment": segment_name(segment)}
        return self._encode(msg, compress=False)

    def points(self, r: FrameResult, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stream_id: str,
               segment: str) -> Payload:
        keep = self.subsample(len(xyz))
        if keep is not None:
            xyz, rgb, conf = xyz[keep], rgb[keep], conf[keep]
        msg: dict[str, Any] = {"timestamp_ns": r.timestamp_ns, "frame_id": r.frame_id, "stream_id": stream_id,
                               "video_segment": segment_name(segment)}
        return self._encode(msg, True, self._points(msg, xyz, rgb, conf))

    def map_update(self, ctx: MapContext) -> tuple[list[Payload], Marker | None]:
        delta = ctx.buffer.changes_since(ctx.marker)
        if not (delta.reset or len(delta.index)):
            return [], delta.marker
        return self.delta_messages(delta, ctx.frame_id, ctx.stream_id, ctx.segment), delta.marker

    def delta_messages(self, delta: PointDelta, frame_id: int, stream_id: str, segment: str) -> list[Payload]:
        """``points`` messages of a buffer delta, split into parts of at most ``points_per_message``."""
        n, cap = len(delta.index), self.points_per_message
        parts = max(1, -(-n // cap))
        out = []
        for p in range(parts):
            sl = slice(p * cap, (p + 1) * cap)
            msg: dict[str, Any] = {"type": "points", "reset": delta.reset and p == 0, "frame_id": frame_id,
                                   "part": p, "parts": parts, "stream_id": stream_id,
                                   "video_segment": segment_name(segment), "index": self._index(delta.index[sl])}
            out.append(self._encode(msg, True, self._points(msg, delta.xyz[sl], delta.rgb[sl], delta.conf[sl])))
        return out

    def mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, keyframe_id: int,
             timestamp_ns: int | None, stream_id: str, segment: str) -> Payload:
        msg: dict[str, Any] = {"type": "mesh", "keyframe_id": keyframe_id, "timestamp_ns": timestamp_ns,
                               "stream_id": stream_id, "video_segment": segment_name(segment)}
        msg.update(self._mesh_arrays(vertices, faces, colors))
        return self._encode(msg, compress=True)

    def _segment(self, event: str, stream_id: str, segment: str, **fields: Any) -> Payload:
        msg = {"type": "segment", "event": event, "stream_id": stream_id, "video_segment": segment_name(segment),
               **fields, "processing_timestamp": time.time()}
        return self._encode(msg, compress=True)

    def segment_start(self, stream_id: str, segment: str, timestamp_ns: int | None) -> Payload:
        return self._segment("start", stream_id, segment, frames=0, points=0, files={}, timestamp_ns=timestamp_ns)

    def segment_end(self, stream_id: str, segment: str, next_segment: str | None, timestamp_ns: int | None,
                    frames: int, points: int, files: dict[str, str], reason: str) -> Payload:
        return self._segment("end", stream_id, segment, frames=frames, points=points, files=files, reason=reason,
                             next_segment=None if next_segment is None else segment_name(next_segment),
                             timestamp_ns=timestamp_ns)

    @staticmethod
    def decode(body: bytes, content_type: str | None, content_encoding: str | None) -> dict[str, Any]:
        if content_encoding == GZIP:
            body = gzip.decompress(body)
        return json.loads(body)
