"""Network-level speed of slam3r against a yardstick on the same weights and inputs, outputs compared: the encoder
(11 frames), one I2P window (11 views, keyframe output), retrieval (2 queries x N candidates), one L2W call
(10 scene frames + K keyframes).

The yardstick is the official SLAM3R code when ``--official DIR`` names a checkout of it (run in a subprocess,
see ``bench/official.py``), else the bench's naive re-implementation of the reference (``bench/naive.py``). Runs
are interleaved (slam3r, yardstick, slam3r, ...) so that load from other processes hits both alike; min and
median seconds are printed. Each path's floating-point work is counted too (CPU SDPA attention included, see
``bench/flops.py``), so a speed-up splits into work saved (GFLOP ratio) and speed of doing it (GFLOP/s); the
machine's measured matmul peak for the precision is printed beside it.

    python bench/bench_networks.py --size released --official ~/src/SLAM3R --threads 2
    python bench/bench_networks.py --size released --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bench_runtime, device_name, matmul_peak, report, sync  # noqa: E402
from flops import count_gflop  # noqa: E402
from naive import NaiveI2P, NaiveL2W  # noqa: E402

from slam3r.models.precision import autocast, resolve  # noqa: E402
from slam3r.runtime import add_runtime_arguments  # noqa: E402


def _once(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _stats(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


def inputs(i2p, device, candidates: int, keyframes: int) -> dict:
    """The same inputs for every path: 11 images, their tokens, candidates, L2W points."""
    cfg = i2p.cfg
    h, w = cfg.img_size
    s = cfg.grid[0] * cfg.grid[1]
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(11, 3, h, w, generator=g) * 2 - 1
    with torch.no_grad():
        tokens = i2p.encode(imgs.to(device)).cpu()
    cand = tokens[torch.arange(candidates) % 11] + 0.01 * torch.randn(candidates, s, cfg.enc_embed_dim, generator=g)
    v = 10 + keyframes
    return {"imgs": imgs, "tokens": tokens, "query": tokens[:2], "cand": cand,
            "l2w_tokens": tokens[torch.arange(v) % 11], "pts": torch.randn(v, h, w, 3, generator=g)}


def slam3r_ops(i2p, l2w, x: dict, device) -> dict:
    """op -> callable of the fast path (output of the op). The ``*_cached`` ops are what the engine runs once the
    per-frame features (``view_features``) of the frames involved are cached; ``features`` / ``scene_features``
    compute those of one new frame (both I2P roles / one L2W scene frame), once per frame in a run."""
    d = {k: v.to(device) for k, v in x.items()}
    refs = list(range(10))
    tok, ltok, pts = d["tokens"][:, None], d["l2w_tokens"][:, None], d["pts"][:, None]
    cache: dict = {}

    def feats():  # computed on first use, outside the timed calls of the cached ops
        if not cache:
            cache["ref"] = i2p.view_features(tok[:1], "ref")
            cache["src"] = i2p.view_features(tok[1:], "src")
            cache["query"] = i2p.view_features(d["query"][None], "ref")
            cache["cand"] = i2p.view_features(d["cand"][:, None], "src")
            cache["scene"] = l2w.view_features(ltok[:10], pts[:10], "scene")
        return cache

    return {
        "encode": lambda: i2p.encode(d["imgs"]),
        "i2p": lambda: i2p(tok, 0, ref_only=True).pts3d[0],
        "retrieval": lambda: i2p.corr_scores(d["query"], d["cand"]),
        "l2w": lambda: l2w(ltok, pts, refs, sources_only=True).pts3d[:, 0],
        "features": lambda: torch.cat([i2p.view_features(tok[:1], role).attended for role in ("ref", "src")]),
        "scene_features": lambda: l2w.view_features(ltok[:1], pts[:1], "scene").attended,
        "i2p_cached": lambda: i2p.forward_features(feats()["ref"], feats()["src"], ref_only=True).pts3d[0],
        "retrieval_cached": lambda: 1 + i2p.corr_logits_features(feats()["query"], feats()["cand"]).exp(),
        "l2w_cached": lambda: l2w.register(feats()["scene"], l2w.view_features(ltok[10:], pts[10:], "src")).pts3d[:, 0],
    }


def cache_savings(rows: list[dict]) -> list[str]:
    """What the per-frame caches save per call in steady state: the uncached op minus the cached op minus the
    features of the one new frame each call brings (I2P: the window's keyframe, computed in both roles; retrieval
    and L2W: none in steady state, their scene / candidate frames were cached when they entered the buffer)."""
    by = {r["op"]: r for r in rows}
    lines = []
    for op, new_frames in (("i2p", "features"), ("retrieval", None), ("l2w", None)):
        if op in by and f"{op}_cached" in by:
            a, b = by[op], by[f"{op}_cached"]
            extra = by.get(new_frames, {"GFLOP": 0.0, "slam3r_min_s": 0.0}) if new_frames else \
                {"GFLOP": 0.0, "slam3r_min_s": 0.0}
            gf = a["GFLOP"] - b["GFLOP"] - extra["GFLOP"]
            sec = a["slam3r_min_s"] - b["slam3r_min_s"] - extra["slam3r_min_s"]
            lines.append(f"{op}: caching saves {gf:.2f} GFLOP ({gf / a['GFLOP']:.1%}) and {sec:.3f} s "
                         f"({sec / a['slam3r_min_s']:.1%}) per call (best-of times)")
    return lines


def naive_ops(i2p, l2w, x: dict, device) -> dict:
    ni, nl = NaiveI2P(i2p), NaiveL2W(l2w)
    d = {k: v.to(device) for k, v in x.items()}
    refs = list(range(10))
    return {
        "encode": lambda: ni.encode(d["imgs"]),
        "i2p": lambda: ni(d["tokens"][:, None], 0, ref_only=True).pts3d[0],
        "retrieval": lambda: ni.corr_scores(d["query"], d["cand"]),
        "l2w": lambda: nl(d["l2w_tokens"][:, None], d["pts"][:, None], refs, sources_only=True).pts3d[:, 0],
    }


def official_files(x: dict, tmp: Path) -> dict[str, Path]:
    """The inputs of each op as ``.npz`` files for the official subprocess."""
    arrays = {"encode": {"imgs": x["imgs"]}, "i2p": {"tokens": x["tokens"]},
              "retrieval": {"query": x["query"], "cand": x["cand"]},
              "l2w": {"tokens": x["l2w_tokens"], "pts": x["pts"], "nref": torch.tensor(10)}}
    paths = {}
    for op, arr in arrays.items():
        paths[op] = tmp / f"{op}_in.npz"
        np.savez(paths[op], **{k: v.numpy() for k, v in arr.items()})
    return paths


OUTPUT_KEY = {"encode": "tokens", "i2p": "pts3d", "retrieval": "scores", "l2w": "pts3d"}
CACHED = ("features", "scene_features", "i2p_cached", "retrieval_cached", "l2w_cached")


def measure_op(op, fast, slow, official, files, tmp, ref_name, args, device) -> dict:
    """One op of slam3r and of its yardstick (naive, official or none), interleaved, after one warm-up round."""
    tf, tr, ref_out, gf_ref = [], [], None, None
    for r in range(args.repeat + 1):
        with autocast(device, args.precision):
            t = _once(fast[op], device)
        t_ref = None
        if op in CACHED:
            pass
        elif official is not None:
            res = official.call(op, inputs=str(files[op]), out=str(tmp / f"{op}_out.npz") if r == 0 else None,
                                flops=r == 0)
            t_ref = res["seconds"]
            if r == 0:
                gf_ref = res["gflop"]
                with np.load(tmp / f"{op}_out.npz") as z:
                    ref_out = torch.from_numpy(z[OUTPUT_KEY[op]])
        elif slow is not None:
            t_ref = _once(slow[op], device)
            if r == 0:
                gf_ref, ref_out = count_gflop(slow[op]), slow[op]().cpu()
        if r:  # the first round is the warm-up
            tf.append(t)
            tr.append(t_ref)
    with autocast(device, args.precision):
        out = fast[op]().float().cpu()
        gf = count_gflop(fast[op])
    f_min, f_med = _stats(tf)
    row = {"op": op, "slam3r_min_s": round(f_min, 4), "slam3r_med_s": round(f_med, 4), "GFLOP": round(gf, 3),
           "GFLOP/s": round(gf / f_min, 2)}
    if ref_out is None:
        return row
    ref_out = ref_out.reshape(out.shape)
    r_min, r_med = _stats(tr)
    rel = float((out - ref_out).norm() / ref_out.norm().clamp(min=1e-12))
    row.update({f"{ref_name}_min_s": round(r_min, 4), f"{ref_name}_med_s": round(r_med, 4),
                "speedup_med": round(r_med / f_med, 2), "speedup_min": round(r_min / f_min, 2),
                f"{ref_name}_GFLOP": round(gf_ref, 3), f"{ref_name}_GFLOP/s": round(gf_ref / r_min, 2),
                "max_abs_diff": f"{float((out - ref_out).abs().max()):.1e}", "rel_diff": f"{rel:.1e}"})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    add_runtime_arguments(ap, options=("device", "threads", "precision"), precision_default="fp32",
                          notes={"precision": "the yardstick always runs fp32, as the official code does on CPU"})
    ap.add_argument("--candidates", type=int, default=30, help="buffered frames scored by retrieval")
    ap.add_argument("--keyframes", type=int, default=2, help="keyframes registered per L2W call")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed repetitions per path (after 1 warm-up)")
    ap.add_argument("--official", metavar="DIR", default=None,
                    help="checkout of github.com/PKU-VCL-3DV/SLAM3R to measure against (else the naive path)")
    ap.add_argument("--no-naive", action="store_true", help="time slam3r alone (no yardstick)")
    ap.add_argument("--ops", nargs="+", default=list(OUTPUT_KEY), choices=[*OUTPUT_KEY, *CACHED])
    ap.add_argument("--cache", action="store_true", help="also time the cached ops and print what caching saves")
    args = ap.parse_args()
    rt = bench_runtime(None, args.size, args.device, args.threads)
    i2p, l2w, device = rt.i2p, rt.l2w, rt.device
    x = inputs(i2p, device, args.candidates, args.keyframes)
    fast = slam3r_ops(i2p, l2w, x, device)
    prec = resolve(device, args.precision, i2p.cfg.enc_embed_dim)
    peak = {"fp32": matmul_peak(device, "fp32"), prec: matmul_peak(device, prec)}   # again at the end: the best
    rows, tmpdir = [], tempfile.TemporaryDirectory()
    tmp = Path(tmpdir.name)
    official = slow = files = None
    if args.official:
        from official import Official, save_weights

        official = Official(args.official, save_weights(i2p, l2w, tmp / "weights"), args.threads)
        files = official_files(x, tmp)
        ref_name = "official"
    elif not args.no_naive:
        slow = naive_ops(i2p, l2w, x, device)
        ref_name = "naive"
    else:
        ref_name = None
    ops = args.ops + [op for op in CACHED if args.cache and op not in args.ops]
    with torch.no_grad():
        for op in ops:
            rows.append(measure_op(op, fast, slow, official, files, tmp, ref_name, args, device))
            print(rows[-1], flush=True)
    peak = {k: max(v, matmul_peak(device, k)) for k, v in peak.items()}   # a busy moment lowers one measurement
    for row in rows:
        row["of_peak"] = f"{row['GFLOP/s'] / peak[prec]:.0%}"
    for line in cache_savings(rows):
        print(line)
    if official is not None:
        official.close()
    tmpdir.cleanup()
    vs = f" vs {ref_name} fp32" if ref_name else ""
    report(f"networks — {args.size} — slam3r {prec}{vs} — {device_name(device)}", rows,
           {"size": args.size, "device": device_name(device), "precision": prec, "yardstick": ref_name,
            "matmul_peak_GFLOP/s": peak, "repeat": args.repeat})
    print(f"matmul peak on this machine now: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))


if __name__ == "__main__":
    main()
