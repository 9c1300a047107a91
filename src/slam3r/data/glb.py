"""Point clouds as glTF 2.0 binaries (``.glb``): one POINTS primitive with vertex colours, which every glTF viewer
(and the app's 3D view) shows."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from slam3r.data.cloud import PointCloud
from slam3r.data.files import write_atomic

DEFAULT_RGB = (200, 200, 200)
"""Colour of the points of a cloud that has none."""


def write_glb(path: str | Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Point cloud ``(N, 3)`` float + ``(N, 3)`` uint8 colours -> glTF 2.0 binary (one POINTS primitive).
    glTF is y-up; points are written in the OpenCV camera convention (y down) flipped to y-up, z-back."""
    pos = (np.asarray(xyz, np.float32) * np.array([1, -1, -1], np.float32)).astype("<f4")
    col = np.asarray(rgb, np.uint8)
    col = np.concatenate([col, np.full((len(col), 1), 255, np.uint8)], axis=1)  # RGBA, 4-byte aligned
    pos_bytes, col_bytes = pos.tobytes(), col.tobytes()
    n = len(pos)
    lo = pos.min(0).tolist() if n else [0, 0, 0]
    hi = pos.max(0).tolist() if n else [0, 0, 0]
    doc = {
        "asset": {"version": "2.0", "generator": "slam3r"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": 0}]}],
        "buffers": [{"byteLength": len(pos_bytes) + len(col_bytes)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes), "target": 34962},
                        {"buffer": 0, "byteOffset": len(pos_bytes), "byteLength": len(col_bytes), "target": 34962}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3", "min": lo, "max": hi},
                      {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"}],
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = pos_bytes + col_bytes
    binary += b"\0" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    write_atomic(path, struct.pack("<4sII", b"glTF", 2, total) + struct.pack("<I4s", len(js), b"JSON") + js
                 + struct.pack("<I4s", len(binary), b"BIN\0") + binary)


def write_glb_cloud(path: str | Path, cloud: PointCloud) -> None:
    """Write ``cloud`` as a glTF binary (points without colours in :data:`DEFAULT_RGB`)."""
    rgb = cloud.rgb if cloud.rgb is not None else np.tile(np.array(DEFAULT_RGB, np.uint8), (len(cloud), 1))
    write_glb(path, cloud.xyz, rgb)
