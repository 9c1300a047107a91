"""The richer profile as msgpack (``encoding: msgpack``): the fields of :mod:`~slam3r.service.encodings.rich`,
arrays as ``{"dtype", "shape", "data"}`` maps whose ``data`` holds the raw little-endian bytes (C order); no
compression."""

from __future__ import annotations

from typing import Any

import numpy as np

from slam3r.service.encodings.base import Payload
from slam3r.service.encodings.rich import RichJsonEncoding

MSGPACK = "application/msgpack"


def pack_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    return {"dtype": dt.str, "shape": list(a.shape), "data": a.astype(dt, copy=False).tobytes()}


def unpack_array(d: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


class RichMsgpackEncoding(RichJsonEncoding):
    """``msgpack``: xyz ``(N, 3)`` float32, rgb ``(N, 3)`` uint8, conf ``(N,)`` float32 arrays instead of rows."""

    name = "msgpack"
    content_types = (MSGPACK,)

    def _encode(self, msg: dict[str, Any], compress: bool, points_text: bytes | None = None) -> Payload:
        import msgpack

        return Payload(msgpack.packb(msg, use_bin_type=True), MSGPACK)

    def _points(self, msg: dict[str, Any], xyz: np.ndarray, rgb: np.ndarray, conf: np.ndarray) -> None:
        msg.update(xyz=pack_array(xyz.astype(np.float32, copy=False)), rgb=pack_array(rgb.astype(np.uint8, copy=False)),
                   conf=pack_array(conf.astype(np.float32, copy=False)))
        return None

    def _index(self, index: np.ndarray) -> Any:
        return pack_array(index)

    def _mesh_arrays(self, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> dict[str, Any]:
        return {"vertices": pack_array(vertices.astype(np.float32)), "faces": pack_array(faces.astype(np.int32)),
                "vertex_colors": pack_array(colors.astype(np.uint8))}

    @staticmethod
    def decode(body: bytes, content_type: str | None, content_encoding: str | None) -> dict[str, Any]:
        import msgpack

        msg = msgpack.unpackb(body, raw=False)
        for k, v in list(msg.items()):
            if isinstance(v, dict) and set(v) == {"dtype", "shape", "data"}:
                msg[k] = unpack_array(v)
        return msg
