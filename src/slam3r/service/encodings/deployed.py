"""The deployed contract (``encoding: deployed``, the default): the messages of the WorldSystem SLAM3R processor,
so its consumers work unchanged (facts taken from its ``slam3r_processor.py``; every field in docs/service.md).

* pose (``application/json``, plain): ``timestamp_ns``, ``processing_timestamp`` (UNIX seconds as a *string*, as
  deployed), ``position``, ``orientation``, ``raw_pose_matrix``;
* point cloud (``application/json+gzip``: the body is gzip-compressed JSON, no AMQP content_encoding):
  ``timestamp_ns``, ``points`` ``[[x, y, z], ...]``;
* visualisation (``application/json+gzip``): ``points_update_incremental`` (the whole map, subsampled: ``vertices``
  ``[[x, y, z]]``, ``colors`` ``[[r, g, b]]`` 0-255, ``faces`` ``[]``) every ``map_update_frames`` registered frames,
  ``mesh_update`` (``vertices``, ``faces``, ``vertex_colors`` 0-255) when a mesh is ready;
* ``segment_boundary`` (``application/json``, plain, as deployed): ``previous_segment``, ``new_segment``,
  ``timestamp_ns``, at the end of every segment.

Every message also carries ``stream_id`` and ``video_segment`` (and some ``frame_id`` etc.): additions a JSON
consumer ignores.
"""

from __future__ import annotations

import gzip
import json
import time
from typing import Any

import numpy as np

from slam3r.recon.point_buffer import Marker
from slam3r.recon.types import FrameResult
from slam3r.service.encodings.base import Encoding, MapContext, Payload, json_bytes, pose_fields
from slam3r.service.encodings.rich import JSON, segment_name
from slam3r.service.jsonpoints import colour_rows_json, point_rows_json

JSON_GZIP = "application/json+gzip"


def keyframe_name(keyframe_id: int) -> str | None:
    """The deployed ``keyframe_id``: ``"kf_<frame id>"``, None before the first keyframe."""
    return f"kf_{keyframe_id}" if keyframe_id >= 0 else None


class DeployedEncoding(Encoding):
    """``deployed`` (see module docstring)."""

    name = "deployed"
    content_types = (JSON, JSON_GZIP)

    @staticmethod
    def _gzip_json(msg: dict[str, Any], **rows: bytes) -> Payload:
        """gzip JSON of ``msg`` with preformatted JSON arrays ``rows`` spliced in as its last fields."""
        text = json_bytes(msg)[:-1]
        for name, value in rows.items():
            text += b',"' + name.encode() + b'":' + value
        return Payload(text + b"}", JSON_GZIP, None, compress=True)

    @staticmethod
    def _xyz_rows(xyz: np.ndarray) -> bytes:
        text = point_rows_json(xyz, None)
        return text if text is not None else json.dumps(np.round(xyz.astype(np.float64), 4).tolist()).encode()

    def pose(self, r: FrameResult, stream_id: str, segment: str) -> Payload:
        msg = {"timestamp_ns": r.timestamp_ns, "processing_timestamp": str(time.time()), **pose_fields(r),
               "stream_id": stream_id, "video_segment": segment_name(segment), "frame_id": r.frame_id,
               "is_keyframe": bool(r.is_keyframe)}
        return Payload(json_bytes(msg), JSON)

    def points(self, r: FrameResult, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stream_id: str,
               segment: str) -> Payload:
        keep = self.subsample(len(xyz))
        if keep is not None:
            xyz = xyz[keep]
        msg = {"timestamp_ns": r.timestamp_ns, "stream_id": stream_id, "video_segment": segment_name(segment),
               "frame_id": r.frame_id}
        return self._gzip_json(msg, points=self._xyz_rows(xyz))

    def map_update(self, ctx: MapContext) -> tuple[list[Payload], Marker | None]:
        xyz, rgb, _ = ctx.buffer.points(copy=False)
        keep = self.subsample(len(xyz))
        if keep is not None:
            xyz, rgb = xyz[keep], rgb[keep]
        msg = {"timestamp_ns": ctx.timestamp_ns, "type": "points_update_incremental", "faces": [],
               "keyframe_id": keyframe_name(ctx.keyframe_id), "stream_id": ctx.stream_id,
               "video_segment": segment_name(ctx.segment), "frame_id": ctx.frame_id}
        return [self._gzip_json(msg, colors=colour_rows_json(rgb), vertices=self._xyz_rows(xyz))], None

    def mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, keyframe_id: int,
             timestamp_ns: int | None, stream_id: str, segment: str) -> Payload:
        msg = {"timestamp_ns": timestamp_ns, "type": "mesh_update", "faces": faces.tolist(),
               "keyframe_id": keyframe_name(keyframe_id), "stream_id": stream_id,
               "video_segment": segment_name(segment)}
        return self._gzip_json(msg, vertex_colors=colour_rows_json(colors), vertices=self._xyz_rows(vertices))

    def segment_start(self, stream_id: str, segment: str, timestamp_ns: int | None) -> None:
        return None                                  # the deployed processor announced none

    def segment_end(self, stream_id: str, segment: str, next_segment: str | None, timestamp_ns: int | None,
                    frames: int, points: int, files: dict[str, str], reason: str) -> Payload:
        msg = {"type": "segment_boundary", "previous_segment": segment_name(segment),
               "new_segment": None if next_segment is None else segment_name(next_segment),
               "timestamp_ns": timestamp_ns, "stream_id": stream_id, "reason": reason, "frames": frames,
               "points": points, "files": files, "processing_timestamp": str(time.time())}
        return Payload(json_bytes(msg), JSON)

    @staticmethod
    def decode(body: bytes, content_type: str | None, content_encoding: str | None) -> dict[str, Any]:
        if content_type == JSON_GZIP or content_encoding == "gzip":
            body = gzip.decompress(body)
        return json.loads(body)
