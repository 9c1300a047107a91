"""Which loop-candidate score finds real revisits with the bundled model: the retrieval head or a global descriptor
of the encoder tokens?

    python bench/bench_loop_scoring.py [--seeds 1000001 ...] [--frames 150] [--weights default]

Each held-out scene is rendered for one 1.25-loop traversal. Keyframes are every 3rd frame; queries are the
keyframes of the last 20% (the revisit); candidates are keyframes at least 40% of the run older (as
``loop_min_gap`` would allow), taken one frame off the queries' grid (``--offset``): the generator's loops are
periodic, so a 1.25-loop run otherwise contains pixel-identical repeats that any descriptor finds. A candidate's ground-truth co-visibility with the query is the fraction of its GT
points (8 x 8 sample) that the query camera sees on its own GT surface (depth within 5%). Printed per scoring
method: the mean GT co-visibility of the top-1 candidate and how often the top-1 is the best co-visible one, beside
a random pick and the GT-best (ceiling).

``--verify``: instead, run the pipeline (the weights' ``recon.yaml``, loop closure on, offline) on each scene and
split the loop verifications by the GT co-visibility of the pair (new keyframe's points seen by the old camera):
accepted true loops (>= 0.2), accepted spurious ones (< 0.05), and the verification statistics of each
(``seen``: fraction of the new points inside the old view, ``agree``: fraction of those on the old surface).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from slam3r.data.preprocess import to_tensor
from slam3r.demo import DEMO_LOOP_FRAMES, render_heldout
from slam3r.geometry.camera import backproject_depth
from slam3r.recon.loop import global_descriptor
from slam3r.runtime import add_runtime_arguments, load_runtime

SEEDS = (1_000_001, 1_000_002, 1_000_003, 1_000_004, 1_000_005)


def covisibility(seq, q: int, c: int) -> float:
    """Fraction of candidate ``c``'s GT points (8 x 8 sample) seen by query ``q`` on its own GT surface."""
    h, w = seq.depth.shape[1:]
    grid_v, grid_u = np.linspace(0, h - 1, 8).astype(int), np.linspace(0, w - 1, 8).astype(int)
    cam = backproject_depth(seq.depth[c:c + 1], seq.K)[0][grid_v][:, grid_u].reshape(-1, 3)
    world = cam @ seq.c2w[c, :3, :3].T + seq.c2w[c, :3, 3]
    w2c = np.linalg.inv(seq.c2w[q])
    p = world @ w2c[:3, :3].T + w2c[:3, 3]
    z = p[:, 2]
    uv = p[:, :2] / np.maximum(z, 1e-6)[:, None] * seq.K[[0, 1], [0, 1]] + seq.K[:2, 2]
    u, v = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    inside = (z > 0.05) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ok = np.zeros(len(z), bool)
    ok[inside] = np.abs(seq.depth[q][v[inside], u[inside]] - z[inside]) < 0.05 * z[inside]
    return float(ok.mean())


