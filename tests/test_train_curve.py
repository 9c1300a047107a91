"""The long-run driver ``bench/train_curve.py`` and the GPU job ``bench/gpu_run.py`` end to end on CPU with tiny
settings: both stages train under the time budget, each chunk is scored on a held-out scene, the GPU job's
benchmark and packed outputs fit the device tool's return limits, and the final weights load as a ``--weights``
directory."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = {"num_sequences": 2, "frames_per_sequence": 12, "num_views": 3, "stride": [1, 2], "num_scene": 2,
        "num_keyframes": 2, "l2w_span": [6, 10]}


def tiny_recipes(tmp_path: Path) -> list[str]:
    data = {**DATA, "cache_dir": str(tmp_path / "cache")}
    common = {"device": "cpu", "threads": 1, "log_every": 1, "save_every": 100, "data": data,
              "optim": {"steps": 1000, "batch_size": 2, "lr": 1e-3, "warmup_steps": 1}}
    (tmp_path / "i2p.yaml").write_text(yaml.safe_dump({"preset": "tiny", **common}))
    (tmp_path / "l2w.yaml").write_text(yaml.safe_dump({**common, "zero_point_embedder": True,
                                                       "data": {**data, "l2w_order": "anchor"}}))
    return ["--i2p-config", str(tmp_path / "i2p.yaml"), "--l2w-config", str(tmp_path / "l2w.yaml")]


def run_script(name: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_train_curve_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_script("train_curve.py", "--out", str(out), "--minutes", "0.5", "--chunk-minutes", "0.1", "--l2w-share",
               "0.4", *tiny_recipes(tmp_path), "--seeds", "1000001", "--frames", "20", "--set", "precision=bf16")
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
    assert all(int(r["pipe_registered"]) >= 2 for r in rows if r["stage"] == "l2w")
    assert (out / "i2p" / "DONE").is_file() and (out / "l2w" / "DONE").is_file()
    from slam3r.models.loading import load_models

    i2p, l2w = load_models(str(out / "model"))
    assert i2p.cfg.img_size == l2w.cfg.img_size == (64, 64)


def test_gpu_run_dry_run_on_cpu(tmp_path: Path) -> None:
    out, work = tmp_path / "OUT", tmp_path / "work"
    run_script("gpu_run.py", "--out", str(out), "--work", str(work), "--minutes", "0.5", "--chunk-minutes", "0.1",
               "--bench-size", "tiny", "--bench-frames", "12", "--bench-device", "cpu", *tiny_recipes(tmp_path),
               "--set", "device=cpu", "data.workers=2", "threads=1", "optim.batch_size=2")
    bench = json.loads((out / "bench.json").read_text())
    assert [b["precision"] for b in bench] == ["fp32", "bf16"]
    assert all(b["returncode"] == 0 and b["fps"] > 0 and b["device"] for b in bench)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"]["i2p"] >= 1 and summary["steps"]["l2w"] >= 1
    assert "data.workers=2" in summary["overrides"] and "data.workers=14" in summary["overrides"]  # ours win
    files = [f for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 and f.parent == out for f in files)
    with tarfile.open(fileobj=io.BytesIO(b"".join(f.read_bytes() for f in sorted(out.glob("model.tar.part*"))))) as t:
        t.extractall(tmp_path / "unpacked", filter="data")
    with tarfile.open(out / "logs.tar.gz") as t:
        names = t.getnames()
    assert "i2p/log.csv" in names and "l2w/log.csv" in names and "bench_bf16.log" in names
    from slam3r.models.loading import load_models

    i2p, l2w = load_models(str(tmp_path / "unpacked" / "model"))
    assert i2p.cfg.img_size == (64, 64)


def test_rotation_recovery_skips_frames_the_pipeline_did_not_register() -> None:
    """An unregistered frame (NaN pose) drops out of the comparison instead of turning every mean into NaN."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_registration import compare, frame_steps, registered

    def rz(deg: float) -> np.ndarray:
        t = np.radians(deg)
        return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])

    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, :3, :3] = [rz(10 * i) for i in range(4)]
    pred = c2w[:, :3, :3].copy()  # a perfect pipeline that lost frame 2
    pred[2] = np.nan
    rot, gt = registered(pred, c2w)
    assert len(rot) == 3
    step = compare(frame_steps(rot), frame_steps(gt))
    assert math.isclose(step["recovered"], 1.0) and step["error_deg"] < 1e-6
