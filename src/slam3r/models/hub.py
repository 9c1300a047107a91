"""Checkpoint I/O: ``config.json`` + ``model.safetensors`` directories (local or HuggingFace hub), strict key
checking with readable errors, and DUSt3R / reference ``.pth`` state dicts for training initialisation.

Only ``safetensors`` and ``torch.load(weights_only=True)`` are ever used to read weights.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from slam3r.errors import Slam3rError
from slam3r.models.config import OFFICIAL_REPOS, ModelConfig

M = TypeVar("M", bound=nn.Module)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"



class CheckpointError(Slam3rError, RuntimeError):
    """A checkpoint is missing, unreadable, or does not match the network; the message says exactly how."""


def _hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
    """Fetch one file of a hub repo (the only network boundary of this module)."""
    from huggingface_hub import hf_hub_download
    return hf_hub_download(repo_id=repo_id, filename=filename, **kwargs)


def resolve_files(source: str | Path, **hub_kwargs: Any) -> tuple[Path, Path]:
    """Local paths of (config.json, model.safetensors) for a directory or a hub repo id."""
    path = Path(source)
    if path.is_dir():
        cfg, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        missing = [p.name for p in (cfg, weights) if not p.is_file()]
        if missing:
            raise CheckpointError(f"{path} is not a model directory: missing {', '.join(missing)}")
        return cfg, weights
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise CheckpointError(f"checkpoint not found: {source} (expected a directory with {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}, or a HuggingFace repo id like {OFFICIAL_REPOS['i2p']})")
    try:
        cfg = _hub_download(str(source), CONFIG_NAME, **hub_kwargs)
        weights = _hub_download(str(source), WEIGHTS_NAME, **hub_kwargs)
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, auth, timeouts)
        raise CheckpointError(
            f"could not download {source!r} from the HuggingFace hub ({type(exc).__name__}: {exc}). If this "
            f"machine is offline, download the repo elsewhere (`huggingface-cli download {source} --local-dir "
            f"DIR`) and pass DIR instead.") from exc
    return Path(cfg), Path(weights)


def read_config(path: str | Path) -> ModelConfig:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read model config {path}: {exc}") from exc
    return ModelConfig.from_dict(data)


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise CheckpointError(f"cannot read weights {path}: not a valid safetensors file ({exc})") from exc


def check_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Raise ``CheckpointError`` listing missing keys, unexpected keys and shape mismatches, if any."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise CheckpointError(f"checkpoint does not match {type(model).__name__}: " + "; ".join(problems))


def load_weights(model: M, state: dict[str, Tensor]) -> M:
    """Strictly load ``state`` into ``model`` (all keys, exact shapes) or raise ``CheckpointError``."""
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    return model


def load_pretrained(cls: type[M], source: str | Path, *, device: str | torch.device = "cpu",
                    **hub_kwargs: Any) -> M:
    """Build ``cls`` from a ``config.json`` and strictly load ``model.safetensors`` (local dir or hub repo)."""
    cfg_path, weights_path = resolve_files(source, **hub_kwargs)
    cfg = read_config(cfg_path)
    with torch.device("meta"):
        model = cls(cfg)
    state = read_safetensors(weights_path)
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created)."""
    from safetensors.torch import save_file
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    text = json.dumps(cfg.to_dict(), indent=1, default=str)
    (out / CONFIG_NAME).write_text(text)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


# --------------------------------------------------------------------------------- reference / DUSt3R .pth files
DUST3R_RENAMES = (("dec_blocks2.", "mv_dec_blocks2."), ("dec_blocks.", "mv_dec_blocks1."))


def read_torch_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """State dict of a ``.pth`` checkpoint (``{'model': ...}`` or a bare state dict), read with
    ``weights_only=True``; the argparse ``Namespace`` that DUSt3R / SLAM3R store beside the weights is allowed."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace, math.inf.__class__]):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only=True): {exc}") from exc
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (expected a dict of tensors or {{'model': ...}})")
    return state


def convert_dust3r_state(state: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Map a DUSt3R state dict onto ``model``'s keys for initialisation.

    Renames ``dec_blocks.`` -> ``mv_dec_blocks1.``, ``dec_blocks2.`` -> ``mv_dec_blocks2.``; drops keys the model
    has no place for (e.g. ``enc_blocks`` of an encoder-less L2W, DPT heads). Returns the converted dict, the model
    keys left uninitialised, and the dropped checkpoint keys, so the caller can report them.
    """
    own = model.state_dict()
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        new = key
        for old, repl in DUST3R_RENAMES:
            if new.startswith(old):
                new = repl + new[len(old):]
                break
        if new in own and own[new].shape == value.shape:
            out[new] = value
        else:
            dropped.append(key)
    missing = sorted(set(own) - set(out))
    return out, missing, sorted(dropped)


def init_from_dust3r(model: M, path: str | Path) -> tuple[list[str], list[str]]:
    """Initialise ``model`` from a DUSt3R ``.pth``; returns (model keys not initialised, checkpoint keys dropped)."""
    state, missing, dropped = convert_dust3r_state(read_torch_checkpoint(path), model)
    if not state:
        raise CheckpointError(f"{path}: no tensor matches the network; is it a DUSt3R / CroCo checkpoint?")
    model.load_state_dict(state, strict=False)
    return missing, dropped
