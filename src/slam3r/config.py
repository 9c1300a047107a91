"""One configuration system for the whole package: plain dataclasses, loaded from dicts / YAML / env, validated.

Every component config (model sizes, pipeline parameters, service settings, training) is a dataclass; this module
gives them the shared round trip ``to_dict`` / ``from_dict`` (unknown keys are an error, not silently ignored),
YAML loading, dotted overrides (``"win_r=5"``) for the CLI, the help text of each field (its docstring), and
:func:`resolve_layers`, the one settings resolver: defaults < the weights' file < ``--config`` < environment < flags,
remembering where each value came from.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from slam3r.errors import Slam3rError

T = TypeVar("T")


class ConfigError(Slam3rError, ValueError):
    """A configuration value or file is invalid; the message names the key and the problem."""


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict of JSON/YAML-friendly values (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: {value!r} does not match {tp}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(name, v, args[0]) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{name}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(name, v, a) for v, a in zip(value, args))
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return from_dict(tp, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, ignore: typing.Iterable[str] = ()) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ``ConfigError`` (except those in ``ignore``)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - set(ignore)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(f"{cls.__name__}.{k}", v, hints[k]) for k, v in data.items() if k in names}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def replace(cfg: T, **changes: Any) -> T:
    """Copy of ``cfg`` with ``changes`` applied and type-checked."""
    d = to_dict(cfg)
    d.update(changes)
    return from_dict(type(cfg), d)


def apply_overrides(cfg: T, overrides: typing.Iterable[str]) -> T:
    """Apply ``key=value`` strings (values parsed as YAML scalars) to a dataclass config; dotted keys reach into
    nested sections (``optim.steps=500``). Unknown keys and sections raise ``ConfigError``."""
    data = to_dict(cfg)
    for key, value in parse_overrides(list(overrides)).items():
        *sections, leaf = key.split(".")
        node = data
        for name in sections:
            node = node.get(name)
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {name!r} is not a section of {type(cfg).__name__}")
        node[leaf] = value
    return from_dict(type(cfg), data)


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file (optionally one top-level ``section`` of it)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if section is not None:
        data = data.get(section, {}) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return from_dict(cls, data)


def field_help(cls: type) -> dict[str, str]:
    """Help text of each field of dataclass ``cls``: the docstring written under it (one paragraph, whitespace
    collapsed); fields without one are left out. Read from the source once per class."""
    import ast
    import inspect
    import textwrap

    cached = _HELP_CACHE.get(cls)
    if cached is not None:
        return cached
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # no source (frozen build): no help beyond the field names
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            out[node.target.id] = " ".join(nxt.value.value.split())
    _HELP_CACHE[cls] = out
    return out


_HELP_CACHE: dict[type, dict[str, str]] = {}


def read_sections(path: str | Path, allowed: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A YAML settings file of top-level sections (``recon:``, ``eval:``, ``service:`` ...) -> ``{section: mapping}``;
    a section not in ``allowed`` or not a mapping raises ``ConfigError`` naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or set(data) - set(allowed):
        raise ConfigError(f"{p}: expected top-level sections among {list(allowed)}, got "
                          f"{list(data) if isinstance(data, dict) else type(data).__name__}")
    for name, part in data.items():
        if part is not None and not isinstance(part, dict):
            raise ConfigError(f"{p}: section {name!r} must be a mapping of settings")
    return {name: dict(data.get(name) or {}) for name in allowed}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (values read as YAML scalars) -> dict; a malformed item raises ``ConfigError``."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not a YAML scalar") from None
    return out


def resolve_layers(cls: type[T], layers: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[T, dict[str, str]]:
    """The settings resolver: dataclass ``cls`` built from its defaults overlaid by ``layers`` (lowest first), each
    ``(label, {field: value})``, e.g. ``[("weights: DIR/recon.yaml", ...), ("--config FILE", ...), ("env
    SLAM3R_...", ...), ("flag", ...)]``.

    Returns the validated config and ``{field: label of the layer that set it, or "default"}``. A key or value that
    is not valid raises ``ConfigError`` naming the layer it came from.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    merged: dict[str, Any] = {}
    sources = dict.fromkeys(names, "default")
    for label, values in layers:
        unknown = set(values) - set(names)
        if unknown:
            raise ConfigError(f"{label}: unknown {cls.__name__} keys {sorted(unknown)}; valid keys: {names}")
        for key, value in values.items():
            try:
                merged[key] = _coerce(key, value, hints[key])
            except ConfigError as exc:
                raise ConfigError(f"{label}: {exc}") from None
            sources[key] = label
    try:
        return from_dict(cls, merged), sources
    except ConfigError as exc:
        culprits = sorted({sources[k] for k in merged})
        raise ConfigError(f"{exc} (settings from: {', '.join(culprits)})") from None
