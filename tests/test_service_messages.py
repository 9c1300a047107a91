"""Message contract and configuration of the service (no broker needed)."""

from __future__ import annotations

import gzip
import json

import cv2
import numpy as np
import pytest

from slam3r.config import ConfigError
from slam3r.recon.point_buffer import PointBuffer
from slam3r.recon.types import FrameResult
from slam3r.service.config import ENV_NAMES, ServiceConfig, load_config
from slam3r.service.messages import (make_encoding, RejectedMessage, decode_image, decode_payload, jpeg_size, png_size,
                                     quaternion_xyzw, read_header, restart_target)


def frame_result(n: int = 8, fid: int = 3) -> FrameResult:
    rng = np.random.default_rng(fid)
    rot = cv2.Rodrigues(np.array([0.1, -0.2, 0.3]))[0]
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rot, [1.0, 2.0, 3.0]
    return FrameResult(fid, 123456789, rng.integers(0, 256, (n, n, 3), dtype=np.uint8),
                       rng.normal(size=(n, n, 3)).astype(np.float32), np.full((n, n), 3, np.float32),
                       rng.normal(size=(n, n, 3)).astype(np.float32), np.full((n, n), 20, np.float32), pose, 50.0)


# ------------------------------------------------------------------------------------------------ input


def test_headers_are_validated():
    h = read_header({"timestamp_ns": 5, "video_segment": "a", "stream_id": "d1"})
    assert (h.stream_id, h.segment, h.timestamp_ns, h.end_of_segment) == ("d1", "a", 5, False)
    assert read_header({"timestamp_ns": "17", "video_segment": 3}).timestamp_ns == 17
    assert read_header({"timestamp_ns": 1, "video_segment": "a"}).stream_id == "default"
    marker = read_header({"video_segment": "a", "end_of_segment": True})
    assert marker.end_of_segment and marker.timestamp_ns is None
    # The deployment's phone server: no video_segment, strings everywhere -> one implicit segment
    phone = read_header({"timestamp_ns": "1700000000123456789", "server_received": "1", "width": "640"})
    assert (phone.segment, phone.implicit, phone.timestamp_ns) == ("", True, 1700000000123456789)
    assert restart_target(b'{"type": "restart"}', {}) is None
    assert restart_target(b'{"type": "restart", "stream_id": "d2"}', {}) == "d2"
    assert restart_target(b"", {"stream_id": "d3"}) == "d3"
    bad = [(None, "missing header timestamp_ns"), ({"video_segment": "a"}, "missing header timestamp_ns"),
           ({"timestamp_ns": -1, "video_segment": "a"}, ">= 0"),
           ({"timestamp_ns": True, "video_segment": "a"}, "integer"),
           ({"timestamp_ns": 1.5, "video_segment": "a"}, "integer"),
           ({"timestamp_ns": 1, "video_segment": ""}, "1 to 200 characters"),
           ({"timestamp_ns": 1, "video_segment": "a", "end_of_segment": "maybe"}, "true/false"),
           ({"timestamp_ns": 1, "video_segment": b"\xff\xfe"}, "UTF-8")]
    for headers, reason in bad:
        with pytest.raises(RejectedMessage) as err:
            read_header(headers)
        assert reason in err.value.reason


def test_images_decode_with_dct_scaling_and_reject_garbage():
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rgb[:, :320, 0] = 255                                   # a red left half survives any scaling
    jpg = cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()
    png = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()
    assert jpeg_size(jpg) == (640, 480)
    assert decode_image(jpg, 224).shape == (480, 640, 3)
    assert decode_image(jpg, 224, min_side=224).shape == (240, 320, 3)   # 1/2: 240 >= 224 > 120
    assert decode_image(jpg, 64, min_side=64).shape == (120, 160, 3)     # 1/4
    full = decode_image(png, 224, min_side=224)
    np.testing.assert_array_equal(full, rgb)                             # PNG: lossless, never scaled
    left = decode_image(jpg, 224)[:, :300].reshape(-1, 3).mean(0)
    assert left[0] > 200 and left[2] < 160                             # RGB order, not BGR
    assert png_size(png) == (640, 480)
    for body, reason in [(b"", "empty body"), (b"GIF89a....", "not a JPEG or PNG"), (jpg[:300], "undecodable"),
                         (cv2.imencode(".png", np.zeros((20, 400, 3), np.uint8))[1].tobytes(), "too small")]:
        with pytest.raises(RejectedMessage) as err:
            decode_image(body, 224)
        assert reason in err.value.reason


