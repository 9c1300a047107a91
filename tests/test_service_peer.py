"""The deployment's own producer and consumer behaviour against a real ``slam3r serve`` on the real broker.

WorldSystem (github Tom-Sloan/WorldSystem, commit 3bc88bb) is the deployment this service replaces. Its producers
and its consumer are re-implemented here from what their files do (not from their code):

* the phone server (``server/main.py``): at start-up it publishes ``{"type":"restart"}`` on the restart exchange;
  then every phone frame goes to the frame exchange as ``application/octet-stream``, transient, with string
  headers ``timestamp_ns``, ``server_received``, ``ntp_time``, ``ntp_offset``, ``width``, ``height``: no
  ``video_segment``, no ``stream_id``, no end marker;
* the simulator (``simulation/simulate_data.py``, video-segment mode): JPEG quality 85, paced in real time,
  headers ``timestamp_ns`` (string), ``video_segment`` (the segment file name, e.g. ``0000_segment_000.mp4``),
  ``frame_index``, ``width`` ... ;
* the consumer: ``test_segment_reset.py`` decodes every visualisation message with ``json.loads(body.decode())``
  and looks for ``segment_boundary`` messages (``previous_segment``, ``new_segment``, ``timestamp_ns``); a
  consumer of the gzipped exchanges gunzips ``application/json+gzip`` bodies, as the deployed processor produced
  them.

The service runs as a subprocess with tiny random networks and the deployment's environment variables (exchange
names renamed to prove they are honoured; thresholds set so random networks keep points).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from service_helpers import URL, needs_broker, queue_exists

pytestmark = [needs_broker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


class DeploymentConsumer(threading.Thread):
    """The deployment's consumer side: exclusive queues on the three output exchanges; each message decoded by
    content type (``application/json+gzip``: gunzip then JSON; otherwise JSON text). Also runs the
    ``test_segment_reset.py`` monitor logic on the visualisation messages. Runs in its own thread (decoding whole
    map snapshots takes time the producer must not lose)."""

    def __init__(self, exchanges: dict[str, str]) -> None:
        import pika

        super().__init__(daemon=True)
        self.stopping = threading.Event()
        self.conn = pika.BlockingConnection(pika.URLParameters(URL))
        self.ch = self.conn.channel()
        self.queues = {}
        for key, ex in exchanges.items():
            self.ch.exchange_declare(ex, exchange_type="fanout", durable=True)
            self.queues[key] = self.ch.queue_declare("", exclusive=True).method.queue
            self.ch.queue_bind(self.queues[key], ex)
        self.got: dict[str, list[dict]] = {k: [] for k in exchanges}
        self.errors: list[str] = []
        self.content_types: dict[str, set] = {k: set() for k in exchanges}
        self.monitor_boundaries: list[dict] = []
        self.monitor_errors = 0

    def _decode(self, key: str, props, body: bytes) -> None:
        self.content_types[key].add((props.content_type, props.content_encoding))
        try:
            raw = gzip.decompress(body) if props.content_type == "application/json+gzip" else body
            self.got[key].append(json.loads(raw.decode()))
        except Exception as exc:  # what the deployment's consumer would hit
            self.errors.append(f"{key}: {type(exc).__name__}: {exc}")
        if key == "vis":                              # test_segment_reset.py, literally
            try:
                data = json.loads(body.decode())
                if data.get("type") == "segment_boundary":
                    self.monitor_boundaries.append(data)
            except Exception:  # it prints "Error processing message" and goes on
                self.monitor_errors += 1

    def run(self) -> None:
        for key, q in self.queues.items():
            self.ch.basic_consume(q, lambda ch, m, props, body, key=key: self._decode(key, props, body),
                                  auto_ack=True)
        while not self.stopping.is_set():
            self.conn.process_data_events(time_limit=0.1)
        self.conn.close()

    def wait(self, cond, timeout: float, what: str, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert self.is_alive(), "the consumer thread died"
            assert proc.poll() is None, f"slam3r serve exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + \
                ", ".join(f"{k} {len(v)}" for k, v in self.got.items()) + \
                f"; vis types {[m.get('type') for m in self.got['vis']]}; errors {self.errors[:3]}"
            time.sleep(0.05)

    def boundaries(self) -> list[dict]:
        return [m for m in self.got["vis"] if m.get("type") == "segment_boundary"]


def jpeg(rgb: np.ndarray, quality: int) -> bytes:
    return cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def phone_server_frame(ch, exchange: str, rgb: np.ndarray, phone_ts: int) -> None:
    import pika

    now = str(time.time_ns())
    h, w = rgb.shape[:2]
    headers = {"timestamp_ns": str(phone_ts), "server_received": now, "ntp_time": now, "ntp_offset": "0.0012",
               "width": str(w), "height": str(h)}
    ch.basic_publish(exchange, "", jpeg(rgb, 90),
                     pika.BasicProperties(content_type="application/octet-stream", headers=headers))


@pytest.fixture
def double_headers(monkeypatch):
    """Let pika send float header values as AMQP doubles, as the simulator's aio-pika does (pika only decodes
    them)."""
    import struct

    import pika.data

    original = pika.data.encode_value

    def encode_value(pieces, value):
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return original(pieces, value)

    monkeypatch.setattr(pika.data, "encode_value", encode_value)


def simulator_frame(ch, exchange: str, rgb: np.ndarray, segment_file: str, index: int, fps: float) -> None:
    import pika

    seconds = int(segment_file.split("_")[0])
    now = str(time.time_ns())
    h, w = rgb.shape[:2]
    headers = {"timestamp_ns": str(int((seconds + index / fps) * 1e9)), "server_received": now, "ntp_time": now,
               "width": w, "height": h, "resolution": "480p", "original_width": w, "original_height": h,
               "source_format": "MP4_FRAME", "output_format": "JPEG", "ntp_offset": 0.0012,
               "video_segment": segment_file, "frame_index": index}
    ch.basic_publish(exchange, "", jpeg(rgb, 85),
                     pika.BasicProperties(content_type="application/octet-stream", headers=headers))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from slam3r.models import TINY, Image2PointsModel, Local2WorldModel, preset

    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    Image2PointsModel(TINY).save_pretrained(d / "i2p")
    Local2WorldModel(preset("tiny", l2w=True)).save_pretrained(d / "l2w")
    return d


def scene(n: int, seed: int) -> list[np.ndarray]:
    from slam3r.data.synth import render_sequence

    return list(render_sequence(seed=seed, num_frames=n, width=128, height=96).rgb)


def serve_env(prefix: str, out_dir: Path) -> dict[str, str]:
    """The deployment's environment for ``slam3r serve``, exchanges renamed (``<name>_in`` / ``_out``)."""
    names = {"VIDEO_FRAMES_EXCHANGE": "frames_in", "RESTART_EXCHANGE": "restart_in",
             "SLAM3R_POSE_EXCHANGE": "poses_out", "SLAM3R_POINTCLOUD_EXCHANGE": "cloud_out",
             "SLAM3R_RECONSTRUCTION_VIS_EXCHANGE": "vis_out"}
    return {**os.environ, **names, "RABBITMQ_URL": URL, "SLAM3R_NAME_PREFIX": prefix,
            "SLAM3R_CONF_THRES_I2P": "1", "SLAM3R_CONF_THRES_L2W": "1",   # random tiny networks: confidences ~2
            "ENABLE_MESH_GENERATION": "true", "SLAM3R_MESH_UPDATE_FREQUENCY": "4", "SLAM3R_MESH_MIN_NEW_VOXELS": "1",
            "SLAM3R_MESH_DEPTH": "6", "SLAM3R_STREAM_IDLE_S": "5", "SLAM3R_SAVE_SEGMENT_POINTCLOUDS": "true",
            "SLAM3R_SEGMENT_OUTPUT_DIR": str(out_dir), "PYTHONPATH": str(ROOT / "src")}


