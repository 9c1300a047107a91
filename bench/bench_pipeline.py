"""Full-pipeline speed: fast path vs the naive reference path (same weights, same algorithm, same run), with the
outputs compared; plus streaming FPS. Random weights; synthetic held-out frames.

    python bench/bench_pipeline.py --size released --frames 64          # offline, reference demo parameters
    python bench/bench_pipeline.py --size default --mode streaming --no-naive --frames 200
    python bench/bench_pipeline.py --weights default --params bundled --mode streaming --frames 150 --threads 1 \
        --loop-closure-ab 2      # loop closure off / on alternately (2 runs each), FPS ratio of the medians
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import typing
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import rss  # noqa: E402
from common import bench_runtime, device_name, report, synthetic_frames  # noqa: E402
from naive import NaiveI2P, NaiveL2W  # noqa: E402

from slam3r.models.blocks import drop_low_precision_copies  # noqa: E402
from slam3r.models.precision import resolve  # noqa: E402
from slam3r.recon.config import ReconConfig  # noqa: E402
from slam3r.recon.offline import run_offline  # noqa: E402
from slam3r.recon.streaming import StreamingReconstructor  # noqa: E402
from slam3r.runtime import add_runtime_arguments  # noqa: E402

# The reference's demo parameters (scripts/demo_replica.sh), with the later release's fixed stride 3.
DEMO = dict(keyframe_stride=3, win_r=5, initial_winsize=5, conf_thres_i2p=1.5, num_scene_frame=10,
            max_num_register=10, conf_thres_l2w=10, update_buffer_intv=3, buffer_size=100,
            buffer_strategy="reservoir")


# The engine's discrete choices: initial window, retrieved scene frames, buffered keyframes and the I2P validity
# masks (one pixel whose confidence sits within float noise of the threshold changes a frame's normalisation).
# Near-ties (flat confidences of random weights) can flip them between two numerically equivalent paths, so the
# naive run replays the fast run's choices (still computing them, so the timing is fair) and the outputs can be
# compared frame by frame.
DECISIONS = ("_choose_init_window", "_retrieve", "_choose_keyframe", "_valid")


def hook_decisions(engine, log: dict, replay: bool) -> None:
    for name in DECISIONS:
        original = getattr(engine, name)
        calls = log.setdefault(name, [])
        pending = iter(list(calls)) if replay else None

        def hooked(*args, _original=original, _calls=calls, _pending=pending):
            result = _original(*args)
            if _pending is not None:
                return next(_pending)
            _calls.append(result)
            return result

        setattr(engine, name, hooked)


STEPS = ("_run_i2p", "_retrieve", "_l2w", "_register_flow")


def hook_steps(engine, steps: dict) -> None:
    """Time each network call of a registration step, keyed by the step's first frame id; ``_l2w`` also records
    how many scene frames it used, ``_register_flow`` that the step was registered by flow (a frame that falls
    back to L2W inside it is then counted in both)."""
    def account(name: str, args: tuple, t0: float) -> None:
        frames = args[1][0] if name == "_l2w" else args[0]
        step = steps.setdefault(min(frames), {"frames": len(frames), "s": 0.0})
        step["s"] += time.perf_counter() - t0
        if name == "_l2w":
            step["scene"] = len(args[0])
        if name == "_register_flow":
            step["flow"] = True

    for name in STEPS:
        original = getattr(engine, name)

        def timed(*args, _original=original, _name=name):
            t0 = time.perf_counter()
            result = _original(*args)
            account(_name, args, t0)
            return result

        def timed_steps(*args, _original=original, _name=name):  # engine steps (recon.batching): run when driven
            t0 = time.perf_counter()
            result = yield from _original(*args)
            account(_name, args, t0)
            return result

        setattr(engine, name, timed_steps if inspect.isgeneratorfunction(original) else timed)


def steady_state(steps: dict, timings: dict, n: int, cfg: ReconConfig, stride: int) -> tuple[float | None, int]:
    """Seconds per frame once the pipeline does its full per-frame work: registration steps whose frames all have
    a full I2P window (``win_r`` keyframe strides on both sides) and whose L2W call used ``num_scene_frame`` scene
    frames (or that ``registration: flow`` registered), plus the per-frame encoder and pose time. Returns (s/frame,
    frames counted)."""
    lo, hi = cfg.win_r * stride, n - cfg.win_r * stride
    full = [(k, st) for k, st in steps.items()
            if lo <= k and k + st["frames"] <= hi and (st.get("scene") == cfg.num_scene_frame or st.get("flow"))]
    frames = sum(st["frames"] for _, st in full)
    if not frames:
        return None, 0
    return (timings["encode"] + timings.get("pose", 0.0)) / n + sum(st["s"] for _, st in full) / frames, frames


def run(i2p, l2w, frames, cfg, mode: str, device, log: dict, replay: bool, progress=None) -> tuple[
        list, list[float], dict, dict, object]:
    """Returns results, the wall time at which each frame was delivered, the engine timings, per-step timings and
    the engine. ``progress(n_delivered, seconds)``, when given, is called after each delivered frame."""
    stamps: list[float] = []
    steps: dict = {}
    results = []
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "offline":
            engine, it = run_offline(i2p, l2w, frames, cfg, device=device)
            hook_decisions(engine, log, replay)
            hook_steps(engine, steps)
            for r in it:
                results.append(r)
                stamps.append(time.perf_counter() - t0)
                if progress is not None:
                    progress(len(results), stamps[-1])
        else:
            rec = StreamingReconstructor(i2p, l2w, cfg, device)
            engine = rec._engine(frames[0].shape)
            hook_decisions(engine, log, replay)
            hook_steps(engine, steps)
            for f in frames:
                for r in rec.push(f):
                    results.append(r)
                    stamps.append(time.perf_counter() - t0)
            for r in rec.flush():
                results.append(r)
                stamps.append(time.perf_counter() - t0)
    return results, stamps, dict(engine.timings), steps, engine


def run_per_frame(timings: dict, frames: int) -> float:
    """Seconds of network + pose work per frame, excluding the one-off initial-window search (``init``); measured
    stage by stage inside the engine, so it is not distorted by results arriving in bursts."""
    return sum(v for k, v in timings.items() if k != "init") / frames


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="model size preset: tiny, default, released")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--mode", choices=["offline", "streaming"], default="offline")
    add_runtime_arguments(ap, options=("weights", "device", "threads", "precision"), weights_default=None,
                          precision_default="fp32",
                          notes={"weights": "without it, random weights of --size", "precision": "the yardsticks run fp32"})
    ap.add_argument("--compile", action="store_true", help="torch.compile the fast path's network blocks")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive reference path")
    ap.add_argument("--params", choices=["reference", "wild", "bundled"], default=None,
                    help="pipeline parameters: the reference Replica demo's (fixed stride 3), the official wild "
                         "demo's (automatic stride; the default with --official), or the bundled model's recon.yaml")
    ap.add_argument("--stride", type=int, default=None, help="override the keyframe stride (-1 = automatic)")
    ap.add_argument("--official", metavar="DIR", default=None,
                    help="checkout of github.com/PKU-VCL-3DV/SLAM3R: time it (offline) on the same frames and "
                         "weights instead of the naive path, interleaved with slam3r")
    ap.add_argument("--repeat", type=int, default=1, help="with --official: interleaved runs of each")
    ap.add_argument("--also-precision", choices=["auto", "fp32", "fp16", "bf16"], default=None,
                    help="with --official: also time slam3r at this precision, in the same interleaved runs")
    ap.add_argument("--loop-closure", action="store_true", help="loop closure on (ReconConfig.loop_closure)")
    ap.add_argument("--loop-closure-ab", type=int, default=0, metavar="N",
                    help="run loop closure off and on in N pairs, ABBA order (no naive path); per-pair FPS ratios "
                         "on / off, wall and per CPU-second")
    ap.add_argument("--registration", choices=typing.get_args(typing.get_type_hints(ReconConfig)["registration"]),
                    default=None, help="registration backend (default: the parameters', else l2w)")
    args = ap.parse_args()
    if args.params is None:
        args.params = "wild" if args.official else "reference"
    if args.official and args.mode != "offline":
        ap.error("--official compares the offline pipeline (the official code has no streaming driver)")
    return args


def pipeline_params(args: argparse.Namespace) -> dict:
    if args.params == "bundled":
        from slam3r.runtime import weights_defaults
        params = weights_defaults("default")  # the bundled model's recon.yaml
    elif args.params == "wild":
        from official import WILD_DEMO
        params = dict(WILD_DEMO)
    else:
        params = dict(DEMO)
    if args.stride is not None:
        params["keyframe_stride"] = args.stride
    return params


def device_summary(device: torch.device, size: int, fps: float) -> str:
    """The one line a GPU run is for: FPS at the network size, peak device memory, the device."""
    if device.type != "cuda":
        return f"{fps:.2f} FPS at {size} px on {device_name(device)}"
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    return f"{fps:.2f} FPS at {size} px on {device_name(device)}; peak device memory {peak:.2f} GiB"


def main() -> None:
    args = parse_args()
    rt = bench_runtime(args.weights, args.size, args.device, args.threads)
    i2p, l2w, device = rt.i2p, rt.l2w, rt.device
    size = i2p.cfg.img_size[0]
    frames = synthetic_frames(args.frames, size)
    params = pipeline_params(args)
    if args.registration:
        params["registration"] = args.registration
    cfg = ReconConfig(**params, precision=args.precision, compile=args.compile, loop_closure=args.loop_closure)
    rows = []
    decisions: dict = {}

    def measure(name: str, nets, run_cfg, replay: bool):
        for net in (i2p, l2w):  # an earlier run's bf16 weight copies do not count against this one
            drop_low_precision_copies(net)
        rss.release_free_memory()
        rss.reset_peak()
        res, stamps, tm, steps, engine = run(*nets, frames, run_cfg, args.mode, device, decisions, replay=replay)
        pf = run_per_frame(tm, len(res))
        steady, counted = steady_state(steps, tm, len(res), run_cfg, engine.s)
        rows.append({"path": name, "s/frame": round(pf, 4),
                     "steady s/frame": None if steady is None else round(steady, 4), "steady frames": counted,
                     "fps": round(1 / pf, 2), "wall_s": round(stamps[-1], 1), "stride": engine.s,
                     "peak_rss_gib": round(rss.peak_gib(), 2), **{k: round(v, 2) for k, v in tm.items()}})
        return res, pf, steady

    extra = {"size": args.weights or args.size, "mode": args.mode, "frames": args.frames, "params": args.params,
             "precision": resolve(device, args.precision, i2p.cfg.enc_embed_dim), "device": device_name(device)}
    if args.official:
        compare_official(args, i2p, l2w, frames, params, measure, rows, extra)
        return
    if args.loop_closure_ab:
        compare_loop_closure(args.loop_closure_ab, cfg, measure, rows, extra, (i2p, l2w))
        return
    fast, fast_pf, fast_steady = measure("slam3r", (i2p, l2w), cfg, False)
    extra.update(fast_s_per_frame=fast_pf, fast_steady_s_per_frame=fast_steady)
    if not args.no_naive:
        naive, naive_pf, naive_steady = measure("naive reference", (NaiveI2P(i2p), NaiveL2W(l2w)),
                                                ReconConfig(**params, precision="fp32"), True)
        diff = max(float(np.abs(a.pts3d_world - b.pts3d_world).max()) for a, b in zip(fast, naive))
        scale = max(float(np.abs(b.pts3d_world).max()) for b in naive)
        cdiff = max(float(np.abs(a.conf - b.conf).max() / max(1.0, float(np.abs(b.conf).max())))
                    for a, b in zip(fast, naive))
        steady_speedup = naive_steady / fast_steady if fast_steady and naive_steady else None
        extra.update(naive_s_per_frame=naive_pf, speedup=naive_pf / fast_pf, naive_steady_s_per_frame=naive_steady,
                     steady_speedup=steady_speedup, max_abs_diff_world=diff, world_scale=scale,
                     max_rel_diff_conf=cdiff)
    report(f"pipeline {args.mode} — {args.weights or args.size} — {device_name(device)}", rows, extra)
    print(device_summary(device, size, 1 / fast_pf))
    if "speedup" in extra:
        steady = "n/a: too few frames" if steady_speedup is None else f"{steady_speedup:.2f}x"
        print(f"speedup {extra['speedup']:.2f}x (steady state {steady}); "
              f"max |world diff| {extra['max_abs_diff_world']:.2e} (values up to {extra['world_scale']:.2f}); "
              f"max relative conf diff {extra['max_rel_diff_conf']:.2e}")


def compare_loop_closure(n: int, cfg: ReconConfig, measure, rows, extra, nets) -> None:
    """Loop closure off and on in ``n`` pairs (same process, models and frames; ABBA order, so a load that drifts
    in one direction favours neither): wall FPS per run, and FPS per CPU-second of this process (all its threads),
    which other processes' load barely moves. Prints the median of the per-pair ratios on / off of both."""
    import dataclasses
    import os
    import statistics
    import time

    fps: dict[bool, list[float]] = {False: [], True: []}
    cpu_fps: dict[bool, list[float]] = {False: [], True: []}
    for i in range(n):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            cpu0 = time.process_time()
            res, pf, _ = measure(f"loop closure {'on' if on else 'off'}", nets,
                                 dataclasses.replace(cfg, loop_closure=on), False)
            fps[on].append(1 / pf)
            cpu_fps[on].append(len(res) / (time.process_time() - cpu0))
            print(rows[-1], f"frames/CPU-s {cpu_fps[on][-1]:.2f} load average {os.getloadavg()[0]:.1f}", flush=True)
    wall = statistics.median(a / b for a, b in zip(fps[True], fps[False]))
    cpu = statistics.median(a / b for a, b in zip(cpu_fps[True], cpu_fps[False]))
    extra.update(fps_off=fps[False], fps_on=fps[True], cpu_fps_off=cpu_fps[False], cpu_fps_on=cpu_fps[True],
                 ratio_on_off=wall, cpu_ratio_on_off=cpu, load_average=os.getloadavg())
    report(f"pipeline {extra['mode']} loop closure off / on — {extra['size']} — {extra['device']}", rows, extra)
    print(f"loop closure on / off, median of {n} pairs: FPS {wall:.2f}, frames per CPU-second {cpu:.2f} "
          f"(on {statistics.median(cpu_fps[True]):.2f}, off {statistics.median(cpu_fps[False]):.2f} frames/CPU-s)")