# ------------------------------------------------------------------------------------------------ output


def test_pose_message_fields_and_quaternion():
    r = frame_result()
    for enc in ("deployed", "json", "msgpack"):
        p = make_encoding(enc).pose(r, "d1", "seg")
        msg = decode_payload(p.wire_body(), p.content_type, p.content_encoding)
        assert p.content_encoding is None and msg["timestamp_ns"] == 123456789
        assert msg["position"] == {"x": 1.0, "y": 2.0, "z": 3.0}
        q = np.array([msg["orientation"][k] for k in "xyzw"])
        x, y, z, w = q
        rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(rot, r.pose_c2w[:3, :3], atol=1e-9)
        np.testing.assert_allclose(msg["raw_pose_matrix"], r.pose_c2w)
        assert isinstance(msg["processing_timestamp"], str if enc == "deployed" else float)
        assert float(msg["processing_timestamp"]) > 1.6e9 and msg["stream_id"] == "d1"
    from scipy.spatial.transform import Rotation

    for rot in Rotation.random(200, random_state=1).as_matrix().tolist() + [np.diag([1.0, -1, -1]).tolist()]:
        q, ref = quaternion_xyzw(np.asarray(rot)), Rotation.from_matrix(rot).as_quat()
        assert min(np.abs(q - ref).max(), np.abs(q + ref).max()) < 1e-12
    # A similarity pose (rotation times scale) gives the same unit quaternion.
    np.testing.assert_allclose(quaternion_xyzw(2.5 * r.pose_c2w[:3, :3]), quaternion_xyzw(r.pose_c2w[:3, :3]))


