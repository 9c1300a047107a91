"""``slam3r train i2p|retrieval|l2w --config FILE --out DIR [--resume] [--set key=value ...]``."""

from __future__ import annotations

import argparse

STAGE_HELP = "i2p: the image-to-points network; retrieval: its scene-frame scoring head; l2w: local-to-world"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=("i2p", "retrieval", "l2w"), help=STAGE_HELP)
    parser.add_argument("--config", required=True, help="YAML training configuration (slam3r.train.config)")
    parser.add_argument("--out", required=True, help="run directory: checkpoint/, model/, log.csv")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--max-minutes", type=float, default=None, metavar="M",
                        help="stop after M minutes of wall time with a checkpoint saved (continue with --resume), "
                             "e.g. to fit a run into time-limited jobs")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override config values, dotted for sections (e.g. optim.steps=500 data.num_views=7)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import yaml

    from slam3r.config import ConfigError, apply_overrides, from_dict
    from slam3r.train.config import TrainConfig
    from slam3r.train.trainer import Trainer

    try:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        data.pop("stage", None)  # present in the config.yaml a run writes
        cfg = apply_overrides(from_dict(TrainConfig, data), args.set)
        if args.max_minutes is not None and args.max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be positive, got {args.max_minutes}")
        trainer = Trainer(args.stage, cfg, args.out, resume=args.resume)
    except (OSError, ConfigError, yaml.YAMLError) as exc:
        print(f"slam3r train: error: {exc}", file=sys.stderr)
        return 2
    trainer.run(max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    return 0
