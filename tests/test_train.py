"""Training: loss values on hand-made cases, normalisations, schedule, one step learns, exact resume, and models
saved by training load through ``from_pretrained``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slam3r.config import ConfigError, apply_overrides, from_dict
from slam3r.models import Image2PointsModel, Local2WorldModel
from slam3r.models.config import ModelConfig
from slam3r.train.config import DataConfig, OptimConfig, TrainConfig
from slam3r.train.losses import conf_regression_loss, i2p_loss, normalize_i2p, retrieval_loss
from slam3r.train.optim import lr_at, param_groups
from slam3r.train.samples import Sampler
from slam3r.train.sequences import SynthSequences
from slam3r.train.trainer import Trainer

TINY_DATA = {"num_sequences": 2, "frames_per_sequence": 12, "num_views": 3, "stride": [1, 2],
             "num_scene": 2, "num_keyframes": 2, "l2w_span": [6, 10], "retrieval_span": 8}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth_cache")


def tiny_config(cache: Path, steps: int = 6, **extra) -> TrainConfig:
    data = {"cache_dir": str(cache), **TINY_DATA}
    return from_dict(TrainConfig, {"preset": "tiny", "data": data, "device": "cpu", "log_every": 1, "save_every": 2,
                                   "optim": {"steps": steps, "batch_size": 2, "lr": 1e-3, "warmup_steps": 2},
                                   **extra})


# ------------------------------------------------------------------------------------------------------- losses
def test_conf_loss_hand_computed() -> None:
    # view 0: pixel a error (3,4,0) -> 5 with conf 2; pixel b exact with conf 1.
    # view 1: pixel a error 1 with conf e; pixel b invalid (its huge error must not count).
    pred = torch.zeros(2, 1, 1, 2, 3)
    gt = torch.zeros(2, 1, 1, 2, 3)
    gt[0, 0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    gt[1, 0, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    gt[1, 0, 0, 1] = torch.tensor([100.0, 0.0, 0.0])
    conf = torch.tensor([[[[2.0, 1.0]]], [[[math.e, 7.0]]]])
    valid = torch.tensor([[[[True, True]]], [[[True, False]]]])
    loss, err = conf_regression_loss(pred, conf, gt, valid, alpha=0.2)
    view0 = ((2 * 5 - 0.2 * math.log(2)) + (0 - 0.2 * math.log(1))) / 2
    view1 = math.e * 1 - 0.2 * 1
    assert loss.item() == pytest.approx(view0 + view1, rel=1e-6)
    assert err.tolist() == pytest.approx([2.5, 1.0])


def test_i2p_normalisation_and_scale_invariance() -> None:
    pts = torch.zeros(2, 1, 1, 2, 3)
    pts[0, 0, 0, 0, 2] = 1.0
    pts[1, 0, 0, 0, 2] = 3.0
    pts[1, 0, 0, 1, 0] = 50.0  # invalid: excluded from the mean distance (1 + 3) / 2 = 2
    valid = torch.tensor([[[[True, False]]], [[[True, False]]]])
    assert normalize_i2p(pts, valid)[:, 0, 0, 0, 2].tolist() == pytest.approx([0.5, 1.5])
    # a prediction equal to the GT up to scale has zero regression error: loss = sum_v mean(-alpha log conf)
    conf = torch.full((2, 1, 1, 2), 3.0)
    loss, err = i2p_loss(7.0 * pts, conf, pts, valid, alpha=0.2)
    assert loss.item() == pytest.approx(2 * (-0.2 * math.log(3.0)), rel=1e-5)
    assert err.abs().max().item() < 1e-6


def test_retrieval_loss_hand_computed() -> None:
    logits = torch.zeros(2, 1, 4)  # mean(exp(0)) = 1 -> 1 / 2
    conf = torch.full((2, 1, 3, 3), 4.0)  # mean(conf - 1) = 3 -> 3 / 4
    assert retrieval_loss(logits, conf).item() == pytest.approx(0.25)
    big = torch.full((1, 1, 4), 200.0)  # exp overflows fp32; the x/(1+x) form must not
    assert retrieval_loss(big, torch.full((1, 1, 2, 2), 1.0 + 1e30)).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------------ optim
def test_schedule_and_param_groups() -> None:
    cfg = OptimConfig(steps=12, lr=1.0, min_lr=0.1, warmup_steps=2)
    lrs = [lr_at(s, cfg) for s in range(12)]
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    model = Image2PointsModel(ModelConfig(img_size=(32, 32), enc_embed_dim=16, enc_depth=1, enc_num_heads=2,
                                          dec_embed_dim=16, dec_depth=2, dec_num_heads=2))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith("bias") or "norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.05


# ------------------------------------------------------------------------------------------------------ samples
def test_l2w_batch_normalisation(cache_dir: Path) -> None:
    cfg = DataConfig(cache_dir=str(cache_dir), **{k: tuple(v) if isinstance(v, list) else v
                                                  for k, v in TINY_DATA.items()})
    seqs = SynthSequences(range(cfg.num_sequences), 64, cfg.frames_per_sequence, cache_dir)
    batch = Sampler(seqs, cfg, seed=0).batch_l2w(step=3, batch_size=2)
    ns, valid = batch.num_scene, batch.valid[..., None].float()
    scene_dist = (batch.gt[:ns].norm(dim=-1) * batch.valid[:ns]).sum(dim=(0, 2, 3)) / batch.valid[:ns].sum(dim=(0, 2, 3))
    assert scene_dist.tolist() == pytest.approx([1.0, 1.0], rel=1e-4)  # scene frames jointly normalised
    kf_dist = (batch.inputs[ns:].norm(dim=-1) * batch.valid[ns:]).sum(dim=(2, 3)) / batch.valid[ns:].sum(dim=(2, 3))
    assert kf_dist.flatten().tolist() == pytest.approx([1.0] * kf_dist.numel(), rel=1e-4)  # each keyframe alone
    assert torch.equal(batch.inputs[:ns], batch.gt[:ns] * valid[:ns])
    # the same step always gives the same batch (exact resume relies on it)
    again = Sampler(seqs, cfg, seed=0).batch_l2w(step=3, batch_size=2)
    assert torch.equal(again.gt, batch.gt) and torch.equal(again.images, batch.images)


class _Recording:
    """A training sequence that records the frame ids it is asked to load."""

    def __init__(self, seq, loaded: list[np.ndarray]) -> None:
        self.seq, self.loaded = seq, loaded

    def __len__(self) -> int:
        return len(self.seq)

    def load(self, ids: np.ndarray):
        self.loaded.append(np.asarray(ids))
        return self.seq.load(ids)


def test_l2w_keyframes_last_order(cache_dir: Path) -> None:
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_DATA.items()}
    cfg = DataConfig(cache_dir=str(cache_dir), **{**data, "l2w_order": "keyframes_last"})
    seqs = SynthSequences(range(cfg.num_sequences), 64, cfg.frames_per_sequence, cache_dir)
    loaded: list[np.ndarray] = []
    sampler = Sampler([_Recording(seqs[i], loaded) for i in range(len(seqs))], cfg, seed=0)
    for step in range(8):
        sampler.batch_l2w(step, batch_size=2)
    ns, nk = cfg.num_scene, cfg.num_keyframes
    directions = set()
    for ids in loaded:  # [frame-defining view, scene frames..., keyframes...]
        assert len(set(ids.tolist())) == 1 + ns + nk
        head, kf = ids[:1 + ns], ids[1 + ns:]
        forward = kf.min() > head.max()
        assert forward or kf.max() < head.min()  # keyframes come after every other view, in one time direction
        assert np.all(np.diff(kf) > 0) if forward else np.all(np.diff(kf) < 0)
        directions.add(forward)
    assert directions == {True, False}


def test_l2w_anchor_order(cache_dir: Path) -> None:
    """``anchor``: the world frame is the latest scene frame's camera frame, and keyframes come after it in time."""
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in TINY_DATA.items()}
    cfg = DataConfig(cache_dir=str(cache_dir), **{**data, "l2w_order": "anchor", "flip": False})
    seqs = SynthSequences(range(cfg.num_sequences), 64, cfg.frames_per_sequence, cache_dir)
    loaded: list[np.ndarray] = []
    sampler = Sampler([_Recording(seqs[i], loaded) for i in range(len(seqs))], cfg, seed=0)
    rng = sampler.rng(0)
    ns, nk = cfg.num_scene, cfg.num_keyframes
    for _ in range(8):
        rgb, world, cam, valid = sampler.l2w_sample(rng)
        ids = loaded[-1]  # [frame-defining view = copy of the latest scene frame, scene frames..., keyframes...]
        assert ids[0] == ids[ns] and len(set(ids[1:].tolist())) == ns + nk
        order = np.sign(np.diff(ids[1:]))
        assert np.all(order == order[0])  # one time direction, keyframes last
        assert np.allclose(world[ns - 1][valid[ns - 1]], cam[ns - 1][valid[ns - 1]], atol=1e-4)
        assert not np.allclose(world[ns][valid[ns]], cam[ns][valid[ns]], atol=1e-2)


