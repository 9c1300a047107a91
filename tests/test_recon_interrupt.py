"""Interrupted and failed runs keep every finished output and never leave half-written or mixed files: a real
`slam3r recon --online` process on a looping MJPEG-over-HTTP stream, stopped by SIGINT / SIGTERM; re-runs into an
existing --out; runs that fail before their first registered frame."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from slam3r.cli import main
from slam3r.data.ply import read_ply
from slam3r.data.synth import render_sequence
from slam3r.data.trajectory_io import read_tum_trajectory

SRC = Path(__file__).resolve().parents[1] / "src"
S = 64  # tiny networks' resolution


@pytest.fixture(scope="module")
def weights(tiny_weights_dir) -> Path:
    return tiny_weights_dir


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    seq = render_sequence(seed=5, num_frames=24, width=96, height=72)
    return [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in seq.rgb]


@contextlib.contextmanager
def serve_mjpeg(jpegs: list[bytes], limit: int | None = None):
    """A live camera stand-in: an MJPEG-over-HTTP server on 127.0.0.1 looping ``jpegs`` at ~50 frames/s (and
    closing the connection after ``limit`` frames, a camera that stops). Yields the stream URL."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            i = 0
            try:
                while not stop.is_set() and (limit is None or i < limit):
                    jpg = jpegs[i % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                     + jpg + b"\r\n")
                    i += 1
                    time.sleep(0.02)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@pytest.fixture()
def mjpeg_url(jpegs):
    with serve_mjpeg(jpegs) as url:
        yield url


def _registered_frames(staged_preds: Path) -> int:
    """Frames the running writer has appended so far (its staged input_imgs.npy grows by S*S*3 bytes each)."""
    f = staged_preds / "input_imgs.npy"
    return max(0, (f.stat().st_size - 128) // (S * S * 3)) if f.is_file() else 0


def _load_all(out: Path, scene: str) -> dict:
    """Load every output file the way a user's tools would; fails on any half-written or invalid file."""
    summary = json.loads((out / "summary.json").read_text())
    cameras = json.loads((out / "cameras.json").read_text())
    stamps, poses = read_tum_trajectory(out / "trajectory.txt")
    cloud = read_ply(out / f"{scene}_recon.ply")
    glb = (out / f"{scene}_recon.glb").read_bytes()
    magic, version, length = struct.unpack("<4sII", glb[:12])
    assert (magic, version, length) == (b"glTF", 2, len(glb))
    preds = {p.stem: np.load(p, allow_pickle=False) for p in (out / "preds").glob("*.npy")}
    meta = json.loads((out / "preds" / "metadata.json").read_text())
    return dict(summary=summary, cameras=cameras, stamps=stamps, poses=poses, cloud=cloud, preds=preds, meta=meta)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_finishes_outputs_of_a_live_run(weights, mjpeg_url, tmp_path, sig, code):
    out = tmp_path / "live"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "slam3r.cli", "recon", mjpeg_url, "--online", "--weights", str(weights),
           "--device", "cpu", "--threads", "1", "--out", str(out), "--scene", "cam", "--quiet",
           "--conf-thres-l2w", "1.0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        staged = tmp_path / f".live.partial-{proc.pid}" / "preds"
        deadline = time.monotonic() + 180
        while _registered_frames(staged) < 12:  # wait on a state: a dozen frames registered
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run registered no frames in 180 s"
            time.sleep(0.05)
        assert not out.exists()  # nothing in --out while the run is going
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert f"stopped early ({signal.Signals(sig).name})" in stdout
    res = _load_all(out, "cam")
    s = res["summary"]
    assert s["interrupted"] is True and s["stop_reason"] == signal.Signals(sig).name and s["mode"] == "online"
    n = s["frames"]
    assert n >= 12
    assert {k: v.shape[0] for k, v in res["preds"].items()} == dict.fromkeys(
        ("local_pcds", "registered_pcds", "local_confs", "registered_confs", "input_imgs"), n)
    assert res["preds"]["registered_confs"].min() >= 1.0
    assert len(res["cameras"]) == n and [c["frame_id"] for c in res["cameras"]] == list(range(n))
    assert len(res["stamps"]) == n - len(s["unregistered_frames"]) and np.all(np.diff(res["stamps"]) > 0)
    assert len(res["cloud"]) == s["points"] > 0 and res["meta"]["scene_id"] == "cam"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live"]  # no staging or temporary files left


def test_rerun_replaces_the_whole_result(weights, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, im in enumerate(render_sequence(seed=3, num_frames=12, width=96, height=72).rgb):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    common = ["recon", str(frames), "--weights", str(weights), "--device", "cpu", "--out", str(out), "--quiet",
              "--conf-thres-l2w", "1.0"]
    assert main([*common, "--scene", "a", "--frame-plys"]) == 0
    assert (out / "a_recon.ply").is_file() and (out / "frames").is_dir()
    assert main([*common, "--scene", "b", "--max-frames", "8"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b_recon.glb", "b_recon.ply", "cameras.json", "preds",
                                                      "summary.json", "trajectory.txt"]
    res = _load_all(out, "b")
    assert res["summary"]["frames"] == 8 and res["summary"]["interrupted"] is False
    assert res["summary"]["stop_reason"] == "end of input"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out"]


def test_runs_that_register_nothing_leave_nothing(weights, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    cv2.imwrite(str(one / "0.png"), np.full((72, 96, 3), 128, np.uint8))
    # a staging directory left by a run that was killed (its process is gone) is cleaned up too
    dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1 if Path("/proc/sys/kernel/pid_max").is_file() \
        else 2**22 + 1  # no process can have this id
    (tmp_path / f".o.partial-{dead}" / "preds").mkdir(parents=True)
    for extra in ([], ["--online"]):
        assert main(["recon", str(one), "--weights", str(weights), "--out", str(tmp_path / "o" / "deep"), "--quiet",
                     *extra]) == 2
        assert "at least 2" in capsys.readouterr().err
    assert main(["recon", str(one), "--weights", str(weights), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]
    # a directory holding other files is never replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["recon", str(one), "--weights", str(weights), "--out", str(mine), "--quiet"]) == 2
    assert "holds no slam3r result" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"


def test_a_camera_that_stops_finishes_the_outputs(weights, jpegs, tmp_path, capsys):
    out = tmp_path / "cam"
    with serve_mjpeg(jpegs, limit=20) as url:
        rc = main(["recon", url, "--online", "--weights", str(weights), "--device", "cpu", "--out", str(out),
                   "--scene", "cam", "--quiet", "--conf-thres-l2w", "1.0"])
    assert rc == 0
    assert "stopped early" in capsys.readouterr().out
    res = _load_all(out, "cam")
    s = res["summary"]
    assert s["interrupted"] is True and "stopped sending frames" in s["stop_reason"]
    assert s["frames"] == 20 and res["preds"]["input_imgs"].shape[0] == 20 and len(res["cameras"]) == 20