def png_bomb(side: int) -> bytes:
    """A real grayscale PNG of side x side zeros (a few hundred kB that decode to side**2 * 3 bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(side + 1)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_decompression_bomb_is_rejected_from_the_header():
    import resource

    bomb = png_bomb(8000)                               # 64 MP: 192 MB once decoded to BGR
    assert len(bomb) < 200_000 and png_size(bomb) == (8000, 8000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RejectedMessage) as err:
        decode_image(bomb, 224, max_pixels=40_000_000)
    assert "8000x8000" in err.value.reason and "64.0 MP" in err.value.reason and "not decoded" in err.value.reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000      # kB: nothing was decoded
    big_jpeg = cv2.imencode(".jpg", np.zeros((300, 400, 3), np.uint8))[1].tobytes()
    with pytest.raises(RejectedMessage, match="over the limit"):
        decode_image(big_jpeg, 224, max_pixels=100_000)
    assert decode_image(big_jpeg, 224, max_pixels=120_000).shape == (300, 400, 3)


def test_point_messages_json_layout_msgpack_arrays_and_cap():
    r = frame_result(n=10)
    xyz, rgb, conf = r.points(12.0)
    p = make_encoding("json", points_per_message=30).points(r, xyz, rgb, conf, "d1", "seg")
    assert (p.content_type, p.content_encoding) == ("application/json", "gzip")
    raw = json.loads(gzip.decompress(p.wire_body()))
    pts = np.asarray(raw["points"])
    assert pts.shape == (30, 6) and raw["timestamp_ns"] == 123456789
    assert all(isinstance(v, int) for v in raw["points"][0][3:])
    # every sent row is one of the frame's points (xyz rounded to 1e-4)
    full = np.concatenate([xyz.astype(np.float64), rgb.astype(np.float64)], 1)
    d = np.abs(pts[:, None, :] - full[None]).max(-1).min(1)
    assert d.max() <= 5e-5 + 1e-7
    m = make_encoding("msgpack").points(r, xyz, rgb, conf, "d1", "seg")
    assert (m.content_type, m.content_encoding) == ("application/msgpack", None)
    msg = decode_payload(m.wire_body(), m.content_type)
    np.testing.assert_array_equal(msg["xyz"], xyz)
    np.testing.assert_array_equal(msg["rgb"], rgb)
    np.testing.assert_array_equal(msg["conf"], conf)
    assert msg["xyz"].dtype == np.dtype("<f4")


def test_map_updates_split_and_mesh_and_segment_messages():
    buf = PointBuffer(voxel_size=0.01)
    rng = np.random.default_rng(1)
    buf.insert(rng.random((250, 3)).astype(np.float32), rng.integers(0, 256, (250, 3), dtype=np.uint8),
               rng.random(250).astype(np.float32) + 1)
    delta = buf.changes_since(None)
    parts = make_encoding("json", points_per_message=100).delta_messages(delta, 7, "d1", "seg")
    msgs = [decode_payload(p.wire_body(), p.content_type, p.content_encoding) for p in parts]
    assert [(m["part"], m["parts"], m["reset"], len(m["points"])) for m in msgs] == \
        [(0, 3, True, 100), (1, 3, False, 100), (2, 3, False, 50)]
    assert sorted(i for m in msgs for i in m["index"]) == list(range(250))
    v = rng.random((5, 3)).astype(np.float32)
    f = np.array([[0, 1, 2], [2, 3, 4]], np.int32)
    c = np.array([[255, 0, 0]] * 5, np.uint8)
    for enc in ("json", "msgpack"):
        p = make_encoding(enc).mesh(v, f, c, 12, 99, "d1", "seg")
        msg = decode_payload(p.wire_body(), p.content_type, p.content_encoding)
        assert msg["type"] == "mesh" and msg["keyframe_id"] == 12
        np.testing.assert_allclose(np.asarray(msg["vertices"]), v, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(msg["faces"]), f)
        colors = np.asarray(msg["vertex_colors"], np.float64)
        np.testing.assert_allclose(colors if enc == "msgpack" else colors * 255, c, atol=1e-3)
    seg = make_encoding("json").segment_end("d1", "seg", None, 99, 40, 1234, {"points": "/x.ply"}, "end_of_segment")
    msg = decode_payload(seg.wire_body(), seg.content_type, seg.content_encoding)
    assert (msg["type"], msg["event"], msg["frames"], msg["files"]) == ("segment", "end", 40, {"points": "/x.ply"})


# ------------------------------------------------------------------------------------------------ config


def test_config_from_yaml_and_deployed_environment(tmp_path):
    intr = tmp_path / "cam.yaml"
    intr.write_text("fx: 905.98\nfy: 903.87\ncx: 628.66\ncy: 348.90\n")
    y = tmp_path / "wild.yaml"
    y.write_text("service:\n  encoding: msgpack\n  camera_intrinsics_file: cam.yaml\nrecon:\n  win_r: 5\n")
    env = {"RABBITMQ_URL": "amqp://rabbitmq", "ENABLE_MESH_GENERATION": "true", "SAVE_SEGMENTS": "1",
           "SEGMENT_OUTPUT_DIR": "/data/seg", "SLAM3R_CONF_THRES_I2P": "2.5", "SLAM3R_CONF_THRES_L2W": "8",
           "SLAM3R_MAX_POINTCLOUD_SIZE": "750000", "SLAM3R_MESH_UPDATE_FREQUENCY": "10",
           "SLAM3R_USE_MESH_VIS": "false", "SLAM3R_PREFETCH": "24"}
    cfg = load_config(y, env=env)
    s = cfg.service
    assert (s.rabbitmq_url, s.enable_mesh, s.save_segments, s.segment_output_dir) == \
        ("amqp://rabbitmq", True, True, "/data/seg")
    assert (s.max_pointcloud_size, s.mesh_update_frequency, s.use_mesh_vis, s.prefetch, s.encoding) == \
        (750000, 10, False, 24, "msgpack")
    assert (cfg.recon.conf_thres_i2p, cfg.recon.conf_thres_l2w, cfg.recon.win_r) == (2.5, 8.0, 5)
    assert cfg.recon.intrinsics == (905.98, 903.87, 628.66, 348.90)          # relative to the YAML file
    assert set(ENV_NAMES) >= {"SLAM3R_SAVE_SEGMENT_POINTCLOUDS", "SLAM3R_SEGMENT_OUTPUT_DIR", "CAMERA_INTRINSICS_FILE"}
    defaults = load_config(None, env={})
    assert defaults.service == ServiceConfig() and defaults.recon.intrinsics is None
    assert defaults.service.rabbitmq_url == "amqp://guest:guest@127.0.0.1:5672/"


def test_repository_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "wild.yaml",
                      env={"CAMERA_INTRINSICS_FILE": str(root / "configs" / "camera_intrinsics.yaml")})
    assert cfg.recon.intrinsics == (905.98, 903.87, 628.66, 348.90)


@pytest.mark.parametrize("env, text, message", [
    ({"RABBITMQ_URL": "http://broker"}, None, "rabbitmq_url"),
    ({"SLAM3R_MAX_PIXELS": "0"}, None, "max_pixels"),
    ({"SLAM3R_MAX_STREAMS": "0"}, None, "max_streams"),
    ({"RABBITMQ_URL": "amqp://host:notaport/"}, None, "invalid port"),
    ({"SLAM3R_CONF_THRES_L2W": "-3"}, None, "thresholds"),
    ({"SLAM3R_CONF_THRES_I2P": "abc"}, None, "expected a number"),
    ({"SLAM3R_MAX_POINTCLOUD_SIZE": "0"}, None, "max_pointcloud_size"),
    ({"SLAM3R_ENCODING": "xml"}, None, "encoding"),
    ({"SAVE_SEGMENTS": "true", "SLAM3R_SAVE_SEGMENT_POINTCLOUDS": "false"}, None, "different values"),
    ({"CAMERA_INTRINSICS_FILE": "/nonexistent/cam.yaml"}, None, "not found"),
    ({}, "service: [unclosed", "not valid YAML"),
    ({}, "service:\n  no_such_key: 1\n", "unknown keys"),
    ({}, "surprise: {}\n", "top-level sections"),
])
def test_config_errors_are_clear(tmp_path, env, text, message):
    path = None
    if text is not None:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert message in str(err.value)


def test_fast_point_json_is_exact_and_falls_back_out_of_range():
    from slam3r.service.jsonpoints import point_rows_json

    rng = np.random.default_rng(3)
    xyz = rng.normal(size=(5000, 3)) * [0.3, 20, 900]
    xyz[:4] = [[-0.5, -0.00004, 0.00005], [0, -0.99996, 9999.99994], [-9999.9999, 1e-9, -1e-9], [1, -1, 0]]
    rgb = rng.integers(0, 256, (5000, 3), dtype=np.uint8)
    rows = np.asarray(json.loads(point_rows_json(xyz, rgb)))
    expected = np.sign(xyz) * np.rint(np.abs(xyz) * 1e4) / 1e4
    np.testing.assert_array_equal(rows[:, :3], expected)
    np.testing.assert_array_equal(rows[:, 3:], rgb)
    assert point_rows_json(np.zeros((0, 3)), np.zeros((0, 3), np.uint8)) == b"[]"
    for bad in (1e4, np.inf, np.nan):
        assert point_rows_json(np.array([[0, bad, 0]]), np.zeros((1, 3), np.uint8)) is None
    r = frame_result(n=4)
    r.pts3d_world[0, 0] = [2e4, -3e5, 1.0]                       # the codec falls back to json.dumps
    p = make_encoding("json").points(r, *r.points(12.0), "d1", "seg")
    pts = np.asarray(decode_payload(p.wire_body(), p.content_type, p.content_encoding)["points"])
    np.testing.assert_allclose(pts[0, :3], [2e4, -3e5, 1.0])
    p = make_encoding("deployed").points(r, *r.points(12.0), "d1", "seg")                 # x, y, z rows, same fallback
    pts = np.asarray(decode_payload(p.wire_body(), p.content_type, p.content_encoding)["points"])
    assert pts.shape == (16, 3)
    np.testing.assert_allclose(pts[0], [2e4, -3e5, 1.0])
    xyz = rng.normal(size=(50, 3))
    np.testing.assert_array_equal(np.asarray(json.loads(point_rows_json(xyz, None))),
                                  np.sign(xyz) * np.rint(np.abs(xyz) * 1e4) / 1e4)
    from slam3r.service.jsonpoints import colour_rows_json

    assert json.loads(colour_rows_json(rgb)) == rgb.tolist() and colour_rows_json(rgb[:0]) == b"[]"
