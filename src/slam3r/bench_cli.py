"""``slam3r bench NAME [ARGS...]``: run one of the benchmark scripts in the repository's ``bench/`` folder."""

from __future__ import annotations

import argparse
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = available()
    parser.add_argument("name", help="benchmark to run: " + (", ".join(names) if names else
                                                            "(none found: run from a source checkout)"))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark (see its --help)")


def run(args: argparse.Namespace) -> int:
    import runpy
    import sys

    script = BENCH_DIR / f"bench_{args.name}.py"
    if not script.is_file():
        print(f"slam3r bench: error: unknown benchmark {args.name!r}; available: {', '.join(available()) or 'none'} "
              f"(benchmarks live in the source checkout's bench/ folder)", file=sys.stderr)
        return 2
    sys.argv = [str(script), *args.args]
    runpy.run_path(str(script), run_name="__main__")
    return 0
