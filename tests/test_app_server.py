"""``slam3r app`` as a server process: SIGTERM (``docker stop``) shuts it down and removes its temporary work
folder, uploads included, as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

pytest.importorskip("gradio", reason="gradio is not installed (pip install gradio)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("sig", [signal.SIGTERM])  # SIGINT takes the same path (KeyboardInterrupt)
def test_signal_removes_the_temporary_work_folder(tmp_path: Path, sig: signal.Signals) -> None:
    from slam3r.models import TINY, Image2PointsModel, Local2WorldModel, preset

    torch.manual_seed(0)
    Image2PointsModel(TINY).save_pretrained(tmp_path / "weights" / "i2p")
    Local2WorldModel(preset("tiny", l2w=True)).save_pretrained(tmp_path / "weights" / "l2w")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("GRADIO_TEMP_DIR", None)
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "slam3r.cli", "app", "--weights", str(tmp_path / "weights"),
                                 "--device", "cpu", "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT,
                                env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        (work,) = tmp.glob("slam3r-app-*")
        assert (work / "sessions").is_dir()
        proc.send_signal(sig)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not work.exists(), log.read_text()
