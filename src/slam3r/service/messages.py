"""The service's message contract in one import (kept for consumers such as the app): inbound parsing lives in
:mod:`slam3r.service.inbound`, outbound encodings in :mod:`slam3r.service.encodings`; docs/service.md lists every
exchange, header and field.

``Codec(name, points_per_message)`` is :func:`~slam3r.service.encodings.make_encoding`.
"""

from __future__ import annotations

from slam3r.service.encodings import (ENCODINGS, JSON, JSON_GZIP, MSGPACK, Encoding, Payload, decode_payload,
                                      make_encoding, quaternion_xyzw)
from slam3r.service.inbound import (MIN_SIDE, FrameHeader, RejectedMessage, decode_image, jpeg_size, png_size,
                                    read_header, restart_target)

Codec = make_encoding

__all__ = ["ENCODINGS", "JSON", "JSON_GZIP", "MSGPACK", "Codec", "Encoding", "Payload", "decode_payload",
           "make_encoding", "quaternion_xyzw", "MIN_SIDE", "FrameHeader", "RejectedMessage", "decode_image",
           "jpeg_size", "png_size", "read_header", "restart_target"]