def compare_official(args, i2p, l2w, frames, params, measure, rows, extra) -> None:
    """slam3r (at ``--precision``, and at ``--also-precision`` when given) and the official code alternately on the
    same frames and weights (``--repeat`` runs each): total and steady-state seconds per frame (min / median), their
    ratios, peak RSS, and how far the world points differ."""
    import tempfile

    from official import Official, save_weights

    device = next(i2p.parameters()).device
    precisions = [args.precision] + [p for p in [args.also_precision] if p and p != args.precision]
    cfgs = {p: ReconConfig(**params, precision=p, compile=args.compile) for p in precisions}
    ours: dict[str, list] = {p: [] for p in precisions}
    ran = {p: resolve(device, p, i2p.cfg.enc_embed_dim) for p in precisions}  # what each runs in (auto resolved)
    theirs, worlds, world = [], {}, None
    with tempfile.TemporaryDirectory() as tmp, \
            Official(args.official, save_weights(i2p, l2w, Path(tmp) / "weights"), args.threads) as official:
        np.savez(Path(tmp) / "frames.npz", frames=np.stack(frames))
        for r in range(args.repeat):
            for p in precisions:
                res, pf, steady = measure(f"slam3r {ran[p]}", (i2p, l2w), cfgs[p], False)
                ours[p].append((rows[-1]["wall_s"] / len(frames), steady))
                print(rows[-1], flush=True)
                if r == 0:
                    worlds[p] = (np.stack([x.pts3d_world for x in res]), rows[-1]["stride"])
            out = official.call("pipeline", inputs=str(Path(tmp) / "frames.npz"), params=params,
                                seed=cfgs[args.precision].seed, out=str(Path(tmp) / "official.npz") if r == 0 else None)
            theirs.append((out["s_per_frame"], out["steady_s_per_frame"]))
            rows.append(_official_row(out))
            print(rows[-1], flush=True)
            if r == 0:
                with np.load(Path(tmp) / "official.npz") as z:
                    world = z["world"], out["stride"]
    extra["stride_official"] = world[1]
    extra["slam3r"] = {p: _versus_official(ours[p], theirs, worlds[p], world) for p in precisions}
    report(f"pipeline offline vs official — {args.weights or args.size} — {extra['device']}", rows, extra)
    for p, cmp in extra["slam3r"].items():
        _print_versus_official(ran[p], cmp, extra["stride_official"])


