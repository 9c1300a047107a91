"""Optimiser and learning-rate schedule of the reference: AdamW (0.9, 0.95), weight decay 0.05 except on
biases and normalisation weights, linear warmup then cosine decay; the LR is a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from slam3r.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (matrices, conv kernels, tokens) and an undecayed one
    (biases and LayerNorm weights: every 1-D parameter)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup over ``warmup_steps``, then cosine from
    ``lr`` down to ``min_lr`` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
