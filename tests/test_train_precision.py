"""Training precision: the autocast choice per device, and bf16 training learns like fp32 (tiny settings)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slam3r.config import ConfigError, apply_overrides, from_dict
from slam3r.train.config import TrainConfig
from slam3r.train.trainer import Trainer, autocast_dtype

TINY = {"preset": "tiny", "device": "cpu", "threads": 1, "log_every": 1, "save_every": 100,
        "data": {"num_sequences": 2, "frames_per_sequence": 12, "num_views": 3, "stride": [1, 2],
                 "num_scene": 2, "num_keyframes": 2, "l2w_span": [6, 10]},
        "optim": {"steps": 100, "batch_size": 2, "lr": 2e-3, "warmup_steps": 0}}


def test_precision_choice(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    import slam3r.models.precision as precision  # the one CPU probe (training and inference)

    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert autocast_dtype(cpu, "auto") is None  # emulated bf16 is slower than fp32: auto keeps fp32
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert autocast_dtype(cpu, "auto") is torch.bfloat16
    monkeypatch.setattr(precision, "CPU_AUTO_BF16", False)  # SLAM3R_CPU_AUTO_BF16=0 holds for training too
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "bf16") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda"), "auto") is None  # inference would take fp16; training has no scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        apply_overrides(from_dict(TrainConfig, {}), ["precision=fp16"])


def _losses(precision: str, cache: Path, out: Path, steps: int = 12) -> list[float]:
    cfg = from_dict(TrainConfig, {**TINY, "precision": precision, "data": {**TINY["data"], "cache_dir": str(cache)}})
    trainer = Trainer("i2p", cfg, out, log=lambda _: None)
    batch = trainer.draw(0)  # one fixed batch: the loss must fall as the model fits it
    return [trainer.train_step(batch)["loss"] for _ in range(steps)]


def test_bf16_training_reduces_the_loss_like_fp32(tmp_path: Path) -> None:
    fp32 = _losses("fp32", tmp_path / "cache", tmp_path / "fp32")
    bf16 = _losses("bf16", tmp_path / "cache", tmp_path / "bf16")
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # same weights, same batch: bf16 forward ~ fp32 forward
    assert fp32[-1] < 0.8 * fp32[0] and bf16[-1] < 0.8 * bf16[0]
    drop32, drop16 = fp32[0] - fp32[-1], bf16[0] - bf16[-1]
    assert drop16 == pytest.approx(drop32, rel=0.25), (fp32, bf16)
