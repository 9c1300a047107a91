"""The training loop of the three stages, on one device or data-parallel under ``torchrun``.

* ``i2p``: windows of ``num_views`` frames, reference = middle view, confidence-aware loss on normalised points.
* ``retrieval``: only ``corr_score_*`` of a trained I2P learns to predict the I2P confidence of candidates.
* ``l2w``: scene frames + keyframes through the frozen I2P encoder into L2W, loss on world points.

Output directory: ``checkpoint/`` (latest resumable state), ``model/`` (final weights, ``from_pretrained``),
``log.csv`` (one row per ``log_every`` steps; ``sec_per_step`` is wall time per step, ``data_wait_s`` the part of it
spent waiting for the batch, ``elapsed_s`` the training time without waits), ``config.yaml`` (the resolved configuration).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from slam3r.config import ConfigError, replace, to_dict
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.models.config import ModelConfig, preset
from slam3r.models.hub import convert_dust3r_state, init_from_dust3r, read_config, read_safetensors, resolve_files
from slam3r.train.checkpoint import load_checkpoint, save_checkpoint
from slam3r.train.config import DataConfig, TrainConfig
from slam3r.train.losses import conf_regression_loss, i2p_loss, retrieval_loss
from slam3r.train.optim import build_optimizer, lr_at, set_lr
from slam3r.train.samples import I2PBatch, L2WBatch, Sampler
from slam3r.train.sequences import SynthSequences, replica_sequences, seven_scenes_sequences

STAGES = ("i2p", "retrieval", "l2w")
METRICS = {"i2p": ("err_ref", "err_src", "conf"), "retrieval": ("target",), "l2w": ("err_scene", "err_kf", "conf")}
"""Stage -> logged quantities besides the loss: mean regression errors (normalised units), mean confidence, mean
retrieval target."""


def build_sequences(cfg: DataConfig, size: int):
    """The indexable collection of training sequences at ``size`` px."""
    if cfg.source == "synth":
        seeds = range(cfg.seed_start, cfg.seed_start + cfg.num_sequences)
        return SynthSequences(seeds, size, cfg.frames_per_sequence, cfg.cache_dir, cfg.loop_frames, cfg.fov_deg)
    if cfg.source == "replica":
        return replica_sequences(cfg.root, size)
    return seven_scenes_sequences(cfg.root, size)


def init_matching(model: nn.Module, source: str) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``source`` (model directory or ``.pth``) whose name and shape match into ``model``.
    Returns (model keys left as initialised, source keys unused)."""
    if source.endswith((".pth", ".pt")):
        return init_from_dust3r(model, source)
    state, missing, dropped = convert_dust3r_state(read_safetensors(resolve_files(source)[1]), model)
    model.load_state_dict(state, strict=False)
    return missing, dropped


def _is_model_dir(source: str) -> bool:
    return bool(source) and (Path(source) / "config.json").is_file()


def draw_batch(sampler: Sampler, stage: str, batch_size: int, step: int) -> Any:
    """The batch of ``step`` for ``stage`` (a pure function of the sampler's seed, the step and the rank)."""
    if stage == "l2w":
        return sampler.batch_l2w(step, batch_size)
    return sampler.batch_i2p(step, batch_size, retrieval=stage == "retrieval")