def run_deployment(ch, prefix: str, consumer: DeploymentConsumer, proc: subprocess.Popen) -> dict[str, int]:
    """The server's start-up restart, a phone session, then two simulator segment files; returns frames sent."""
    import pika

    deadline = time.monotonic() + 120
    while not (queue_exists(prefix + "slam3r_video_frames_queue") and queue_exists(prefix + "slam3r_restart_queue")):
        assert proc.poll() is None and time.monotonic() < deadline, "serve never bound its queues"
        time.sleep(0.3)
    frames_ex = prefix + "frames_in"
    ch.basic_publish(prefix + "restart_in", "", b'{"type":"restart"}',
                     pika.BasicProperties(content_type="application/json"))
    # 1. the phone: 12 frames, no segment, no end marker; the idle timeout ends the stream
    for i, rgb in enumerate(scene(12, seed=1)):
        phone_server_frame(ch, frames_ex, rgb, T_PHONE + i * 33_000_000)
    consumer.wait(lambda: len(consumer.got["pose"]) == 12 and consumer.boundaries(), 120, "phone poses", proc)
    # 2. the simulator: two segment files in real time (5 fps); the first runs until a mesh update arrives
    sent = {"phone": 12}
    video = scene(120, seed=2)
    for seg, limit in (("0000_segment_000.mp4", 120), ("0005_segment_001.mp4", 8)):
        for i in range(limit):
            simulator_frame(ch, frames_ex, video[i], seg, i, fps=5.0)
            sent[seg] = i + 1
            if i >= 8 and any(m.get("type") == "mesh_update" for m in consumer.got["vis"]):
                break
            time.sleep(0.2)
    consumer.wait(lambda: len(consumer.got["pose"]) == sum(sent.values()) and len(consumer.boundaries()) == 3,
                  120, "every pose and three boundaries", proc)
    time.sleep(0.5)
    return sent


