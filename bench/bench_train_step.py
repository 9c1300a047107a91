"""Training step time, fp32 against bf16 autocast, measured interleaved on the same batches.

    python bench/bench_train_step.py [--stage i2p|l2w] [--preset default] [--batch 8] [--rounds 6] [--threads 1]

Builds one trainer per precision (same seed, same initial weights, the bundled model's architecture), then
alternates ``fp32, bf16, fp32, bf16, ...`` steps so both see the same machine load (the CPU may be shared), and
reports the median step time of each, the speed-up, and how long the step waited for its batch with
``data.workers`` processes drawing ahead (``wait`` ~ 0 means the data never starves the step). Prints a table and
a ``BENCH {json}`` line.
"""

from __future__ import annotations

import argparse
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
    from slam3r.train.config import TrainConfig
    from slam3r.train.trainer import Trainer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="i2p", choices=("i2p", "l2w"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6, help="steps per precision (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="data.workers of the wait measurement")
    parser.add_argument("--cache", default="outputs/train_cache")
    parser.add_argument("--sequences", type=int, default=4)
    args = parser.parse_args()

    data = {"cache_dir": args.cache, "num_sequences": args.sequences, "frames_per_sequence": 48,
            "workers": args.workers}
    trainers, batches = {}, {}
    with tempfile.TemporaryDirectory() as out:
        for precision in ("fp32", "bf16"):
            cfg = {"preset": args.preset, "data": data, "device": "cpu", "threads": args.threads,
                   "precision": precision, "optim": {"steps": 10_000, "batch_size": args.batch}}
            if args.stage == "l2w":
                cfg.update(encoder="default", init="")
            trainers[precision] = Trainer(args.stage, from_dict(TrainConfig, cfg), Path(out) / precision,
                                          log=lambda _: None)
        t = trainers["fp32"]
        trainers["bf16"].model.load_state_dict(t.model.state_dict())
        batches_it = t.batches(args.rounds + 1)
        times = {"fp32": [], "bf16": []}
        waits = []
        for i in range(args.rounds + 1):
            t0 = time.perf_counter()
            batch = next(batches_it)
            waits.append(time.perf_counter() - t0)
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                trainers[precision].train_step(batch)
                if i > 0:
                    times[precision].append(time.perf_counter() - t0)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    rows = [{"precision": p, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
             "samples_per_s": round(args.batch / statistics.median(v), 2)} for p, v in times.items()]
    report(f"train step ({args.stage}, {args.preset}, batch {args.batch}, {torch.get_num_threads()} threads)", rows,
           {"speedup_bf16": round(fp32 / bf16, 2), "data_wait_s_after_first": round(max(waits[1:]), 4),
            "first_batch_s": round(waits[0], 2), "workers": args.workers})
    print(f"bf16 speed-up x{fp32 / bf16:.2f}; longest wait for a batch after the first: {max(waits[1:]) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
