"""Shared runtime set-up of every command and bench: the ``--weights/--device/--threads/--precision/--config/--set``
options, the settings they resolve to, and loading the networks with the thread policy.

Settings are resolved in one order everywhere (lowest first)::

    dataclass defaults < the weights' recon.yaml < --config FILE < environment (serve) < command line / widgets

A weights directory (the bundled default model, or any directory with ``i2p/`` and ``l2w/``) may carry a
``recon.yaml`` beside them holding the pipeline (``recon:``) and evaluation (``eval:``) defaults tuned for those
networks; the released checkpoints and converted ones have none and keep the reference defaults. ``--config FILE``
is the same kind of file (``recon:`` / ``eval:`` / ``service:`` sections, e.g. ``configs/wild.yaml``). The
resolved values and where each came from are written to ``summary.json`` (``config``, ``config_sources``).

Nothing here imports torch until networks are loaded, so argument parsers stay light.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Mapping, Sequence, TypeVar

from slam3r.config import ConfigError, field_help, parse_overrides, read_sections, resolve_layers, to_dict

if TYPE_CHECKING:
    import torch

    from slam3r.models.i2p import Image2PointsModel
    from slam3r.models.l2w import Local2WorldModel

T = TypeVar("T")

SETTINGS_FILE = "recon.yaml"
"""Name of the settings file a weights directory may carry."""
SECTIONS = ("recon", "eval", "service")
"""Top-level sections of a settings file (the weights' one and ``--config``)."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--max-frames``, ``--threads``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def weights_settings_file(weights: str) -> Path | None:
    """The ``recon.yaml`` that comes with a ``--weights`` choice: the bundled model's for ``default``,
    ``DIR/recon.yaml`` for a weights directory, none for ``released``, hub ids or ``I2P,L2W`` pairs (reference
    defaults)."""
    from slam3r.models.loading import bundled_dir

    root = bundled_dir() if weights == "default" else Path(weights)
    if "," in weights or weights == "released" or not (root / "i2p").is_dir():
        return None
    path = root / SETTINGS_FILE
    return path if path.is_file() else None


def weights_defaults(weights: str, section: str = "recon") -> dict[str, Any]:
    """The ``section`` of the settings file of ``weights`` (empty when it has none)."""
    path = weights_settings_file(weights)
    return read_sections(path, SECTIONS)[section] if path else {}


def weights_record(weights: str) -> str:
    """``--weights`` as recorded in summary.json: keywords and hub ids as given, a directory as an absolute path (so
    ``slam3r eval`` finds its settings from any working directory)."""
    if weights in ("default", "released") or "," in weights or not Path(weights).is_dir():
        return weights
    return str(Path(weights).resolve())


@dataclass(frozen=True)
class Settings(Generic[T]):
    """A resolved config and, for each field, the layer that set it (``default``, ``weights: FILE``, ``--config
    FILE``, ``environment``, ``flag --NAME``, ``--set``, ``widget``)."""

    value: T
    sources: dict[str, str]

    def record(self) -> dict[str, Any]:
        """Values and sources, for summary.json."""
        return {"config": to_dict(self.value), "config_sources": dict(self.sources)}



def resolve_settings(cls: type[T], section: str, *, weights: str | None = "default", config: str | None = None,
                     env: Mapping[str, Any] | None = None, flags: Mapping[str, Any] | None = None,
                     overrides: Sequence[str] = (), widgets: Mapping[str, Any] | None = None) -> Settings[T]:
    """Resolve dataclass ``cls`` (``ReconConfig`` for section ``recon``, ``EvalConfig`` for ``eval``) through every
    layer: defaults < ``weights``' settings file (none for ``None``) < ``config`` file < ``env`` values < ``flags``
    (explicitly given command-line values; ``None`` values are ignored) < ``--set`` ``overrides`` < ``widgets``."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    wfile = weights_settings_file(weights) if weights is not None else None
    if wfile is not None:
        layers.append((f"weights: {wfile}", read_sections(wfile, SECTIONS)[section]))
    if config:
        layers.append((f"--config {config}", read_sections(config, SECTIONS)[section]))
    if env:
        layers.append(("environment", env))
    for key, value in (flags or {}).items():
        if value is not None:
            layers.append((f"flag --{key.replace('_', '-')}", {key: value}))
    if overrides:
        layers.append(("--set", parse_overrides(overrides)))
    if widgets:
        layers.append(("widget", widgets))
    value, sources = resolve_layers(cls, layers)
    return Settings(value, sources)


def recon_settings(args: argparse.Namespace, flags: Mapping[str, Any] | None = None,
                   env: Mapping[str, Any] | None = None) -> Settings:
    """The :class:`~slam3r.recon.config.ReconConfig` of a command declared with :func:`add_runtime_arguments`."""
    from slam3r.recon.config import ReconConfig

    flags = {"precision": getattr(args, "precision", None), **(flags or {})}
    return resolve_settings(ReconConfig, "recon", weights=args.weights, config=getattr(args, "config", None),
                            env=env, flags=flags, overrides=getattr(args, "set", None) or ())


def field_default_text(cls: type, section: str, name: str) -> str:
    """``(default: X)`` for help text, with the bundled model's value when its settings file changes it."""
    import dataclasses

    default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
    try:
        bundled = weights_defaults("default", section)
    except ConfigError:
        bundled = {}
    if name in bundled and bundled[name] != default:
        return f"(default: {default}; with the bundled model: {bundled[name]})"
    return f"(default: {default})"


SET_HELP = {
    "recon": "override a pipeline parameter (a ReconConfig field: slam3r recon --help lists them), e.g. --set "
             "conf_thres_l2w=2 win_r=5",
    "eval": "override an evaluation setting (an EvalConfig field, e.g. --set conf_thresh=2 num_samples=50000)",
}


RUNTIME_OPTIONS = ("weights", "config", "set", "device", "threads", "precision")
"""The shared options, in the order they are declared."""


def add_runtime_arguments(parser: argparse.ArgumentParser, *, models: bool = True, section: str = "recon",
                          weights_default: str | None = "default", options: Sequence[str] | None = None,
                          device_default: str = "auto", threads_default: int | None = None,
                          precision_default: str | None = None, notes: Mapping[str, str] | None = None) -> None:
    """Declare the shared options: ``--weights``, ``--config``, ``--set`` (fields of ``section``) and, when the
    command runs the networks (``models``), ``--device``, ``--threads``, ``--precision``. A bench declares only the
    ``options`` it uses (names from :data:`RUNTIME_OPTIONS`), may change their defaults (``*_default``) and append
    a sentence of its own to an option's help (``notes``: option name -> text)."""
    wanted = set(options if options is not None else RUNTIME_OPTIONS[:None if models else 3])
    g = parser.add_argument_group("weights, settings and runtime")
    for name, (kwargs, help_text) in _runtime_options(section, weights_default, device_default, threads_default,
                                                      precision_default).items():
        if name in wanted:
            note = (notes or {}).get(name)
            g.add_argument(f"--{name}", **kwargs, help=f"{help_text}; {note}" if note else help_text)


def _runtime_options(section: str, weights_default: str | None, device_default: str, threads_default: int | None,
                     precision_default: str | None) -> dict[str, tuple[dict[str, Any], str]]:
    """Each shared option's argparse keywords and help text (``(default: ...)`` included)."""
    from slam3r.models.loading import WEIGHTS_HELP
    from slam3r.recon.config import ReconConfig

    weights_text = weights_default or ("the weights recorded in the prediction's summary.json, else default"
                                       if section == "eval" else "none")
    threads_text = threads_default or "every core the process may use"
    precision_text = (f"(default: {precision_default})" if precision_default is not None
                      else field_default_text(ReconConfig, "recon", "precision"))
    return {
        "weights": ({"default": weights_default},
                    f"{WEIGHTS_HELP}; a weights directory may carry {SETTINGS_FILE} with the settings tuned for its "
                    f"networks (default: {weights_text})"),
        "config": ({"metavar": "FILE", "default": None},
                   "YAML settings file with recon: / eval: / service: sections (e.g. configs/wild.yaml); overrides "
                   "the weights' defaults, the environment and command line override it"),
        "set": ({"nargs": "+", "action": "extend", "default": [], "metavar": "KEY=VALUE"}, SET_HELP[section]),
        "device": ({"default": device_default},
                   f"auto, cpu, cuda or cuda:N (default: {device_default}"
                   f"{' = cuda if available' if device_default == 'auto' else ''})"),
        "threads": ({"type": positive_int, "default": threads_default}, f"CPU threads (default: {threads_text})"),
        "precision": ({"choices": ("auto", "fp32", "fp16", "bf16"), "default": precision_default},
                      f"{field_help(ReconConfig).get('precision', 'autocast precision')} {precision_text}"),
    }


@dataclass
class Runtime:
    """Networks loaded for a run, the device and the CPU thread count in effect."""

    i2p: Image2PointsModel
    l2w: Local2WorldModel
    device: torch.device
    threads: int


def load_runtime(weights: str = "default", device: str = "auto", threads: int | None = None) -> Runtime:
    """Resolve the device, load the ``weights`` networks onto it and apply the thread policy
    (:func:`slam3r.models.loading.configure_threads`). Bad choices raise a :class:`~slam3r.errors.Slam3rError`."""
    from slam3r.errors import InputError
    from slam3r.models.loading import configure_threads, load_models, resolve_device

    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise InputError(f"--device {device!r}: {exc}") from None
    i2p, l2w = load_models(weights, dev)
    return Runtime(i2p, l2w, dev, configure_threads(dev, threads))


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """:func:`load_runtime` for a command declared with :func:`add_runtime_arguments`."""
    return load_runtime(args.weights, args.device, getattr(args, "threads", None))
