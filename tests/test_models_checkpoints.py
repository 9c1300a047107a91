"""Checkpoint compatibility: released layouts on the meta device, save/load round trips, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from slam3r.models import CheckpointError, Image2PointsModel, Local2WorldModel, ModelConfig, RELEASED, TINY, preset
from slam3r.models import hub
from slam3r.models.loading import load_models, resolve_weights


@pytest.mark.parametrize("name,cls,l2w,params", [
    ("i2p", Image2PointsModel, False, 532_934_913),
    ("l2w", Local2WorldModel, True, 230_624_000),
])
def test_released_layout_matches_manifest(fixtures_dir, name, cls, l2w, params):
    manifest = json.loads((fixtures_dir.parent / "manifests" / f"{name}_manifest.json").read_text())
    cfg = ModelConfig.from_dict(manifest["save_pretrained_config_json"])
    assert cfg == preset("released", l2w=l2w)
    with torch.device("meta"):
        model = cls(cfg)
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest["params"]
    assert len(state) == manifest["num_state_dict_tensors"]
    assert sum(v.numel() for v in state.values()) == params
    assert ("enc_blocks.0.norm1.weight" in state) == (not l2w)


def _tiny_dir(tmp_path: Path, model) -> Path:
    return model.save_pretrained(tmp_path / "ckpt")


@torch.no_grad()
def test_round_trip_local_dir(tmp_path, tiny_models):
    i2p, _ = tiny_models
    d = _tiny_dir(tmp_path, i2p)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["pos_embed"] == "RoPE100" and cfg["enc_embed_dim"] == 64 and cfg["need_encoder"] is True
    loaded = Image2PointsModel.from_pretrained(d)
    assert loaded.cfg == i2p.cfg
    toks = torch.randn(3, 1, 16, 64)
    torch.testing.assert_close(loaded(toks).pts3d, i2p(toks).pts3d, atol=0, rtol=0)


def test_hub_loading_mocked_at_network_boundary(tmp_path, tiny_models, monkeypatch):
    _, l2w = tiny_models
    d = _tiny_dir(tmp_path, l2w)
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename))
        return str(d / filename)

    monkeypatch.setattr(hub, "_hub_download", fake_download)
    loaded = Local2WorldModel.from_pretrained("someone/slam3r_l2w")
    assert calls == [("someone/slam3r_l2w", "config.json"), ("someone/slam3r_l2w", "model.safetensors")]
    for k, v in l2w.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_hub_failure_gives_offline_hint(monkeypatch):
    def boom(repo_id, filename, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(hub, "_hub_download", boom)
    with pytest.raises(CheckpointError, match="huggingface-cli download siyan824/slam3r_i2p"):
        Image2PointsModel.from_pretrained("siyan824/slam3r_i2p")


def test_missing_and_mismatched_checkpoints(tmp_path, tiny_models):
    i2p, l2w = tiny_models
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Image2PointsModel.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="missing config.json, model.safetensors"):
        Image2PointsModel.from_pretrained(tmp_path / "empty")
    # an L2W checkpoint loaded as I2P: missing encoder blocks / retrieval head, unexpected point embedder
    d = _tiny_dir(tmp_path, l2w)
    (d / "config.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(CheckpointError, match=r"missing keys: .*corr_score.*unexpected keys: .*ponit_embedder"):
        Image2PointsModel.from_pretrained(d)
    # wrong shapes
    d2 = _tiny_dir(tmp_path / "b", i2p)
    state = {k: v.clone() for k, v in i2p.state_dict().items()}
    state["dec_norm.weight"] = torch.ones(7)
    save_file(state, str(d2 / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong shapes: dec_norm.weight: checkpoint \(7,\) vs model \(48,\)"):
        Image2PointsModel.from_pretrained(d2)
    # corrupt file
    (d2 / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        Image2PointsModel.from_pretrained(d2)


def test_unsupported_reference_config_rejected():
    cfg = TINY.to_dict()
    cfg["head_type"] = "dpt"
    with pytest.raises(ValueError, match="head_type='dpt' is not supported"):
        ModelConfig.from_dict(cfg)


def test_dust3r_initialisation(tmp_path, tiny_models):
    """A DUSt3R-style .pth (dec_blocks / dec_blocks2, argparse args) initialises the decoder streams."""
    import argparse

    i2p, _ = tiny_models
    state = {}
    for k, v in i2p.state_dict().items():
        if k.startswith("corr_score"):
            continue
        k = k.replace("mv_dec_blocks1.", "dec_blocks.").replace("mv_dec_blocks2.", "dec_blocks2.")
        state[k] = v + 1.0
    state["downstream_head1.dpt.act_postprocess.0.weight"] = torch.zeros(2)
    path = tmp_path / "dust3r.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="AsymmetricCroCo3DStereo")}, path)
    fresh = Image2PointsModel(TINY)
    missing, dropped = hub.init_from_dust3r(fresh, path)
    assert missing == sorted(k for k in i2p.state_dict() if k.startswith("corr_score"))
    assert dropped == ["downstream_head1.dpt.act_postprocess.0.weight"]
    torch.testing.assert_close(fresh.mv_dec_blocks2[1].mlp.fc1.weight, i2p.mv_dec_blocks2[1].mlp.fc1.weight + 1)
    # the L2W (no encoder) drops enc_blocks
    l2w = Local2WorldModel(preset("tiny", l2w=True))
    _, dropped = hub.init_from_dust3r(l2w, path)
    assert any(k.startswith("enc_blocks.") for k in dropped)


def test_weights_registry(tmp_path, tiny_models):
    i2p, l2w = tiny_models
    i2p.save_pretrained(tmp_path / "w" / "i2p")
    l2w.save_pretrained(tmp_path / "w" / "l2w")
    a, b = load_models(str(tmp_path / "w"))
    assert isinstance(a, Image2PointsModel) and isinstance(b, Local2WorldModel)
    assert resolve_weights("released") == ("siyan824/slam3r_i2p", "siyan824/slam3r_l2w")
    with pytest.raises(CheckpointError, match="not understood"):
        resolve_weights(str(tmp_path / "nothing-here"))


def test_input_shape_errors(tiny_models):
    i2p, l2w = tiny_models
    with pytest.raises(ValueError, match=r"tokens must be \(V, B, 16, 64\)"):
        i2p(torch.zeros(3, 1, 15, 64))
    with pytest.raises(ValueError, match=r"images must be \(N, 3, 64, 64\)"):
        i2p.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="pts3d must be"):
        l2w(torch.zeros(3, 1, 16, 64), torch.zeros(3, 1, 64, 64, 2), [0])
    with pytest.raises(ValueError, match="leaving at least one source"):
        l2w(torch.zeros(2, 1, 16, 64), torch.zeros(2, 1, 64, 64, 3), [0, 1])
    with pytest.raises(RuntimeError, match="no encoder"):
        l2w.encode(torch.zeros(1, 3, 64, 64))


def test_models_cli_convert_info_smoke(tmp_path, tiny_models, capsys):
    from slam3r.cli import main

    i2p, l2w = tiny_models
    torch.save({"model": i2p.state_dict()}, tmp_path / "i2p.pth")
    torch.save({"model": l2w.state_dict()}, tmp_path / "l2w.pth")
    for kind in ("i2p", "l2w"):
        assert main(["models", "convert", str(tmp_path / f"{kind}.pth"), str(tmp_path / "w" / kind),
                     "--kind", kind, "--preset", "tiny"]) == 0
    converted = Local2WorldModel.from_pretrained(tmp_path / "w" / "l2w")
    assert all(torch.equal(converted.state_dict()[k], v) for k, v in l2w.state_dict().items())
    assert main(["models", "info", str(tmp_path / "w" / "i2p")]) == 0
    assert "482,609 parameters in 186 tensors" in capsys.readouterr().out
    assert main(["models", "smoke", "--weights", str(tmp_path / "w"), "--device", "cpu"]) == 0
    assert "L2W pts3d (3, 1, 64, 64, 3)" in capsys.readouterr().out
    # an I2P checkpoint is not an L2W one: clear error, exit code 2
    assert main(["models", "convert", str(tmp_path / "i2p.pth"), str(tmp_path / "bad"), "--kind", "l2w",
                 "--preset", "tiny"]) == 2
    assert "missing keys: ponit_embedder" in capsys.readouterr().err
