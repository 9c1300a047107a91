"""The `slam3r` command line: one sub-command per capability, each living beside the code it drives.

A sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when used, so
``slam3r --help`` stays fast and a heavy optional dependency of one command never breaks the others.

:func:`main` is the error boundary of every command: errors caused by the user's input (a
:class:`~slam3r.errors.Slam3rError`, or an ``OSError`` on a path they gave) print one line
``slam3r CMD: error: ...`` on stderr and exit 2; anything else is a bug and keeps its traceback. ``--debug`` shows
the traceback of every error.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from slam3r.errors import EXIT_USAGE, Slam3rError

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
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of any error")
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
        print(f"slam3r {args.command}: error: missing dependency {err.name!r} ({err}); "
              f"install it with `pip install {err.name}`", file=sys.stderr)
        return 1
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except (Slam3rError, OSError) as exc:
        if args.debug or not isinstance(exc, Slam3rError) and not _is_user_path_error(exc):
            raise
        print(f"slam3r {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return EXIT_USAGE


def _describe(exc: Exception) -> str:
    """One line for the user: an OS error with a path names it and says what to check."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()} (check the path and its permissions)"
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_user_path_error(exc: OSError) -> bool:
    """A file-system error about a path (not found, permission denied, not a directory, read-only...), as opposed
    to e.g. a broken pipe or an out-of-memory mapping, which stay tracebacks."""
    return isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
                            FileExistsError)) or exc.errno in (errno.EROFS, errno.ENOSPC, errno.ENAMETOOLONG)


if __name__ == "__main__":
    sys.exit(main())