class StepBatches(torch.utils.data.Dataset):
    """Map-style view of ``draw(step)``, so that ``DataLoader`` workers can draw the coming steps' batches."""

    def __init__(self, draw: Callable[[int], Any]) -> None:
        self.draw = draw

    def __getitem__(self, step: int) -> Any:
        return self.draw(step)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``TrainConfig.precision`` on ``device`` (None = fp32, no autocast): inference's choice
    (:func:`slam3r.models.precision.autocast_dtype`: ``auto`` = bf16 on CUDA with bf16 and on CPUs with AVX-512 BF16
    or AMX, same probe and ``SLAM3R_CPU_AUTO_BF16`` switch), except that training never takes fp16 (it has no loss
    scaling): fp32 there instead."""
    from slam3r.models import precision as inference

    dtype = inference.autocast_dtype(device, precision)
    return dtype if dtype is torch.bfloat16 else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.ExitStack:
    """The forward-pass context of a training step: nothing for fp32; bf16 autocast otherwise, on CPU with the
    math attention kernel (its bf16 matmuls run on AMX, where the fused CPU flash-attention backward in bf16 was
    measured ~10x slower than fp32 and made a bf16 step slower than an fp32 one)."""
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
        if device.type == "cpu":
            from torch.nn.attention import SDPBackend, sdpa_kernel
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
    return stack


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts a process group only when launched by ``torchrun`` with >1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


class Trainer:
    """One run of one stage; ``run()`` trains to ``optim.steps`` and returns the final model directory."""

    def __init__(self, stage: str, cfg: TrainConfig, out: str | Path, *, resume: bool = False,
                 log: Callable[[str], None] = print) -> None:
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; choose one of {STAGES}")
        self.stage, self.cfg, self.out, self.log = stage, cfg, Path(out), log
        self.rank, self.world, local = init_distributed()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        if cfg.device == "auto":
            self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.device.type == "cuda":  # TF32 matmuls: several times faster on Ampere and later, ample for training
            torch.set_float32_matmul_precision("high")
        self.amp_dtype = autocast_dtype(self.device, cfg.precision)
        self.log(f"training on {self.device}, precision {cfg.precision} -> "
                 f"{'bf16 autocast' if self.amp_dtype else 'fp32'}, {torch.get_num_threads()} threads")
        torch.manual_seed(cfg.seed)
        self.model, self.encoder = self._build_models()
        self.model.to(self.device).train()
        if self.world > 1:
            import torch.distributed as dist
            for t in self.model.state_dict().values():
                dist.broadcast(t, 0)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.sampler = Sampler(build_sequences(cfg.data, self.model.cfg.img_size[0]), cfg.data, cfg.seed, self.rank)
        self.draw = functools.partial(draw_batch, self.sampler, stage, cfg.optim.batch_size)
        self.step, self.elapsed = 0, 0.0
        ckpt = self.out / "checkpoint"
        if resume:
            if not ckpt.is_dir():
                raise FileNotFoundError(f"--resume: no checkpoint in {ckpt}")
            state = load_checkpoint(ckpt, self.model, self.optimizer)
            if state.get("stage") != stage:
                raise ConfigError(f"{ckpt} is a {state.get('stage')!r} checkpoint, not {stage!r}")
            self.step, self.elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
            self.log(f"resumed {stage} at step {self.step}")
        elif ckpt.exists():
            raise FileExistsError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
        self.loss_fn = {"i2p": self.loss_i2p, "retrieval": self.loss_retrieval, "l2w": self.loss_l2w}[stage]

    # --------------------------------------------------------------------------------------------- models
    def _arch(self) -> ModelConfig:
        c = self.cfg
        if _is_model_dir(c.init):
            return read_config(Path(c.init) / "config.json")
        return preset(c.preset) if c.preset else c.model

    def _build_models(self) -> tuple[nn.Module, Image2PointsModel | None]:
        c = self.cfg
        if self.stage == "retrieval":
            if not _is_model_dir(c.init):
                raise ConfigError("the retrieval stage needs init: the trained I2P model directory")
            model = Image2PointsModel.from_pretrained(c.init)
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("corr_score_"))
            return model, None
        if self.stage == "i2p":
            model: nn.Module = Image2PointsModel(self._arch())
            encoder = None
        else:
            if not _is_model_dir(c.encoder):
                raise ConfigError("the l2w stage needs encoder: the trained I2P model directory")
            encoder = Image2PointsModel.from_pretrained(c.encoder, device=self.device).requires_grad_(False)
            arch = replace(self._arch(), need_encoder=False)
            if (arch.img_size, arch.enc_embed_dim) != (encoder.cfg.img_size, encoder.cfg.enc_embed_dim):
                raise ConfigError(f"L2W {arch.img_size}/{arch.enc_embed_dim} does not match the encoder's "
                                  f"{encoder.cfg.img_size}/{encoder.cfg.enc_embed_dim}")
            model = Local2WorldModel(arch)
        if c.init:
            missing, unused = init_matching(model, c.init)
            self.log(f"initialised from {c.init}: {len(missing)} tensors left new, {len(unused)} unused")
            if c.zero_point_embedder and isinstance(model, Local2WorldModel) and "ponit_embedder.weight" in missing:
                nn.init.zeros_(model.ponit_embedder.weight)
                nn.init.zeros_(model.ponit_embedder.bias)
                self.log("point embedder initialised to zero")
        if c.freeze_encoder and self.stage == "i2p":
            for module in (model.patch_embed, model.enc_blocks):
                module.requires_grad_(False)
        return model, encoder

    # --------------------------------------------------------------------------------------------- losses
    def _encode(self, net: Image2PointsModel, images: Tensor, grad: bool) -> Tensor:
        """Images ``(V, B, 3, H, W)`` -> tokens ``(V, B, S, C)``."""
        v, b = images.shape[:2]
        with torch.set_grad_enabled(grad):
            return net.encode(images.flatten(0, 1).to(self.device)).unflatten(0, (v, b))

    def loss_i2p(self, batch: I2PBatch) -> tuple[Tensor, dict[str, float]]:
        tokens = self._encode(self.model, batch.images, grad=not self.cfg.freeze_encoder)
        out = self.model(tokens, batch.ref_id)
        loss, err = i2p_loss(out.pts3d, out.conf, batch.pts.to(self.device), batch.valid.to(self.device),
                             self.cfg.alpha)
        src = torch.cat([err[:batch.ref_id], err[batch.ref_id + 1:]])
        return loss, {"err_ref": err[batch.ref_id].item(), "err_src": src.mean().item(),
                      "conf": out.conf.detach().mean().item()}

    def loss_retrieval(self, batch: I2PBatch) -> tuple[Tensor, dict[str, float]]:
        tokens = self._encode(self.model, batch.images, grad=False)
        with torch.no_grad():
            conf = self.model(tokens, 0).conf[1:]
        loss = retrieval_loss(self.model.corr_logits(tokens[0], tokens[1:]), conf)
        return loss, {"target": (conf - 1).mean().item()}

    def loss_l2w(self, batch: L2WBatch) -> tuple[Tensor, dict[str, float]]:
        tokens = self._encode(self.encoder, batch.images, grad=False)
        ns = batch.num_scene
        out = self.model(tokens, batch.inputs.to(self.device), list(range(ns)))
        loss, err = conf_regression_loss(out.pts3d, out.conf, batch.gt.to(self.device), batch.valid.to(self.device),
                                         self.cfg.alpha)
        return loss, {"err_scene": err[:ns].mean().item(), "err_kf": err[ns:].mean().item(),
                      "conf": out.conf.detach().mean().item()}

    # --------------------------------------------------------------------------------------------- loop
    def _average_gradients(self) -> None:
        import torch.distributed as dist
        for p in self.params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def batches(self, end: int) -> Iterator[Any]:
        """The batches of steps ``self.step .. end - 1`` in order, drawn ahead by ``data.workers`` processes."""
        steps = range(self.step, end)
        workers = self.cfg.data.workers
        if workers == 0:
            return map(self.draw, steps)
        return iter(torch.utils.data.DataLoader(StepBatches(self.draw), batch_size=None, sampler=steps,
                                                num_workers=workers, prefetch_factor=4))

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step at ``self.step`` on ``batch`` (that step's); returns the logged row."""
        step, oc = self.step, self.cfg.optim
        lr = lr_at(step, oc)
        set_lr(self.optimizer, lr)
        with autocast(self.device, self.amp_dtype):
            loss, metrics = self.loss_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if math.isfinite(loss.item()):
            loss.backward()
            if self.world > 1:
                self._average_gradients()
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, oc.grad_clip if oc.grad_clip > 0 else math.inf)
            self.optimizer.step()
        else:
            self.log(f"step {step}: non-finite loss, update skipped")
            gnorm = torch.tensor(math.nan)
        self.step += 1
        return {"step": step, "lr": lr, "loss": loss.item(), **metrics, "grad_norm": gnorm.item()}

    def _csv(self) -> tuple[csv.DictWriter, object]:
        path = self.out / "log.csv"
        fields = ["step", "lr", "loss", *METRICS[self.stage], "grad_norm", "sec_per_step", "data_wait_s", "elapsed_s"]
        rows = []
        if path.is_file():  # keep only rows the resumed state has already been through
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) < self.step]
        fh = path.open("w", newline="")
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return writer, fh

    def save(self) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / "checkpoint", self.model, self.optimizer, self.step,
                            {"stage": self.stage, "elapsed_s": self.elapsed, "config": to_dict(self.cfg)})

    def run(self, max_steps: int | None = None, max_seconds: float | None = None) -> Path:
        """Train until ``optim.steps``, or ``max_steps`` more steps, or until ``max_seconds`` of wall time have
        passed (checked after each step; the checkpoint is then saved, and ``--resume`` continues the exact
        schedule). Returns ``OUT/model``, written only once the run has reached ``optim.steps``."""
        import yaml

        self.out.mkdir(parents=True, exist_ok=True)
        if self.rank == 0:
            (self.out / "config.yaml").write_text(yaml.safe_dump({"stage": self.stage, **to_dict(self.cfg)},
                                                                 sort_keys=False))
        writer, fh = self._csv() if self.rank == 0 else (None, None)
        end = self.cfg.optim.steps if max_steps is None else min(self.cfg.optim.steps, self.step + max_steps)
        started = time.perf_counter()
        batches = self.batches(end)
        try:
            t_last, n_last, waited = time.perf_counter(), 0, 0.0
            while self.step < end:
                t0 = time.perf_counter()
                batch = next(batches)
                t1 = time.perf_counter()
                row = self.train_step(batch)
                self.elapsed += time.perf_counter() - t1
                n_last, waited = n_last + 1, waited + t1 - t0
                out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
                last = self.step == end or out_of_time
                if self.rank == 0 and (row["step"] % self.cfg.log_every == 0 or last):
                    now = time.perf_counter()
                    row.update(sec_per_step=(now - t_last) / n_last, data_wait_s=waited / n_last,
                               elapsed_s=self.elapsed)
                    t_last, n_last, waited = now, 0, 0.0
                    writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
                    fh.flush()
                    self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                if self.step % self.cfg.save_every == 0 or last:
                    self.save()
                if out_of_time:
                    self.log(f"time budget of {max_seconds:.0f} s reached at step {self.step} of "
                             f"{self.cfg.optim.steps}; checkpoint saved, continue with --resume")
                    break
        finally:
            if fh is not None:
                fh.close()
        final = self.out / "model"
        if self.rank == 0 and self.step >= self.cfg.optim.steps:
            self.model.save_pretrained(final)
            self.log(f"saved {final} after {self.step} steps, {self.elapsed:.0f} s of training")
        return final
