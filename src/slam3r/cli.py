"""The `slam3r` command line: one sub-command per capability, each living beside the code it drives.

A sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when used, so
``slam3r --help`` stays fast and a heavy optional dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "recon": ("slam3r.recon.cli", "reconstruct a video / image folder / stream into a world-frame point cloud"),
    "export": ("slam3r.recon.interop", "export a reconstruction as a COLMAP sparse model / nerfstudio transforms.json"),
    "demo": ("slam3r.demo", "reconstruct a held-out synthetic scene with the bundled model and score it"),
    "synth": ("slam3r.data.cli", "render a procedural indoor scene sequence with ground truth"),
    "eval": ("slam3r.eval.cli", "score a reconstruction against ground truth (published protocol)"),
    "train": ("slam3r.train.cli", "train I2P, the retrieval head or L2W"),
    "serve": ("slam3r.service.cli", "real-time reconstruction service over RabbitMQ"),
    "publish": ("slam3r.service.publish", "stream a video or camera into the RabbitMQ frame exchange"),
    "app": ("slam3r.app.cli", "Gradio web app"),
    "view": ("slam3r.app.view", "view a finished reconstruction / render it to mp4"),
    "bench": ("slam3r.bench_cli", "run the speed benchmarks in bench/"),
    "models": ("slam3r.models.cli", "inspect, convert and smoke-test network checkpoints"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slam3r",
        description="Dense 3D reconstruction from monocular RGB video, no calibration needed.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and exc.name.startswith("slam3r"):
                # Sub-command not part of this build.
                sub._name_parser_map.pop(name, None)
                sub._choices_actions = [a for a in sub._choices_actions if a.dest != name]
                continue
            p.set_defaults(_import_error=exc)
            continue
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    err = getattr(args, "_import_error", None)
    if err is not None:
        print(f"slam3r {args.command}: missing dependency {err.name!r} ({err}); "
              f"install it with `pip install {err.name}`", file=sys.stderr)
        return 1
    mod = importlib.import_module(args._module)
    return int(mod.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