def verify(seeds: list[int], frames: int, weights: str) -> None:
    """Loop verifications of the pipeline with loop closure on, against GT co-visibility (see ``--verify``)."""
    from slam3r.recon import loop as loop_mod
    from slam3r.recon.config import ReconConfig
    from slam3r.recon.offline import run_offline
    from slam3r.runtime import weights_defaults

    rt = load_runtime(weights, "cpu")
    i2p, l2w = rt.i2p, rt.l2w
    rows, last = [], {}
    overlap, check = loop_mod.LoopCloser._overlap, loop_mod.LoopCloser._verify

    def overlap_hook(self, *args):
        last["ov"] = overlap(self, *args)
        return last["ov"]

    def verify_hook(self, old, new, autocast, pair=None):
        last.clear()
        rel = check(self, old, new, autocast, pair)
        rows.append((seed, old.fid, new.fid, last.get("ov", (0.0, 0.0)), rel is not None))
        return rel

    loop_mod.LoopCloser._overlap, loop_mod.LoopCloser._verify = overlap_hook, verify_hook
    cfg = ReconConfig(**weights_defaults(weights), loop_closure=True)
    print(f"loop_min_overlap {cfg.loop_min_overlap}, loop_min_agree {cfg.loop_min_agree}")
    print("| seed | verified | accepted | accepted true (co-vis >= 0.2) | accepted spurious (< 0.05) | true pairs |")
    print("|---|---|---|---|---|---|")
    stats = {"true": [], "spurious": []}
    for seed in seeds:
        seq = render_heldout(seed, frames, i2p.cfg.img_size[0])
        _, results = run_offline(i2p, l2w, list(seq.rgb), cfg)
        for _ in results:
            pass
        mine = [(covisibility(seq, old, new), ov, ok) for s, old, new, ov, ok in rows if s == seed]
        true = [m for m in mine if m[0] >= 0.2]
        stats["true"] += true
        stats["spurious"] += [m for m in mine if m[0] < 0.05]
        print(f"| {seed} | {len(mine)} | {sum(m[2] for m in mine)} | {sum(m[2] for m in true)} | "
              f"{sum(m[2] for m in mine if m[0] < 0.05)} | {len(true)} |", flush=True)
    for name, ms in stats.items():
        if ms:
            seen, agree = np.array([m[1][0] for m in ms]), np.array([m[1][1] for m in ms])
            print(f"{name} pairs: {len(ms)}, seen median {np.median(seen):.2f}, agree median {np.median(agree):.2f} "
                  f"(min {agree.min():.2f}, max {agree.max():.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--frames", type=int, default=DEMO_LOOP_FRAMES)
    parser.add_argument("--offset", type=int, default=1,
                        help="candidates lie this many frames off the queries' keyframe grid (default 1): the "
                             "generator's loops are periodic, so with 0 a candidate can be an exact repeat")
    parser.add_argument("--verify", action="store_true", help="loop verifications of the pipeline vs GT (docstring)")
    add_runtime_arguments(parser, options=("weights",))
    args = parser.parse_args()
    if args.verify:
        verify(args.seeds, args.frames, args.weights)
        return
    i2p = load_runtime(args.weights, "cpu").i2p
    size = i2p.cfg.img_size[0]
    stats: dict[str, list[tuple[float, bool]]] = {"retrieval head": [], "descriptor": [], "random": [],
                                                   "GT best": []}
    rng = np.random.default_rng(0)
    for seed in args.seeds:
        seq = render_heldout(seed, args.frames, size)
        with torch.no_grad():
            tokens = i2p.encode(to_tensor(seq.rgb))
            desc = global_descriptor(tokens)
        kfs = list(range(0, args.frames, 3))
        for q in [k for k in kfs if k >= 0.8 * args.frames]:
            cands = [k + args.offset for k in kfs if k + args.offset <= q - 0.4 * args.frames]
            gt = np.array([covisibility(seq, q, c) for c in cands])
            with torch.no_grad():
                head = i2p.corr_scores(tokens[q:q + 1], tokens[cands]).float().mean(dim=(1, 2)).numpy()
            cos = (desc[cands] @ desc[q]).numpy()
            for name, pick in (("retrieval head", int(np.argmax(head))), ("descriptor", int(np.argmax(cos))),
                               ("random", int(rng.integers(len(cands)))), ("GT best", int(np.argmax(gt)))):
                stats[name].append((gt[pick], pick == int(np.argmax(gt))))
        print(f"seed {seed}: {sum(1 for k in kfs if k >= 0.8 * args.frames)} queries", flush=True)
    print("\n| candidate score | mean GT co-visibility of top-1 | top-1 = GT best |\n|---|---|---|")
    for name, vals in stats.items():
        print(f"| {name} | {np.mean([v[0] for v in vals]):.3f} | {np.mean([v[1] for v in vals]):.2f} |")


if __name__ == "__main__":
    main()
