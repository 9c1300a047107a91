"""One prepared GPU job: the pipeline benchmark, then training for the rest of the budget, everything to ``$OUT``.

    python bench/gpu_run.py [--out $OUT] [--work /tmp/slam3r_gpu_run] [--minutes 8] [--bench-size released]
        [--bench-frames 40] [--i2p-config FILE] [--l2w-config FILE] [--set KEY=VALUE ...]

Meant for a lent accelerator that comes in short calls (see MODEL_CARD.md, "Training on a GPU"):

1. ``bench_pipeline.py`` (offline, random ``--bench-size`` weights, 224 px for ``released``) at fp32 and at bf16,
   each in its own process, with the peak GPU memory of each process; written to ``OUT/bench.json`` and
   ``OUT/bench_<precision>.log``.
2. ``train_curve.py``'s two stages (continued I2P, then anchor-regime L2W) for the minutes left, with the data
   drawn by ``data.workers`` processes (default 14 here, so the GPU is not starved), batch 64, bf16, in
   ``--work`` (checkpoints, logs, final weights ``WORK/model/{i2p,l2w}``).
3. Packing for the device tool's return limits (at most 8 files of 16 MiB, 2 folders deep): ``OUT/bench.json``,
   ``OUT/summary.json``, ``OUT/logs.tar.gz`` (training logs, learning curve, bench logs) and the final weights as
   ``OUT/model.tar.partNN`` (15 MiB pieces; ``cat OUT/model.tar.part* | tar x`` gives ``model/{i2p,l2w}``, a
   ``--weights`` directory). Checkpoints stay behind: with AdamW's moments they exceed the limits.

Defaults target the GPU (``device=cuda``); the test suite runs it on CPU with tiny settings (``--set device=cpu
...``). ``OUT/summary.json`` names the device, the budget and what each phase took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

GPU_TRAIN = ["device=cuda", "precision=bf16", "data.workers=14", "optim.batch_size=64", "threads=2",
             "log_every=10", "save_every=200"]
"""Training overrides of the GPU job (``--set`` adds to and overrides them)."""

PEAK_MEMORY = """
import runpy, sys, torch
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    if torch.cuda.is_available():
        print("PEAK_MEMORY_MB", torch.cuda.max_memory_allocated() / 2**20)
"""
"""Runs a bench script in this process and prints its peak CUDA memory at the end."""


def bench(out: Path, size: str, frames: int, device: str) -> list[dict]:
    """``bench_pipeline.py`` at fp32 and bf16; returns one dict per precision (fps, peak memory, device)."""
    rows = []
    for precision in ("fp32", "bf16"):
        cmd = [sys.executable, "-c", PEAK_MEMORY, str(HERE / "bench_pipeline.py"), "--size", size, "--frames",
               str(frames), "--device", device, "--precision", precision, "--no-naive"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        (out / f"bench_{precision}.log").write_text(proc.stdout + proc.stderr)
        row = {"precision": precision, "returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
        for line in proc.stdout.splitlines():
            if line.startswith("BENCH "):
                b = json.loads(line[6:])
                row.update(device=b.get("device"), fps=round(1 / b["fast_s_per_frame"], 2),
                           steady_s_per_frame=b.get("fast_steady_s_per_frame"))
            elif line.startswith("PEAK_MEMORY_MB"):
                row["peak_memory_mb"] = round(float(line.split()[1]), 1)
        rows.append(row)
        print("BENCH_ROW", json.dumps(row), flush=True)
    return rows


def last_step(log_csv: Path) -> int | None:
    """The last step logged in a training ``log.csv`` (None when the stage did not run)."""
    import csv

    if not log_csv.is_file():
        return None
    with log_csv.open() as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["step"]) + 1 if rows else 0


def pack(work: Path, model: Path, out: Path, piece: int = 15 * 2**20) -> None:
    """Logs into ``out/logs.tar.gz``; ``model/`` into ``out/model.tar.partNN`` pieces of ``piece`` bytes."""
    import io
    import tarfile

    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for f in sorted([*work.glob("*/log.csv"), *work.glob("*.csv"), *out.glob("bench_*.log")]):
            tar.add(f, arcname=str(f.relative_to(out if f.is_relative_to(out) else work)))
    for f in out.glob("bench_*.log"):
        f.unlink()  # inside logs.tar.gz now: the return holds at most 8 files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(model, arcname="model")
    data = buf.getvalue()
    for i in range(0, len(data), piece):
        (out / f"model.tar.part{i // piece:02d}").write_bytes(data[i:i + piece])


def main() -> None:
    import train_curve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=8.0, help="whole budget: benchmark + training")
    p.add_argument("--bench-size", default="released", help="bench_pipeline.py --size (released = 224 px)")
    p.add_argument("--bench-frames", type=int, default=40)
    p.add_argument("--bench-device", default="auto")
    p.add_argument("--out", default=os.environ.get("OUT"), help="what comes back (default $OUT)")
    p.add_argument("--work", default="/tmp/slam3r_gpu_run", help="scratch run directory (resumed when it exists)")
    train_curve.add_arguments(p, chunk_minutes=2, seeds=())
    args = p.parse_args()
    if not args.out:
        raise SystemExit("--out or $OUT is required")
    end = time.perf_counter() + 60 * args.minutes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = bench(out, args.bench_size, args.bench_frames, args.bench_device)
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    bench_s = time.perf_counter() - t0
    train_args = argparse.Namespace(**{**vars(args), "out": args.work, "set": [*GPU_TRAIN, *args.set]})
    t0 = time.perf_counter()
    # 20 s are kept for the final saves and packing; training gets at least 30 s even if the benchmark overran
    model = train_curve.train_stages(train_args, max(end - 20, time.perf_counter() + 30))
    summary = {"bench": rows, "bench_s": round(bench_s, 1), "train_s": round(time.perf_counter() - t0, 1),
               "budget_s": 60 * args.minutes, "overrides": train_args.set,
               "steps": {s: last_step(Path(args.work) / s / "log.csv") for s in ("i2p", "l2w")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    pack(Path(args.work), model, out)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