# ------------------------------------------------------------------------------------------------------ training
def test_one_step_decreases_loss(cache_dir: Path, tmp_path: Path) -> None:
    trainer = Trainer("i2p", tiny_config(cache_dir), tmp_path, log=lambda _: None)
    for g in trainer.optimizer.param_groups:
        g["lr"] = 1e-3
    before = trainer.loss_i2p(trainer.draw(0))[0]  # the batch of step 0, every time
    trainer.optimizer.zero_grad()
    before.backward()
    trainer.optimizer.step()
    with torch.no_grad():
        after = trainer.loss_i2p(trainer.draw(0))[0]
    assert after.item() < before.item()


def _lr_column(path: Path) -> list[float]:
    with path.open() as f:
        return [float(r["lr"]) for r in csv.DictReader(f)]


def test_resume_is_exact_and_model_loads(cache_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache_dir, steps=6)
    full = Trainer("i2p", cfg, tmp_path / "full", log=lambda _: None)
    full.run()
    part = Trainer("i2p", cfg, tmp_path / "part", log=lambda _: None)
    part.run(max_steps=3)  # "interrupted" after 3 steps (a checkpoint is saved at the last step run)
    resumed = Trainer("i2p", cfg, tmp_path / "part", resume=True, log=lambda _: None)
    assert resumed.step == 3
    resumed.run()
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _lr_column(tmp_path / "full" / "log.csv") == _lr_column(tmp_path / "part" / "log.csv")
    assert len(_lr_column(tmp_path / "part" / "log.csv")) == 6
    loaded = Image2PointsModel.from_pretrained(tmp_path / "full" / "model")
    for (name, a), b in zip(full.model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileExistsError):
        Trainer("i2p", cfg, tmp_path / "full", log=lambda _: None)
    # a wall-time budget stops after the step that exhausts it, with a checkpoint and no final model
    logs: list[str] = []
    timed = Trainer("i2p", cfg, tmp_path / "timed", log=logs.append)
    timed.run(max_seconds=0)
    assert timed.step == 1 and not (tmp_path / "timed" / "model").exists()
    assert "time budget of 0 s reached at step 1 of 6" in logs[-1]
    again = Trainer("i2p", cfg, tmp_path / "timed", resume=True, log=lambda _: None)
    assert again.step == 1
    again.run()
    for (name, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_batch_workers_do_not_change_the_run(cache_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(cache_dir, steps=3)
    serial = Trainer("i2p", cfg, tmp_path / "serial", log=lambda _: None)
    serial.run()
    parallel = Trainer("i2p", apply_overrides(cfg, ["data.workers=2"]), tmp_path / "parallel", log=lambda _: None)
    parallel.run()
    for (name, a), b in zip(serial.model.state_dict().items(), parallel.model.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="data.workers must be >= 0"):
        apply_overrides(cfg, ["data.workers=-1"])


def test_retrieval_and_l2w_stages(cache_dir: Path, tmp_path: Path) -> None:
    i2p_dir = Trainer("i2p", tiny_config(cache_dir, steps=1), tmp_path / "i2p", log=lambda _: None).run()
    ret = Trainer("retrieval", tiny_config(cache_dir, steps=2, init=str(i2p_dir)), tmp_path / "ret",
                  log=lambda _: None)
    trainable = {n for n, p in ret.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("corr_score_") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in ret.model.named_parameters() if not p.requires_grad}
    Image2PointsModel.from_pretrained(ret.run())
    assert all(torch.equal(frozen[n], p) for n, p in ret.model.named_parameters() if n in frozen)
    l2w = Trainer("l2w", tiny_config(cache_dir, steps=2, init=str(i2p_dir), encoder=str(i2p_dir),
                                     zero_point_embedder=True), tmp_path / "l2w", log=lambda _: None)
    assert not l2w.model.cfg.need_encoder
    assert torch.equal(l2w.model.mv_dec_blocks1[0].norm1.weight, l2w.encoder.mv_dec_blocks1[0].norm1.weight)
    # a point embedder the I2P lacks starts at zero, so L2W starts as the I2P decoder
    assert not l2w.model.ponit_embedder.weight.any() and not l2w.model.ponit_embedder.bias.any()
    model = Local2WorldModel.from_pretrained(l2w.run())
    assert np.isfinite(sum(p.sum().item() for p in model.parameters()))


def test_dotted_overrides_reach_sections() -> None:
    cfg = apply_overrides(TrainConfig(), ["optim.steps=7", "data.l2w_order=anchor", "preset=tiny"])
    assert (cfg.optim.steps, cfg.data.l2w_order, cfg.preset) == (7, "anchor", "tiny")
    assert cfg.data.num_views == TrainConfig().data.num_views  # untouched keys keep their values
    with pytest.raises(ConfigError, match="'optimizer' is not a section"):
        apply_overrides(cfg, ["optimizer.steps=3"])
    with pytest.raises(ConfigError, match="unknown keys"):
        apply_overrides(cfg, ["optim.stepz=3"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides(cfg, ["optim.steps"])
    with pytest.raises(ConfigError, match="expected an integer"):
        apply_overrides(cfg, ["optim.steps=many"])
