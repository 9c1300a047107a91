"""Code shape: every function of the package and the benches reads at once (at most 60 lines, ``def`` to last line,
nested functions counted in their parent too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60


def long_functions(directory: Path, limit: int = MAX_LINES) -> list[str]:
    """``path:line name (N lines)`` (path relative to ``directory``) of every function under ``directory`` longer
    than ``limit`` lines."""
    found = []
    for path in sorted(directory.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(directory)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_over_60_lines():
    for directory in (ROOT / "src" / "slam3r", ROOT / "bench"):
        assert directory.is_dir(), directory
        assert long_functions(directory) == []


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))  # def line + 60 lines = 61
    (tmp_path / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"m.py:5 long ({MAX_LINES + 1} lines)"]
