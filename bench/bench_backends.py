"""Registration backends and loop closure with the bundled model on the held-out benchmark scenes.

    python bench/bench_backends.py [--seeds 1000001 ...] [--frames 150] [--runs l2w geometric geometric+loop]

The ``bench/bench_quality.py`` protocol (``slam3r.demo.evaluate_scene``: the demo's pipeline parameters, published
scoring with RANSAC + ICP alignment, confidence threshold 1), run once per configuration on the same scenes:

* ``l2w``: the shipped pipeline (the weights' ``recon.yaml``);
* ``geometric``: ``registration: geometric`` (robust Sim(3) fit of the I2P window's registered frames);
* ``flow``: ``registration: flow`` (robust Sim(3) fit of the frame's own points to the previous frame's world
  points at optical-flow matches);
* ``...+loop``: with ``loop_closure`` on (retrieval-head candidates, I2P pair verification, GTSAM pose graph).

Scores are computed from the written output directory, i.e. after the loop-closure correction. The default 150
frames are one 1.25-loop traversal of the held-out trajectories (``DEMO_LOOP_FRAMES``), so the end revisits the
start; at the protocol's 60 frames the camera covers half a loop and there is nothing to close. Prints a Markdown
table (lengths in cm).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from slam3r.demo import DEMO_LOOP_FRAMES, evaluate_scene
from slam3r.eval.recon import EvalConfig
from slam3r.recon.config import ReconConfig
from slam3r.runtime import add_runtime_arguments, load_runtime, resolve_settings

SEEDS = (1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)
RUNS = {
    "l2w": {},
    "l2w+loop": {"loop_closure": True},
    "geometric": {"registration": "geometric"},
    "geometric+loop": {"registration": "geometric", "loop_closure": True},
    "flow": {"registration": "flow"},
    "flow+loop": {"registration": "flow", "loop_closure": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=DEMO_LOOP_FRAMES)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--loop-min-gap", type=int, default=None,
                        help="loop candidates at least this many frames older (default: 40%% of --frames)")
    parser.add_argument("--out", default="outputs/bench_backends")
    add_runtime_arguments(parser, options=("weights",))
    args = parser.parse_args()
    gap = args.loop_min_gap or max(1, int(0.4 * args.frames))
    rt = load_runtime(args.weights, "cpu", None)
    eval_conf = resolve_settings(EvalConfig, "eval", weights=args.weights).value.conf_thresh
    rows: dict[str, list[dict]] = {name: [] for name in args.runs}
    for seed in args.seeds:
        for name in args.runs:
            recon = {**RUNS[name], **({"loop_min_gap": gap} if "loop" in name else {})}
            cfg = resolve_settings(ReconConfig, "recon", weights=args.weights, flags=recon).value
            r = evaluate_scene(rt.i2p, rt.l2w, seed, args.frames, Path(args.out) / name / str(seed), cfg, eval_conf,
                               baseline=False)
            m = r["model"]
            rows[name].append({"seed": seed, "ate": m["ate_cm"], "acc": m["accuracy_cm"], "comp": m["completion_cm"],
                               "fps": m["fps"]})
            print(f"seed {seed} {name}: ATE {m['ate_cm']:.2f} acc {m['accuracy_cm']:.2f} comp "
                  f"{m['completion_cm']:.2f} cm, {m['fps']:.1f} FPS", flush=True)
    head = " | ".join(f"{name} ATE / acc / comp / FPS" for name in args.runs)
    print(f"\n| scene seed | {head} |\n|---|" + "---|" * len(args.runs))
    for i, seed in enumerate([*args.seeds, "mean"]):
        cells = []
        for name in args.runs:
            vals = rows[name][i] if seed != "mean" else {k: float(np.mean([r[k] for r in rows[name]]))
                                                        for k in ("ate", "acc", "comp", "fps")}
            cells.append(f"{vals['ate']:.2f} / {vals['acc']:.2f} / {vals['comp']:.2f} / {vals['fps']:.1f}")
        print(f"| {seed} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
