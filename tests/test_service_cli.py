"""`slam3r serve` and `slam3r publish` as commands: configuration errors, and a full run with saved tiny weights."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch

from service_helpers import Harness, needs_broker, queue_exists, textured_frames
from slam3r.cli import main
from slam3r.service.broker import queue_names


def test_serve_rejects_a_bad_configuration(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RABBITMQ_URL", "http://not-amqp")
    assert main(["serve"]) == 2
    assert "rabbitmq_url" in capsys.readouterr().err
    for url in ("http://admin:s3cret@broker:5672/", "amqp://admin:s3cret@broker:notaport/", "amqp://admin:s3cret@"):
        monkeypatch.setenv("RABBITMQ_URL", url)
        assert main(["serve"]) == 2
        err = capsys.readouterr().err
        assert "rabbitmq_url" in err and "s3cret" not in err and "***" in err
    monkeypatch.delenv("RABBITMQ_URL")
    bad = tmp_path / "bad.yaml"
    bad.write_text("recon:\n  conf_thres_l2w: -1\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert "thresholds" in capsys.readouterr().err


def test_publish_reports_a_missing_source(capsys):
    assert main(["publish", "/nonexistent/video.mp4"]) == 2
    assert "not found" in capsys.readouterr().err


@needs_broker
@pytest.mark.slow
def test_serve_and_publish_commands(tmp_path):
    from slam3r.models import TINY, Image2PointsModel, Local2WorldModel, preset

    torch.manual_seed(0)
    Image2PointsModel(TINY).save_pretrained(tmp_path / "w" / "i2p")
    Local2WorldModel(preset("tiny", l2w=True)).save_pretrained(tmp_path / "w" / "l2w")
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, rgb in enumerate(textured_frames(12)):
        cv2.imwrite(str(frames_dir / f"frame{i:03d}.png"), rgb[..., ::-1])
    h = Harness()
    env = {**os.environ, "SLAM3R_NAME_PREFIX": h.prefix, "SLAM3R_CONF_THRES_L2W": "1", "SLAM3R_ENCODING": "json",
           "RABBITMQ_URL": h.cfg.rabbitmq_url, "SAVE_SEGMENTS": "true", "SEGMENT_OUTPUT_DIR": str(tmp_path / "seg")}
    serve = subprocess.Popen([sys.executable, "-m", "slam3r.cli", "serve", "--weights", str(tmp_path / "w"),
                              "--device", "cpu", "--config", "configs/wild.yaml", "--workers", "2"], env=env,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        exchange = h.cfg.name(h.cfg.frames_exchange)
        deadline = time.monotonic() + 90
        # Two worker processes share the streams through shard queues; wait until both are up (each has its
        # restart queue), then stream; the single-worker queue is not there to fill.
        restart_queues = [queue_names(dataclasses.replace(h.cfg, num_workers=2, worker_index=i))[1] for i in range(2)]
        while not all(queue_exists(q) for q in restart_queues):
            assert time.monotonic() < deadline and serve.poll() is None, "serve never bound its queues"
            time.sleep(0.5)
        assert main(["publish", str(frames_dir), "--fps", "50", "--segment", "cli", "--exchange", exchange,
                     "--url", h.cfg.rabbitmq_url, "--stream-id", "cam-9"]) == 0
        h.wait_for(lambda: any(m.get("event") == "end" for m in h.received["vis"]), 90, "segment end")
        assert len({m["timestamp_ns"] for m in h.received["pose"]}) == 12
        assert {m["stream_id"] for m in h.received["pose"]} == {"cam-9"}
        end = next(m for m in h.received["vis"] if m.get("event") == "end")
        assert end["video_segment"] == "cli" and end["frames"] == 12
        assert os.path.isfile(end["files"]["trajectory"])
        assert not queue_exists(h.cfg.name(h.cfg.frames_queue))
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        h.close()


def test_building_the_cli_parser_imports_no_torch():
    code = ("import sys; from slam3r.cli import build_parser; p = build_parser(); p.parse_args(['serve']); "
            "heavy = [m for m in ('torch', 'cv2', 'pika', 'open3d') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("cores", "workers", "threads", "want"), [(4, 2, None, 2), (2, 4, None, 1), (4, 2, 3, 3)])
def test_workers_share_the_cores(monkeypatch, cores, workers, threads, want):
    """``serve --workers N`` gives each worker process its share of the cores (``--threads`` overrides), so N
    workers do not each start a thread per core."""
    import argparse
    import multiprocessing

    from slam3r import system
    from slam3r.service import cli as service_cli
    from slam3r.service.config import load_config

    started = []

    class FakeProcess:
        def __init__(self, target, name, args):
            started.append(args)
            self.exitcode, self.pid = 0, None

        def start(self):
            pass

        def join(self):
            pass

        def is_alive(self):
            return False

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: argparse.Namespace(Process=FakeProcess))
    monkeypatch.setattr(system, "usable_cores", lambda: cores)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    args = argparse.Namespace(workers=workers, threads=threads, weights="default", device="cpu", log_level="INFO")
    assert service_cli._run_workers(load_config(None), args) == 0
    assert len(started) == workers and {a[-1] for a in started} == {want}
