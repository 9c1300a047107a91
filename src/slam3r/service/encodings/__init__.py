"""Output encodings of the service: a name -> class registry (the ``encoding`` setting is checked against it).

* ``deployed`` (default): the WorldSystem deployment's messages (:mod:`~slam3r.service.encodings.deployed`);
* ``json`` / ``msgpack``: the project's richer profile (:mod:`~slam3r.service.encodings.rich`,
  :mod:`~slam3r.service.encodings.msgpack`).

Adding an encoding: one module with an :class:`~slam3r.service.encodings.base.Encoding` subclass, one entry here.
"""

from __future__ import annotations

from typing import Any

from slam3r.service.encodings.base import Encoding, MapContext, Payload, quaternion_xyzw
from slam3r.service.encodings.deployed import JSON_GZIP, DeployedEncoding
from slam3r.service.encodings.msgpack import MSGPACK, RichMsgpackEncoding
from slam3r.service.encodings.rich import JSON, RichJsonEncoding

ENCODINGS: dict[str, type[Encoding]] = {
    "deployed": DeployedEncoding,
    "json": RichJsonEncoding,
    "msgpack": RichMsgpackEncoding,
}


def make_encoding(name: str = "deployed", points_per_message: int = 50_000, seed: int = 0) -> Encoding:
    """The registered encoding ``name``; raises ValueError for an unknown name."""
    if name not in ENCODINGS:
        raise ValueError(f"unknown encoding {name!r} (one of {', '.join(ENCODINGS)})")
    return ENCODINGS[name](points_per_message, seed)


def decode_payload(body: bytes, content_type: str | None, content_encoding: str | None = None) -> dict[str, Any]:
    """Decode any message the service publishes, by its AMQP content type (msgpack arrays come back as numpy); the
    first registered encoding that claims the content type decodes it."""
    for cls in ENCODINGS.values():
        if content_type in cls.content_types:
            return cls.decode(body, content_type, content_encoding)
    raise ValueError(f"unknown content type {content_type!r}")


__all__ = ["ENCODINGS", "Encoding", "MapContext", "Payload", "make_encoding", "decode_payload", "quaternion_xyzw",
           "JSON", "JSON_GZIP", "MSGPACK"]