def _official_row(out: dict) -> dict:
    """The table row of one official pipeline run (``official.py``'s answer)."""
    return {"path": "official", "s/frame": round(out["s_per_frame"], 4),
            "steady s/frame": out["steady_s_per_frame"] and round(out["steady_s_per_frame"], 4),
            "steady frames": out["steady_frames"], "fps": round(1 / out["s_per_frame"], 2),
            "wall_s": round(out["seconds"], 1), "stride": out["stride"], "peak_rss_gib": round(out["peak_rss_gib"], 2),
            **{k: round(v, 2) for k, v in out["stages"].items()}}


def _versus_official(ours: list, theirs: list, mine: tuple, world: tuple) -> dict:
    """Ratios of the official code's seconds per frame to slam3r's (total and steady state; median and min of the
    runs) and, when both used the same stride, how far slam3r's world points ``(N, H, W, 3)`` are from its."""
    import statistics

    cmp: dict = {"stride": mine[1]}
    for key, i in (("total", 0), ("steady", 1)):
        a, b = [x[i] for x in ours], [x[i] for x in theirs]
        if None in a or None in b:
            continue
        cmp[f"{key}_s_per_frame"] = {"slam3r_min": min(a), "slam3r_median": statistics.median(a),
                                     "official_min": min(b), "official_median": statistics.median(b)}
        cmp[f"{key}_speedup_median"] = statistics.median(b) / statistics.median(a)
        cmp[f"{key}_speedup_min"] = min(b) / min(a)
    if mine[1] == world[1]:
        ref = world[0].reshape(mine[0].shape)
        dev = np.linalg.norm(mine[0] - ref, axis=-1)
        scale = float(np.median(np.linalg.norm(ref.reshape(-1, 3) - np.median(ref.reshape(-1, 3), 0), axis=1)))
        cmp.update(max_abs_diff_world=float(dev.max()), median_rel_diff_world=float(np.median(dev)) / scale)
    return cmp


def _print_versus_official(precision: str, cmp: dict, stride_official: int) -> None:
    for key in ("total", "steady"):
        if f"{key}_speedup_median" in cmp:
            print(f"{key}: slam3r ({precision}) {cmp[f'{key}_speedup_median']:.2f}x faster per frame than "
                  f"the official code (median; min {cmp[f'{key}_speedup_min']:.2f}x)")
    if cmp["stride"] != stride_official:
        print(f"strides differ (slam3r {precision} {cmp['stride']}, official {stride_official}: their random "
              "stride-search windows differ); outputs not compared; pass --stride N for equal work")
    elif "max_abs_diff_world" in cmp:
        print(f"world points, slam3r ({precision}) vs official: max |diff| {cmp['max_abs_diff_world']:.2e}, "
              f"median {cmp['median_rel_diff_world']:.2e} of the scene scale")


if __name__ == "__main__":
    main()
