"""End to end: the service driving the real StreamingReconstructor (tiny random networks) over RabbitMQ.

Frames are rendered synthetic views sent as PNG (lossless), so the service's poses must equal those of the same
engine run directly on the frames, with and without a broker connection drop in the middle. The service pushes
one frame at a time here (``batch_size=1``) like the reference run: L2W registers the frames available together
jointly, so micro-batches of several frames legitimately change the results.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from service_helpers import Harness, close_broker_connection, needs_broker, run_in_thread
from slam3r.models import TINY, Image2PointsModel, Local2WorldModel, preset
from slam3r.recon.config import ReconConfig
from slam3r.recon.streaming import StreamingReconstructor
from slam3r.service.broker import connection_name
from slam3r.service.publish import FramePublisher
from slam3r.service.worker import Service

pytestmark = [needs_broker, pytest.mark.slow]

N = 40
CONF_L2W = 1.0          # random tiny networks have confidences around 2: keep their points


@pytest.fixture(scope="module")
def scene():
    from slam3r.data.synth import render_sequence

    torch.manual_seed(0)
    i2p, l2w = Image2PointsModel(TINY).eval(), Local2WorldModel(preset("tiny", l2w=True)).eval()
    rgb = render_sequence(seed=123_456, num_frames=N, width=96, height=72).rgb
    stamps = [1_700_000_000_000_000_000 + i * 33_333_333 for i in range(N)]
    cfg = ReconConfig(conf_thres_l2w=CONF_L2W)
    ref = StreamingReconstructor(i2p, l2w, cfg)
    results = []
    for frame, ts in zip(rgb, stamps):
        results += ref.push(frame, ts)
    results += ref.flush()
    assert [r.timestamp_ns for r in results] == stamps
    return i2p, l2w, cfg, rgb, stamps, {r.timestamp_ns: r.pose_c2w for r in results}


class Recording:
    """StreamingReconstructor that records the timestamps it was given."""

    def __init__(self, inner: StreamingReconstructor, log: list[int]) -> None:
        self.inner, self.log = inner, log

    def push_many(self, rgbs, timestamps=None):
        self.log.extend(timestamps)
        return self.inner.push_many(rgbs, timestamps)

    def flush(self):
        return self.inner.flush()

    def reset(self):
        self.inner.reset()


def run_service(scene, tmp_path, drop: bool, **changes):
    i2p, l2w, cfg, rgb, stamps, ref_poses = scene
    h = Harness()
    pushed: list[int] = []
    svc_cfg = dataclasses.replace(h.cfg, save_segments=True, segment_output_dir=str(tmp_path), batch_size=1,
                                  **changes)
    svc = Service(svc_cfg, lambda: Recording(StreamingReconstructor(i2p, l2w, cfg), pushed),
                  net_size=i2p.cfg.img_size[0], conf_thres_l2w=cfg.conf_thres_l2w)
    thread, code = run_in_thread(svc)
    try:
        assert svc.link.connected.wait(10)
        with FramePublisher(svc_cfg.rabbitmq_url, svc_cfg.name(svc_cfg.frames_exchange)) as pub:
            for i, (frame, ts) in enumerate(zip(rgb, stamps)):
                if drop and i == N // 2:
                    h.wait_for(lambda: len(h.received["pose"]) >= 13, 120, "first poses")
                    close_broker_connection(connection_name(svc_cfg))
                pub.publish(cv2.imencode(".png", frame[..., ::-1])[1].tobytes(),
                            {"timestamp_ns": ts, "video_segment": "e2e", "stream_id": "drone-7"})
            pub.end_segment("e2e", "drone-7")
        h.wait_for(lambda: any(m.get("event") == "end" for m in h.received["vis"]), 180, "segment end")
        h.collect(0.3)
        assert h.queue_depth(svc_cfg.frames_queue) == 0
        svc.stop()
        thread.join(60)
        assert code == [0]
        return h.received, pushed, svc
    finally:
        h.close()


def first(msgs):
    out = {}
    for m in msgs:
        out.setdefault(m["timestamp_ns"], m)
    return out


def check(received, pushed, scene):
    *_, stamps, ref_poses = scene
    poses, points = first(received["pose"]), first(received["points"])
    assert list(poses) == stamps and list(points) == stamps              # every frame, in order
    assert pushed == stamps                                               # each registered exactly once
    for ts in stamps:
        np.testing.assert_allclose(np.asarray(poses[ts]["raw_pose_matrix"]), ref_poses[ts], atol=1e-3)
    assert all(m["stream_id"] == "drone-7" for m in received["pose"])
    n_points = [len(m["points"]) if "points" in m else len(m["xyz"]) for m in points.values()]
    assert sum(n_points) > 0
    end = [m for m in received["vis"] if m.get("event") == "end"]
    assert len(end) == 1 and end[0]["frames"] == N and end[0]["points"] > 0
    traj = Path(end[0]["files"]["trajectory"]).read_text().splitlines()[1:]
    assert [round(float(line.split()[0]) * 1e9) for line in traj] == pytest.approx(stamps, abs=1e3)
    assert Path(end[0]["files"]["points"]).stat().st_size > 0


def test_real_engine_over_rabbitmq(scene, tmp_path):
    received, pushed, _ = run_service(scene, tmp_path, drop=False)
    check(received, pushed, scene)


def test_real_engine_survives_a_connection_drop(scene, tmp_path):
    received, pushed, svc = run_service(scene, tmp_path, drop=True, encoding="msgpack")
    check(received, pushed, scene)
    assert svc.link.reconnects >= 1 and svc.stats.duplicates > 0
