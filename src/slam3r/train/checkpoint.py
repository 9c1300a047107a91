"""Resumable training checkpoints.

``DIR/`` holds ``model/`` (``config.json`` + ``model.safetensors``, loadable with ``from_pretrained``),
``optimizer.pt`` (the AdamW state and torch RNG state, read back with ``torch.load(weights_only=True)``) and
``state.json`` (step, stage, config). A checkpoint is written to ``DIR.tmp`` and renamed, so an interrupted save
never corrupts the previous one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slam3r.models.hub import load_weights, read_safetensors


def save_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    meta: dict[str, Any]) -> Path:
    """Write the state after ``step`` completed optimiser steps (see module docstring)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "model")
    torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=1))
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model weights, optimiser and torch RNG state in place; returns ``state.json`` (with ``step``)."""
    d = Path(directory)
    load_weights(model, read_safetensors(d / "model" / "model.safetensors"))
    blob = torch.load(d / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    return json.loads((d / "state.json").read_text())
