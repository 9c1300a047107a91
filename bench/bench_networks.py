"""Network-level speed, fast path vs naive reference path on the same weights and inputs, outputs compared:
encoder tokens/s, one I2P window (11 views, keyframe output), retrieval (2 queries x N candidates), one L2W call
(10 scene frames + K keyframes). Each path's floating-point work is counted too (torch's FlopCounterMode: matmuls
and attention), so a speedup splits into work saved (GFLOP ratio) and speed of doing it (GFLOP/s).

    python bench/bench_networks.py --size released
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, make_models, report, timeit  # noqa: E402
from naive import NaiveI2P, NaiveL2W  # noqa: E402

from slam3r.models.registry import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=30, help="buffered frames scored by retrieval")
    ap.add_argument("--keyframes", type=int, default=2, help="keyframes registered per L2W call")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    i2p, l2w = make_models(args.size, device)
    ni, nl = NaiveI2P(i2p), NaiveL2W(l2w)
    cfg = i2p.cfg
    h, w = cfg.img_size
    s = cfg.grid[0] * cfg.grid[1]
    g = torch.Generator().manual_seed(0)
    imgs = (torch.rand(11, 3, h, w, generator=g) * 2 - 1).to(device)
    rows = []

    def gflop(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    def row(name: str, fast, naive, units: float, unit: str, check) -> None:
        with torch.no_grad():
            tf = timeit(fast, device, args.repeat)
            tn = timeit(naive, device, args.repeat)
            diff = check()
            gf, gn = gflop(fast), gflop(naive)
        rows.append({"op": name, "fast_ms": round(tf * 1e3, 2), "naive_ms": round(tn * 1e3, 2),
                     "speedup": round(tn / tf, 2), "fast_rate": f"{units / tf:.1f} {unit}",
                     "fast_GFLOP": round(gf, 3), "naive_GFLOP": round(gn, 3), "fast_GFLOP/s": round(gf / tf, 1),
                     "naive_GFLOP/s": round(gn / tn, 1), "max_diff": f"{diff:.1e}"})

    with torch.no_grad():
        tokens = i2p.encode(imgs)
    row("encoder (11 frames)", lambda: i2p.encode(imgs), lambda: ni.encode(imgs), 11 * s, "tokens/s",
        lambda: float((i2p.encode(imgs) - ni.encode(imgs)).abs().max()))
    win = tokens[:, None]
    row("I2P window (11 views, keyframe)", lambda: i2p(win, 0, ref_only=True), lambda: ni(win, 0, ref_only=True),
        1, "windows/s", lambda: float((i2p(win, 0, ref_only=True).pts3d - ni(win, 0, ref_only=True).pts3d).abs().max()))
    cand = tokens[torch.arange(args.candidates) % 11] + 0.01 * torch.randn(args.candidates, s, cfg.enc_embed_dim,
                                                                          generator=g).to(device)
    query = tokens[:2]
    row(f"retrieval (2 queries x {args.candidates})", lambda: i2p.corr_scores(query, cand),
        lambda: ni.corr_scores(query, cand), 1, "calls/s",
        lambda: float((i2p.corr_scores(query, cand) - ni.corr_scores(query, cand)).abs().max()))
    v = 10 + args.keyframes
    ltok = tokens[torch.arange(v) % 11][:, None]
    pts = torch.randn(v, 1, h, w, 3, generator=g).to(device)
    refs = list(range(10))
    row(f"L2W (10 scene + {args.keyframes} keyframes)", lambda: l2w(ltok, pts, refs, sources_only=True),
        lambda: nl(ltok, pts, refs, sources_only=True), 1, "calls/s",
        lambda: float((l2w(ltok, pts, refs, sources_only=True).pts3d - nl(ltok, pts, refs, sources_only=True).pts3d).abs().max()))
    report(f"networks — {args.size} — {device_name(device)}", rows, {"size": args.size, "device": device_name(device)})


if __name__ == "__main__":
    main()
