"""The GPU measurement script runs end to end (dry run: tiny networks on the CPU, the same steps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_run_dry_run(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_run.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    status = dict(line.split() for line in (tmp_path / "status.txt").read_text().splitlines())
    assert list(status) == ["env", "networks_auto", "networks_fp32", "pipeline", "streaming", "precision"]
    assert set(status.values()) == {"0"}, (status, proc.stdout[-3000:])
    assert "FPS at 64 px on" in (tmp_path / "pipeline.log").read_text()
    assert "FPS at 112 px on" in (tmp_path / "streaming.log").read_text()
    assert "caching saves" in (tmp_path / "networks_auto.log").read_text()
    assert "per-point deviation" in (tmp_path / "precision.log").read_text()
