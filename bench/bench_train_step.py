"""Training step time, fp32 against bf16 autocast, measured interleaved on the same batches.

    python bench/bench_train_step.py [--stage i2p|l2w] [--preset default] [--batch 8] [--rounds 6] [--threads 1]

Builds one trainer per precision (same seed, same initial weights, the bundled model's architecture), then
alternates ``fp32, bf16, fp32, bf16, ...`` steps so both see the same machine load (the CPU may be shared), and
reports the median wall and CPU time of a step for each, the speed-ups (on a shared machine the CPU time is
the meaningful one: the wall time is mostly waiting for a core), and how long the step waited for its batch with
``data.workers`` processes drawing ahead (``wait`` ~ 0 means the data never starves the step). Prints a table and
a ``BENCH {json}`` line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import report  # noqa: E402


def main() -> None:
    import torch

    from slam3r.config import from_dict
    from slam3r.models.loading import bundled_dir
    from slam3r.runtime import add_runtime_arguments
    from slam3r.train.config import TrainConfig
    from slam3r.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="i2p", choices=("i2p", "l2w"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6, help="steps per precision (after one warm-up each)")
    parser.add_argument("--workers", type=int, default=1, help="data.workers of the wait measurement")
    parser.add_argument("--cache", default="outputs/train_cache")
    parser.add_argument("--sequences", type=int, default=4)
    add_runtime_arguments(parser, options=("threads",), threads_default=1)
    args = parser.parse_args()

    data = {"cache_dir": args.cache, "num_sequences": args.sequences, "frames_per_sequence": 48,
            "workers": args.workers}
    trainers, batches = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for precision in ("fp32", "bf16"):
            cfg = {"preset": args.preset, "data": data, "device": "cpu", "threads": args.threads,
                   "precision": precision, "optim": {"steps": 10_000, "batch_size": args.batch}}
            if args.stage == "l2w":  # the bundled pair: its L2W architecture, reading its I2P encoder
                cfg.update(preset="", init=str(bundled_dir() / "l2w"), encoder=str(bundled_dir() / "i2p"))
            trainers[precision] = Trainer(args.stage, from_dict(TrainConfig, cfg), Path(out) / precision,
                                          log=lambda _: None)
        t = trainers["fp32"]
        trainers["bf16"].model.load_state_dict(t.model.state_dict())
        batches_it = t.batches(args.rounds + 1)
        times = {"fp32": [], "bf16": []}
        cpu = {"fp32": [], "bf16": []}
        waits = []
        for i in range(args.rounds + 1):
            t0 = time.perf_counter()
            batch = next(batches_it)
            waits.append(time.perf_counter() - t0)
            for precision in ("fp32", "bf16"):
                t0, c0 = time.perf_counter(), time.process_time()
                trainers[precision].train_step(batch)
                if i > 0:
                    times[precision].append(time.perf_counter() - t0)
                    cpu[precision].append(time.process_time() - c0)
    med = {p: statistics.median(v) for p, v in times.items()}
    med_cpu = {p: statistics.median(v) for p, v in cpu.items()}
    rows = [{"precision": p, "median_s": round(med[p], 3), "min_s": round(min(times[p]), 3),
             "median_cpu_s": round(med_cpu[p], 3), "samples_per_s": round(args.batch / med[p], 2)} for p in times]
    report(f"train step ({args.stage}, {args.preset}, batch {args.batch}, {torch.get_num_threads()} threads)", rows,
           {"speedup_bf16": round(med["fp32"] / med["bf16"], 2),
            "speedup_bf16_cpu_time": round(med_cpu["fp32"] / med_cpu["bf16"], 2),
            "data_wait_s_after_first": round(max(waits[1:]), 4), "first_batch_s": round(waits[0], 2),
            "workers": args.workers, "load_average_1min": os.getloadavg()[0]})
    print(f"bf16 speed-up x{med['fp32'] / med['bf16']:.2f} wall, x{med_cpu['fp32'] / med_cpu['bf16']:.2f} CPU time "
          f"(CPU time is what counts on a shared machine); longest wait for a batch after the first: "
          f"{max(waits[1:]) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
