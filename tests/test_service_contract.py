"""docs/service.md is the service's contract: every example message in it has exactly the fields, and the JSON
types, of what the code produces for that profile; its input examples are accepted as documented."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from slam3r.recon.point_buffer import PointBuffer
from slam3r.service.encodings import ENCODINGS, MapContext, decode_payload, make_encoding
from slam3r.service.inbound import read_header, restart_target
from slam3r.service.testing import room_results

DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"
BLOCK = re.compile(r"<!-- (example|input): (\S+) -->\s*```json\s*(.*?)\s*```", re.S)


def doc_blocks(kind: str) -> dict[str, dict]:
    return {name: json.loads(text) for k, name, text in BLOCK.findall(DOC.read_text()) if k == kind}


def produced(encoding: str) -> dict[str, tuple[dict, str, str | None]]:
    """One message of every kind from ``encoding``: name -> (decoded message, content_type, content_encoding)."""
    enc = make_encoding(encoding, points_per_message=2)
    r = dataclasses.replace(room_results(1, size=4)[0], timestamp_ns=1750000000033000000, frame_id=7)
    xyz, rgb, conf = r.points(1.0)
    buf = PointBuffer(0.01)
    buf.insert(xyz[:2], rgb[:2], conf[:2])
    seg = "0000_segment_000.mp4"
    payloads = {"pose": enc.pose(r, "default", seg), "points": enc.points(r, xyz, rgb, conf, "default", seg),
                "map": enc.map_update(MapContext(buf, None, 7, r.timestamp_ns, 5, "default", seg))[0][0],
                "mesh": enc.mesh(xyz[:3], np.array([[0, 1, 2]], np.int32), rgb[:3], 5, r.timestamp_ns, "default",
                                 seg),
                "segment_end": enc.segment_end("default", seg, "x.mp4", 1, 150, 4, {"points": "p.ply"}, "why")}
    start = enc.segment_start("default", "x.mp4", 1)
    if start is not None:
        payloads["segment_start"] = start
    return {k: (decode_payload(p.wire_body(), p.content_type, p.content_encoding), p.content_type,
                p.content_encoding) for k, p in payloads.items()}


def same_shape(doc, got, where: str) -> None:
    """``doc`` (from the page) and ``got`` (from the code) have the same keys and JSON types, recursively."""
    if isinstance(got, np.ndarray):
        assert isinstance(doc, str) and doc.startswith(f"<{got.dtype} array"), where
    elif isinstance(got, dict):
        assert isinstance(doc, dict) and set(doc) == set(got), f"{where}: {sorted(doc)} != {sorted(got)}"
        for k in got:
            same_shape(doc[k], got[k], f"{where}.{k}")
    elif isinstance(got, list):
        assert isinstance(doc, list), where
        if got and doc:
            same_shape(doc[0], got[0], f"{where}[0]")
    elif got is None or doc is None:
        assert got is None and doc is None, where
    else:
        numbers = (int, float)
        ok = type(doc) is type(got) or (isinstance(got, float) and isinstance(doc, numbers))
        assert ok and not isinstance(doc, bool) ^ isinstance(got, bool), f"{where}: {doc!r} vs {got!r}"


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_every_documented_message_matches_the_code(encoding):
    documented = {name.split(".", 1)[1]: msg for name, msg in doc_blocks("example").items()
                  if name.startswith(encoding + ".")}
    got = produced(encoding)
    assert set(documented) == set(got), f"docs/service.md documents {sorted(documented)}, code sends {sorted(got)}"
    for kind, (msg, content_type, content_encoding) in got.items():
        same_shape(documented[kind], msg, f"{encoding}.{kind}")
        assert content_type in DOC.read_text()


def test_documented_inputs_are_accepted():
    inputs = doc_blocks("input")
    phone = read_header(inputs["phone"])
    assert phone.implicit and phone.timestamp_ns == 1750000000033000000 and phone.stream_id == "default"
    sim = read_header(inputs["simulator"])
    assert (sim.segment, sim.timestamp_ns) == ("0005_segment_001.mp4", 5200000000)
    assert restart_target(json.dumps(inputs["restart"]).encode(), {}) is None


def test_every_setting_and_environment_name_is_documented():
    from slam3r.service.config import ENV_NAMES

    text = DOC.read_text()
    missing = [name for name in ENV_NAMES if name not in text]
    assert not missing, f"environment variables missing from docs/service.md: {missing}"
