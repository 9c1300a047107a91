"""Quality of the bundled model on held-out synthetic scenes vs the trivial plane baseline.

    python bench/bench_quality.py [--seeds 1000001 1000002 ...] [--frames 60] [--weights default] [--out DIR]
        [--set KEY=VALUE ...]

Each scene is rendered, reconstructed with the weights' settings (for the bundled model its recon.yaml) and
scored with the published protocol exactly as ``slam3r demo`` does; the demo scene (seed 1,000,000) is left out by
default, so these scenes were used neither for training nor for tuning. ``--set`` overrides pipeline parameters
(``ReconConfig`` fields, e.g. ``l2w_frame=anchor``) on top of them. Prints a Markdown table and writes
``summary.json`` beside the per-scene outputs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from slam3r.demo import DEMO_FRAMES, evaluate_scene
from slam3r.eval.recon import EvalConfig
from slam3r.runtime import add_runtime_arguments, recon_settings, resolve_settings, runtime_from_args

SEEDS = (1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=DEMO_FRAMES)
    parser.add_argument("--out", default="outputs/bench_quality")
    add_runtime_arguments(parser, device_default="cpu")
    args = parser.parse_args()
    cfg = recon_settings(args).value
    eval_conf = resolve_settings(EvalConfig, "eval", weights=args.weights, config=args.config).value.conf_thresh
    rt = runtime_from_args(args)
    i2p, l2w = rt.i2p, rt.l2w
    rows = []
    for seed in args.seeds:
        r = evaluate_scene(i2p, l2w, seed, args.frames, Path(args.out) / str(seed), cfg, eval_conf)
        m, b = r["model"], r["baseline"]
        rows.append({"seed": seed, "acc": m["accuracy_cm"], "comp": m["completion_cm"], "ate": m["ate_cm"],
                     "fps": m["fps"], "stride": m["stride"], "base_acc": b["accuracy_cm"],
                     "base_comp": b["completion_cm"]})
        print(f"seed {seed}: model {m['accuracy_cm']:.2f} / {m['completion_cm']:.2f} cm, "
              f"baseline {b['accuracy_cm']:.2f} / {b['completion_cm']:.2f} cm", flush=True)
    mean = {k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "seed"}
    lines = ["| scene seed | model acc (cm) | model comp (cm) | ATE (cm) | FPS | baseline acc (cm) | "
             "baseline comp (cm) | acc gain | comp gain |", "|---|---|---|---|---|---|---|---|---|"]
    for row in [*rows, {"seed": "mean", **mean}]:
        lines.append(f"| {row['seed']} | {row['acc']:.2f} | {row['comp']:.2f} | {row['ate']:.2f} | "
                     f"{row['fps']:.1f} | {row['base_acc']:.2f} | {row['base_comp']:.2f} | "
                     f"x{row['base_acc'] / row['acc']:.2f} | x{row['base_comp'] / row['comp']:.2f} |")
    print("\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps({"rows": rows, "mean": mean, "frames": args.frames,
                                                             "weights": args.weights, "overrides": args.set}, indent=1))


if __name__ == "__main__":
    main()