T_PHONE = 1_750_000_000_000_000_000


def test_deployment_producers_and_consumer_work_unchanged(weights, tmp_path, double_headers):
    import pika

    prefix = f"peer{uuid.uuid4().hex[:8]}-"
    consumer = DeploymentConsumer({"pose": prefix + "poses_out", "pointcloud": prefix + "cloud_out",
                                   "vis": prefix + "vis_out"})
    consumer.start()
    proc = subprocess.Popen([sys.executable, "-m", "slam3r.cli", "serve", "--weights", str(weights),
                             "--device", "cpu"], env=serve_env(prefix, tmp_path / "seg"), cwd=ROOT)
    conn = pika.BlockingConnection(pika.URLParameters(URL))
    try:
        sent = run_deployment(conn.channel(), prefix, consumer, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        consumer.stopping.set()
        consumer.join(10)
        cleanup = conn.channel()                      # this test's queues and exchanges off the shared broker
        for q in ("slam3r_video_frames_queue", "slam3r_restart_queue", "slam3r_dead_letter_queue"):
            cleanup.queue_delete(prefix + q)
        for ex in ("frames_in", "restart_in", "poses_out", "cloud_out", "vis_out", "slam3r_dead_letter_exchange"):
            cleanup.exchange_delete(prefix + ex)
        conn.close()
    check_deployment(consumer, sent, code)


def check_deployment(consumer: DeploymentConsumer, sent: dict[str, int], code: int) -> None:
    total = sum(sent.values())
    assert code == 0
    # frames sent = poses received, each once, in order; the deployment's decoder never fails
    stamps = [m["timestamp_ns"] for m in consumer.got["pose"]]
    keys = {(m["video_segment"], m["timestamp_ns"]) for m in consumer.got["pose"]}
    assert len(stamps) == total == len(keys) and consumer.errors == []
    assert stamps[:12] == [T_PHONE + i * 33_000_000 for i in range(12)]
    pose = consumer.got["pose"][0]
    assert set(pose) >= {"timestamp_ns", "processing_timestamp", "position", "orientation", "raw_pose_matrix"}
    assert isinstance(pose["processing_timestamp"], str) and set(pose["orientation"]) == set("xyzw")
    assert consumer.content_types["pose"] == {("application/json", None)}
    assert consumer.content_types["pointcloud"] == {("application/json+gzip", None)}
    # non-empty x, y, z point clouds and the visualisation messages of the deployed processor
    sizes = [len(m["points"]) for m in consumer.got["pointcloud"]]
    assert len(sizes) == total and sum(sizes) > 0
    assert all(len(p) == 3 for m in consumer.got["pointcloud"] for p in m["points"][:5])
    types = {m.get("type") for m in consumer.got["vis"]}
    assert {"points_update_incremental", "mesh_update", "segment_boundary"} <= types
    mesh = next(m for m in consumer.got["vis"] if m.get("type") == "mesh_update")
    assert len(mesh["faces"]) > 0 and len(mesh["vertex_colors"]) == len(mesh["vertices"])
    # segment boundaries: phone stream (implicit) ended by the idle timeout, then the two segment files
    b = [(m["previous_segment"], m["new_segment"]) for m in consumer.boundaries()]
    assert b == [(None, None), ("0000_segment_000.mp4", "0005_segment_001.mp4"), ("0005_segment_001.mp4", None)]
    assert consumer.monitor_boundaries == consumer.boundaries()       # test_segment_reset.py sees them all
    assert [m["frames"] for m in consumer.boundaries()] == [12, sent["0000_segment_000.mp4"],
                                                            sent["0005_segment_001.mp4"]]
