"""glTF 2.0 binaries (``.glb``) of point clouds and line sets: one file, one mesh, a POINTS or LINES primitive per
part, vertex colours; every glTF viewer (and the app's 3D view) shows them.

Points are given in the pipeline's OpenCV axes (x right, y down, z forward, scene units) and written flipped to
glTF's y-up, z-back convention.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slam3r.data.cloud import PointCloud
from slam3r.data.files import write_atomic

DEFAULT_RGB = (200, 200, 200)
"""Colour of the points of a cloud that has none."""
_FLIP = np.array([1, -1, -1], np.float32)  # OpenCV -> glTF axes
_POINTS, _LINES = 0, 1  # glTF primitive modes


@dataclass
class GLBScene:
    """Primitives of one glTF file, added in order; :meth:`write` saves them."""

    generator: str = "slam3r"
    _parts: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # (mode, xyz, rgb)

    def points(self, xyz: np.ndarray, rgb: np.ndarray) -> "GLBScene":
        """Add points ``(N, 3)`` with colours ``(N, 3)`` uint8."""
        self._parts.append((_POINTS, np.asarray(xyz, np.float32).reshape(-1, 3),
                            np.asarray(rgb, np.uint8).reshape(-1, 3)))
        return self

    def lines(self, segments: np.ndarray, rgb: tuple[int, int, int] | np.ndarray) -> "GLBScene":
        """Add line segments ``(M, 2, 3)`` in one colour ``(3,)`` or one per segment ``(M, 3)`` uint8."""
        segs = np.asarray(segments, np.float32).reshape(-1, 3)
        col = np.broadcast_to(np.asarray(rgb, np.uint8).reshape(-1, 1, 3), (len(segs) // 2, 2, 3)).reshape(-1, 3)
        if len(segs):
            self._parts.append((_LINES, segs, col))
        return self

    def to_bytes(self) -> bytes:
        """The whole ``.glb`` file."""
        binary, views, accessors, primitives = bytearray(), [], [], []
        for mode, xyz, rgb in self._parts:
            pos = (xyz * _FLIP).astype("<f4")
            col = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)  # RGBA, 4-byte aligned
            bounds = {"min": pos.min(0).tolist(), "max": pos.max(0).tolist()} if len(pos) else \
                {"min": [0, 0, 0], "max": [0, 0, 0]}
            for data, acc in ((pos, {"componentType": 5126, "type": "VEC3", **bounds}),
                              (col, {"componentType": 5121, "normalized": True, "type": "VEC4"})):
                views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": data.nbytes, "target": 34962})
                accessors.append({"bufferView": len(views) - 1, "count": len(data), **acc})
                binary += data.tobytes()
            primitives.append({"attributes": {"POSITION": len(accessors) - 2, "COLOR_0": len(accessors) - 1},
                               "mode": mode})
        doc = {"asset": {"version": "2.0", "generator": self.generator}, "scene": 0, "scenes": [{"nodes": [0]}],
               "nodes": [{"mesh": 0}], "meshes": [{"primitives": primitives}],
               "buffers": [{"byteLength": len(binary)}], "bufferViews": views, "accessors": accessors}
        js = json.dumps(doc, separators=(",", ":")).encode()
        js += b" " * (-len(js) % 4)
        binary += b"\0" * (-len(binary) % 4)
        return (struct.pack("<4sII", b"glTF", 2, 28 + len(js) + len(binary)) + struct.pack("<I4s", len(js), b"JSON")
                + js + struct.pack("<I4s", len(binary), b"BIN\0") + bytes(binary))

    def write(self, path: str | Path) -> Path:
        """Save the file (atomically: a reader never sees half of it)."""
        write_atomic(path, self.to_bytes())
        return Path(path)


def write_glb(path: str | Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Point cloud ``(N, 3)`` float + ``(N, 3)`` uint8 colours -> glTF 2.0 binary (one POINTS primitive)."""
    GLBScene().points(xyz, rgb).write(path)


def write_glb_cloud(path: str | Path, cloud: PointCloud) -> None:
    """Write ``cloud`` as a glTF binary (points without colours in :data:`DEFAULT_RGB`)."""
    rgb = cloud.rgb if cloud.rgb is not None else np.tile(np.array(DEFAULT_RGB, np.uint8), (len(cloud), 1))
    write_glb(path, cloud.xyz, rgb)


def read_glb_json(path: str | Path) -> dict:
    """The JSON document of a glTF binary (to inspect what a file holds)."""
    data = Path(path).read_bytes()
    magic, _, _ = struct.unpack_from("<4sII", data)
    if magic != b"glTF":
        raise ValueError(f"{Path(path).name} is not a glTF binary")
    length, _ = struct.unpack_from("<I4s", data, 12)
    return json.loads(data[20:20 + length])
