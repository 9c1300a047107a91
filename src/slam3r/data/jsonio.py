"""Strict JSON for every file the project writes: no ``NaN`` / ``Infinity`` (not JSON, rejected by most parsers).

A non-finite number becomes ``null`` (an unknown value); numpy scalars and arrays become plain numbers and lists.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` and numpy values made plain (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":  # numpy scalar or array
        return finite(obj.tolist())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``NaN`` / ``Infinity`` (see :func:`finite`)."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def loads(text: str) -> Any:
    """Strict ``json.loads``: ``NaN`` / ``Infinity`` / ``-Infinity`` raise ``ValueError``."""
    def refuse(name: str) -> Any:
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)
