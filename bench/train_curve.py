"""A long training run with a learning curve: train in chunks, score rotation recovery after each chunk.

    python bench/train_curve.py --out runs/long (--until 19:25 | --minutes 90) [--l2w-share 0.3] [--chunk-minutes 15]
        [--i2p-config FILE] [--l2w-config FILE] [--seeds 1000001 1000002] [--set KEY=VALUE ...]

Two stages share the wall-time budget up to ``--until`` (UTC, today) or of ``--minutes``: the I2P stage (``--i2p-config``, by default
the continued-I2P recipe, from the bundled I2P) and then, for the last ``--l2w-share`` of the time, the L2W stage
(``--l2w-config``, by default the anchor-regime recipe) initialised from the new I2P and reading its encoder. Each
stage trains in chunks of ``--chunk-minutes``; after each chunk the checkpoint is scored with
``bench_registration.py``'s measures on held-out scenes (I2P stage: keyframe rotation recovered by I2P; L2W
stage: the pipeline's rotations with ``l2w_frame: anchor``), and a row goes to ``OUT/curve.csv`` with the
samples seen so far. The cosine schedule's length (``optim.steps``) is re-estimated at each chunk from the
measured seconds per step so that each stage decays to ``min_lr`` by its deadline; a stage whose schedule
completes early (the machine got faster) hands the rest of its time to the next. ``--set`` overrides apply to
both stages (e.g. ``threads=1 data.workers=1 precision=bf16``). The run resumes where it left off when ``OUT``
already holds a stage's checkpoint. Final weights: ``OUT/model/{i2p,l2w}`` (``--weights OUT/model``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

RECIPES = Path(__file__).resolve().parents[1] / "src/slam3r/assets/default_model/train"
CURVE_FIELDS = ["stage", "step", "samples", "train_s", "wall_s", "loss", "err", "seed", "rot_gt_deg",
                "rot_pred_deg", "recovered", "error_deg", "pipe_recovered", "pipe_error_deg", "pipe_registered"]


def load_config(path: str | Path, overrides: list[str]):
    import yaml

    from slam3r.config import apply_overrides, from_dict
    from slam3r.train.config import TrainConfig

    data = yaml.safe_load(Path(path).read_text()) or {}
    data.pop("stage", None)
    return apply_overrides(from_dict(TrainConfig, data), overrides)


def deadline_from(until: str) -> float:
    """``HH:MM`` UTC today -> seconds from now."""
    now = dt.datetime.now(dt.timezone.utc)
    h, m = (int(x) for x in until.split(":"))
    end = now.replace(hour=h, minute=m, second=0, microsecond=0)
    return (end - now).total_seconds()


def last_row(log_csv: Path) -> dict[str, str]:
    with log_csv.open() as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def seconds_per_step(log_csv: Path, since: int) -> float:
    """Median wall seconds per step logged from step ``since`` on (robust to a first step that waited minutes for
    its data to be rendered)."""
    import statistics

    with log_csv.open() as f:
        times = [float(r["sec_per_step"]) for r in csv.DictReader(f) if int(r["step"]) >= since]
    return statistics.median(times) if times else 1.0


def score(stage: str, model_dir: Path, i2p_dir: Path, seeds: list[int], frames: int) -> list[dict]:
    """Rotation recovery of a checkpoint on held-out scenes (see ``bench_registration.py``)."""
    from bench_registration import compare, frame_steps, i2p_relative_rotations, pipeline_rotations, registered
    from slam3r.demo import render_heldout
    from slam3r.models import Image2PointsModel, Local2WorldModel
    from slam3r.recon.config import ReconConfig
    from slam3r.runtime import resolve_settings

    i2p = Image2PointsModel.from_pretrained(str(i2p_dir if stage == "l2w" else model_dir)).eval()
    rows = []
    for seed in seeds:
        seq = render_heldout(seed, frames, i2p.cfg.img_size[0])
        row = {"seed": seed}
        if stage == "i2p":
            c = compare(*i2p_relative_rotations(i2p, seq.rgb, seq.c2w, 3))
            row.update(rot_gt_deg=c["gt_deg"], rot_pred_deg=c["pred_deg"], recovered=c["recovered"],
                       error_deg=c["error_deg"])
        else:
            l2w = Local2WorldModel.from_pretrained(str(model_dir)).eval()
            cfg = resolve_settings(ReconConfig, "recon", overrides=["l2w_frame=anchor"]).value  # bundled settings
            rot, gt = registered(pipeline_rotations(i2p, l2w, seq.rgb, cfg), seq.c2w)
            step = compare(frame_steps(rot), frame_steps(gt))
            row.update(pipe_recovered=step["recovered"], pipe_error_deg=step["error_deg"], pipe_registered=len(rot))
        rows.append(row)
    return rows


def run_stage(stage: str, cfg, out: Path, seconds: float, chunk_s: float, curve, seeds: list[int], frames: int,
              i2p_dir: Path, t_start: float) -> Path:
    """Train ``stage`` for ``seconds`` of wall time in chunks, scoring after each; returns its model directory."""
    import torch

    from slam3r.config import apply_overrides
    from slam3r.train.trainer import Trainer

    resume = (out / "checkpoint").is_dir()
    trainer = Trainer(stage, cfg, out, resume=resume)
    stage_end = time.perf_counter() + seconds
    while True:  # at least one chunk
        left = stage_end - time.perf_counter()
        s0 = trainer.step
        trainer.run(max_seconds=min(chunk_s, left))
        left = stage_end - time.perf_counter()
        finished = trainer.step >= trainer.cfg.optim.steps or left < min(30.0, chunk_s / 2)
        if not finished:  # re-fit the cosine to end by the deadline at the measured speed
            steps = trainer.step + max(1, int(0.95 * left / seconds_per_step(out / "log.csv", s0)))
            trainer.cfg = apply_overrides(trainer.cfg, [f"optim.steps={steps}"])
        model_dir = out / "checkpoint" / "model"
        log = last_row(out / "log.csv")
        err = log.get("err_src" if stage == "i2p" else "err_kf", "")
        with torch.no_grad():
            for r in score(stage, model_dir, i2p_dir, seeds, frames):
                row = {"stage": stage, "step": trainer.step, "samples": trainer.step * cfg.optim.batch_size,
                       "train_s": round(trainer.elapsed), "wall_s": round(time.perf_counter() - t_start),
                       "loss": log.get("loss", ""), "err": err, **r}
                curve.writerow({k: (f"{row[k]:.4g}" if isinstance(row.get(k), float) else row.get(k, ""))
                                for k in CURVE_FIELDS})
                print("CURVE", row, flush=True)
        trainer.model.train()
        if finished:
            break
    (out / "DONE").write_text(f"{trainer.step}\n")
    return out / "checkpoint" / "model"


def add_arguments(p: argparse.ArgumentParser, chunk_minutes: float = 15, seeds: tuple[int, ...] = (1_000_001, 1_000_002)
                  ) -> None:
    """The options of the two-stage run (shared with ``gpu_run.py``)."""
    p.add_argument("--l2w-share", type=float, default=0.3, help="fraction of the time given to the L2W stage")
    p.add_argument("--chunk-minutes", type=float, default=chunk_minutes)
    p.add_argument("--i2p-config", default=str(RECIPES / "i2p_continue.yaml"))
    p.add_argument("--l2w-config", default=str(RECIPES / "l2w_anchor.yaml"))
    p.add_argument("--seeds", type=int, nargs="*", default=list(seeds),
                   help="held-out scenes scored after each chunk (none: no scoring)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="training config overrides")


def train_stages(args: argparse.Namespace, end: float) -> Path:
    """Both stages until ``end`` (a ``time.perf_counter()`` value); returns ``OUT/model``."""
    from slam3r.config import replace
    from slam3r.models import Image2PointsModel, Local2WorldModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    total = end - t_start
    if total <= 0:
        raise SystemExit("no time left to train")
    new_file = not (out / "curve.csv").is_file()
    with (out / "curve.csv").open("a", newline="") as fh:
        curve = csv.DictWriter(fh, fieldnames=CURVE_FIELDS)
        if new_file:
            curve.writeheader()

        class Flushing:
            def writerow(self, row):
                curve.writerow(row)
                fh.flush()

        i2p_cfg = load_config(args.i2p_config, args.set)
        i2p_s = total * (1 - args.l2w_share)
        i2p_dir = out / "i2p" / "checkpoint" / "model"
        if not (out / "i2p" / "DONE").is_file():  # a restarted run goes on with the stage it was in
            run_stage("i2p", i2p_cfg, out / "i2p", i2p_s, 60 * args.chunk_minutes, Flushing(), args.seeds,
                      args.frames, Path(), t_start)
        l2w_cfg = replace(load_config(args.l2w_config, args.set), init=str(i2p_dir), encoder=str(i2p_dir))
        left = max(end - time.perf_counter(), min(60.0, args.l2w_share * total))  # scoring may overrun a bit
        l2w_dir = run_stage("l2w", l2w_cfg, out / "l2w", left, 60 * args.chunk_minutes, Flushing(), args.seeds,
                            args.frames, i2p_dir, t_start) if left > 0 and args.l2w_share > 0 else None
    Image2PointsModel.from_pretrained(str(i2p_dir)).save_pretrained(out / "model" / "i2p")
    if l2w_dir is not None:
        Local2WorldModel.from_pretrained(str(l2w_dir)).save_pretrained(out / "model" / "l2w")
    print(f"final weights in {out / 'model'}", flush=True)
    return out / "model"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--until", help="UTC end time HH:MM (today)")
    when.add_argument("--minutes", type=float, help="wall-time budget in minutes")
    p.add_argument("--out", required=True, help="run directory (resumed when it exists)")
    add_arguments(p)
    args = p.parse_args()
    seconds = deadline_from(args.until) if args.until else 60 * args.minutes
    train_stages(args, time.perf_counter() + seconds)


if __name__ == "__main__":
    main()
