"""The long-run driver ``bench/train_curve.py`` end to end with tiny settings: both stages train under the time
budget, each chunk is scored on a held-out scene, and the final weights load as a ``--weights`` directory."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = {"num_sequences": 2, "frames_per_sequence": 12, "num_views": 3, "stride": [1, 2], "num_scene": 2,
        "num_keyframes": 2, "l2w_span": [6, 10]}


def test_train_curve_dry_run(tmp_path: Path) -> None:
    data = {**DATA, "cache_dir": str(tmp_path / "cache")}
    common = {"device": "cpu", "threads": 1, "log_every": 1, "save_every": 100, "data": data,
              "optim": {"steps": 1000, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1}}
    (tmp_path / "i2p.yaml").write_text(yaml.safe_dump({"preset": "tiny", **common}))
    (tmp_path / "l2w.yaml").write_text(yaml.safe_dump({**common, "zero_point_embedder": True,
                                                       "data": {**data, "l2w_order": "anchor"}}))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench/train_curve.py"), "--out", str(out), "--minutes", "0.5",
                           "--chunk-minutes", "0.1", "--l2w-share", "0.4", "--i2p-config", str(tmp_path / "i2p.yaml"),
                           "--l2w-config", str(tmp_path / "l2w.yaml"), "--seeds", "1000001", "--frames", "20",
                           "--set", "precision=bf16"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (out / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    stages = [r["stage"] for r in rows]
    assert "i2p" in stages and "l2w" in stages and stages == sorted(stages)  # i2p first, then l2w
    for stage, key in (("i2p", "recovered"), ("l2w", "pipe_recovered")):
        part = [r for r in rows if r["stage"] == stage]
        steps = [int(r["step"]) for r in part]
        assert steps == sorted(steps) and steps[0] >= 1
        assert all(int(r["samples"]) == 2 * int(r["step"]) for r in part)
        assert all(math.isfinite(float(r[key])) and float(r[key]) >= 0 for r in part)
    assert (out / "i2p" / "DONE").is_file() and (out / "l2w" / "DONE").is_file()
    from slam3r.models.registry import load_models

    i2p, l2w = load_models(str(out / "model"))
    assert i2p.cfg.img_size == l2w.cfg.img_size == (64, 64)
