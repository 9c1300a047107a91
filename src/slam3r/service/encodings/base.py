"""What every output encoding shares: the encoded message (:class:`Payload`), the per-batch map context
(:class:`MapContext`) and the interface an encoding implements (:class:`Encoding`).

An encoding turns the service's results into AMQP messages. It never sees the broker: the worker hands it
registered frames, map state and segment events and publishes the :class:`Payload` objects it returns. To add an
encoding, write one module with a subclass of :class:`Encoding` and register it in
:data:`slam3r.service.encodings.ENCODINGS`.
"""

from __future__ import annotations

import gzip
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from slam3r.geometry.transforms import rotmat_to_quat
from slam3r.recon.point_buffer import Marker, PointBuffer
from slam3r.recon.types import FrameResult

GZIP = "gzip"


@dataclass(frozen=True)
class Payload:
    """An encoded output message and its AMQP content properties.

    ``compress`` payloads hold the uncompressed body: :meth:`wire_body` gzips it when the AMQP thread publishes
    (zlib releases the GIL, so compression overlaps the worker's next frame). ``content_encoding`` is the AMQP
    property to send (``gzip`` for the rich JSON profile; None for the deployed ``application/json+gzip``).
    """

    body: bytes
    content_type: str
    content_encoding: str | None = None
    compress: bool = False

    def wire_body(self) -> bytes:
        """The bytes to publish."""
        if self.compress or self.content_encoding == GZIP:
            return gzip.compress(self.body, compresslevel=1, mtime=0)
        return self.body


@dataclass(frozen=True)
class MapContext:
    """The state of one stream's map after a batch of registered frames (input of :meth:`Encoding.map_update`)."""

    buffer: PointBuffer
    marker: Marker | None
    """What the consumers already hold (from the previous update; None: nothing)."""
    frame_id: int
    timestamp_ns: int | None
    keyframe_id: int
    """Frame id of the latest keyframe (-1: none yet)."""
    stream_id: str
    segment: str


def quaternion_xyzw(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), w >= 0, of a rotation matrix or a rotation times a positive scale (a
    similarity pose): the scale is divided out, then :func:`slam3r.geometry.transforms.rotmat_to_quat`."""
    r = np.asarray(rot, np.float64)
    return rotmat_to_quat(r / np.cbrt(np.linalg.det(r)))


def pose_fields(r: FrameResult) -> dict[str, Any]:
    """``position`` / ``orientation`` / ``raw_pose_matrix`` of a camera-to-world pose (every encoding sends them)."""
    c2w = np.asarray(r.pose_c2w, np.float64)
    q = quaternion_xyzw(c2w[:3, :3])
    t = c2w[:3, 3]
    return {"position": {"x": float(t[0]), "y": float(t[1]), "z": float(t[2])},
            "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])},
            "raw_pose_matrix": c2w.tolist()}


def json_bytes(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


class Encoding(ABC):
    """One output encoding (see module docstring). ``points_per_message`` caps the points of one message (random
    subsample, seeded by ``seed``)."""

    name: ClassVar[str]
    content_types: ClassVar[tuple[str, ...]]
    """AMQP content types this encoding produces (and :func:`~slam3r.service.encodings.decode_payload` reads)."""

    def __init__(self, points_per_message: int = 50_000, seed: int = 0) -> None:
        self.points_per_message = points_per_message
        self._rng = np.random.default_rng(seed)

    def subsample(self, n: int) -> np.ndarray | None:
        """Sorted indices of at most ``points_per_message`` of ``n`` points, or None to keep all."""
        if n <= self.points_per_message:
            return None
        return np.sort(self._rng.choice(n, self.points_per_message, replace=False))

    @abstractmethod
    def pose(self, r: FrameResult, stream_id: str, segment: str) -> Payload:
        """Pose message of a registered frame."""

    @abstractmethod
    def points(self, r: FrameResult, xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray, stream_id: str,
               segment: str) -> Payload:
        """Point-cloud message of a registered frame from its confident points (``(N, 3)`` float32 scene units,
        ``(N, 3)`` uint8, ``(N,)``)."""

    @abstractmethod
    def map_update(self, ctx: MapContext) -> tuple[list[Payload], Marker | None]:
        """Visualisation messages after a batch; returns them and the marker of what consumers now hold."""

    @abstractmethod
    def mesh(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, keyframe_id: int,
             timestamp_ns: int | None, stream_id: str, segment: str) -> Payload:
        """Mesh message: ``vertices (V, 3)`` float32, ``faces (F, 3)`` int32, ``colors (V, 3)`` uint8."""

    @abstractmethod
    def segment_start(self, stream_id: str, segment: str, timestamp_ns: int | None) -> Payload | None:
        """Message announcing a new segment (None: this encoding sends none)."""

    @abstractmethod
    def segment_end(self, stream_id: str, segment: str, next_segment: str | None, timestamp_ns: int | None,
                    frames: int, points: int, files: dict[str, str], reason: str) -> Payload:
        """Message of a finished segment; ``next_segment`` is the one that replaced it (None: no successor yet)."""

    @staticmethod
    @abstractmethod
    def decode(body: bytes, content_type: str | None, content_encoding: str | None) -> dict[str, Any]:
        """Inverse of the encoders for one of :attr:`content_types` (consumers and tests)."""
