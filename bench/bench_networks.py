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
from common import device_name, make_models, matmul_peak, report, sync  # noqa: E402
from flops import count_gflop  # noqa: E402
from naive import NaiveI2P, NaiveL2W  # noqa: E402

from slam3r.models.precision import autocast, describe  # noqa: E402
from slam3r.models.registry import resolve_device  # noqa: E402


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
    """op -> (callable, output getter) of the fast path."""
    d = {k: v.to(device) for k, v in x.items()}
    refs = list(range(10))
    return {
        "encode": lambda: i2p.encode(d["imgs"]),
        "i2p": lambda: i2p(d["tokens"][:, None], 0, ref_only=True).pts3d[0],
        "retrieval": lambda: i2p.corr_scores(d["query"], d["cand"]),
        "l2w": lambda: l2w(d["l2w_tokens"][:, None], d["pts"][:, None], refs, sources_only=True).pts3d[:, 0],
    }


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="fp32", choices=["auto", "fp32", "fp16", "bf16"],
                    help="slam3r's precision (the yardstick always runs fp32, as the official code does on CPU)")
    ap.add_argument("--candidates", type=int, default=30, help="buffered frames scored by retrieval")
    ap.add_argument("--keyframes", type=int, default=2, help="keyframes registered per L2W call")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed repetitions per path (after 1 warm-up)")
    ap.add_argument("--official", metavar="DIR", default=None,
                    help="checkout of github.com/PKU-VCL-3DV/SLAM3R to measure against (else the naive path)")
    ap.add_argument("--ops", nargs="+", default=list(OUTPUT_KEY), choices=list(OUTPUT_KEY))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    i2p, l2w = make_models(args.size, device)
    x = inputs(i2p, device, args.candidates, args.keyframes)
    fast = slam3r_ops(i2p, l2w, x, device)
    prec = describe(device, args.precision)
    peak = {"fp32": matmul_peak(device, "fp32"), prec: matmul_peak(device, prec)}
    rows, tmpdir = [], tempfile.TemporaryDirectory()
    tmp = Path(tmpdir.name)
    official = None
    if args.official:
        from official import Official, save_weights

        official = Official(args.official, save_weights(i2p, l2w, tmp / "weights"), args.threads)
        files = official_files(x, tmp)
        ref_name = "official"
    else:
        slow = naive_ops(i2p, l2w, x, device)
        ref_name = "naive"
    with torch.no_grad():
        for op in args.ops:
            tf, tr, ref_out = [], [], None
            for r in range(args.repeat + 1):
                with autocast(device, args.precision):
                    t = _once(fast[op], device)
                if official is not None:
                    res = official.call(op, inputs=str(files[op]), out=str(tmp / f"{op}_out.npz") if r == 0 else None,
                                        flops=r == 0)
                    t_ref = res["seconds"]
                    if r == 0:
                        gf_ref = res["gflop"]
                        with np.load(tmp / f"{op}_out.npz") as z:
                            ref_out = torch.from_numpy(z[OUTPUT_KEY[op]])
                else:
                    t_ref = _once(slow[op], device)
                    if r == 0:
                        gf_ref, ref_out = count_gflop(slow[op]), slow[op]().cpu()
                if r:  # the first round is the warm-up
                    tf.append(t)
                    tr.append(t_ref)
            with autocast(device, args.precision):
                out = fast[op]().float().cpu()
                gf = count_gflop(fast[op])
            ref_out = ref_out.reshape(out.shape)
            diff = float((out - ref_out).abs().max())
            rel = float((out - ref_out).norm() / ref_out.norm().clamp(min=1e-12))
            (f_min, f_med), (r_min, r_med) = _stats(tf), _stats(tr)
            rows.append({"op": op, "slam3r_min_s": round(f_min, 4), "slam3r_med_s": round(f_med, 4),
                         f"{ref_name}_min_s": round(r_min, 4), f"{ref_name}_med_s": round(r_med, 4),
                         "speedup_med": round(r_med / f_med, 2), "speedup_min": round(r_min / f_min, 2),
                         "GFLOP": round(gf, 3), f"{ref_name}_GFLOP": round(gf_ref, 3),
                         "GFLOP/s": round(gf / f_min, 2), f"{ref_name}_GFLOP/s": round(gf_ref / r_min, 2),
                         "of_peak": f"{gf / f_min / peak[prec]:.0%}", "max_abs_diff": f"{diff:.1e}",
                         "rel_diff": f"{rel:.1e}"})
            print(rows[-1], flush=True)
    if official is not None:
        official.close()
    tmpdir.cleanup()
    report(f"networks — {args.size} — slam3r {prec} vs {ref_name} fp32 — {device_name(device)}", rows,
           {"size": args.size, "device": device_name(device), "precision": prec, "yardstick": ref_name,
            "matmul_peak_GFLOP/s": peak, "repeat": args.repeat})
    print(f"matmul peak on this machine now: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))


if __name__ == "__main__":
    main()
