"""Network configuration: the sizes of the shared multi-view ViT, with the released and test presets."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from slam3r.config import ConfigError, from_dict, to_dict


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one SLAM3R network (I2P or L2W). Images are ``img_size`` (H, W) pixels, cut in square patches."""

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    corr_depth: int = 2
    need_encoder: bool = True
    enc_minibatch: int = 11

    def validate(self) -> None:
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        for name, dim, heads in (("enc", self.enc_embed_dim, self.enc_num_heads),
                                 ("dec", self.dec_embed_dim, self.dec_num_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ConfigError(f"{name}_embed_dim {dim} / {name}_num_heads {heads} must give a head dim "
                                  "divisible by 4 (RoPE2D rotates two halves in pairs)")
        if not 1 <= self.corr_depth <= self.dec_depth:
            raise ConfigError(f"corr_depth {self.corr_depth} must be in [1, dec_depth={self.dec_depth}]")

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (rows, cols)."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: the reference's constructor kwargs, so either code base can read it."""
        d = to_dict(self)
        d.pop("rope_base")
        d.update(pos_embed=f"RoPE{self.rope_base:g}", head_type="linear", output_mode="pts3d",
                 depth_mode=["exp", -math.inf, math.inf], conf_mode=["exp", 1, math.inf],
                 mv_dec1="MultiviewDecoderBlock_max", mv_dec2="MultiviewDecoderBlock_max")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Read our ``config.json`` or the reference's (``PyTorchModelHubMixin`` kwargs); reject what we can't run."""
        d = dict(data)
        pos = d.pop("pos_embed", "RoPE100")
        if not (isinstance(pos, str) and pos.startswith("RoPE")):
            raise ConfigError(f"pos_embed {pos!r} is not supported (only RoPE2D, e.g. 'RoPE100')")
        d.setdefault("rope_base", float(pos[4:]))
        expect = {"head_type": "linear", "output_mode": "pts3d", "mv_dec1": "MultiviewDecoderBlock_max",
                  "mv_dec2": "MultiviewDecoderBlock_max", "landscape_only": True, "norm_im2_in_dec": True,
                  "patch_embed_cls": "PatchEmbedDust3R", "input_type": "img"}
        for key, want in expect.items():
            if key in d and d.pop(key) != want:
                raise ConfigError(f"{key}={data[key]!r} is not supported (only {want!r})")
        for key in ("depth_mode", "conf_mode"):
            mode = d.pop(key, ["exp"])
            if not mode or mode[0] != "exp":
                raise ConfigError(f"{key}={mode!r} is not supported (only 'exp')")
        if "conf_mode" in data and float(data["conf_mode"][1]) != 1:
            raise ConfigError(f"conf_mode minimum {data['conf_mode'][1]} is not supported (only 1)")
        d.pop("freeze", None)
        return from_dict(cls, d)


OFFICIAL_REPOS = {"i2p": "siyan824/slam3r_i2p", "l2w": "siyan824/slam3r_l2w"}
"""HuggingFace hub repos of the released checkpoints (``config.json`` + ``model.safetensors`` each)."""

RELEASED = ModelConfig()
"""The configuration of the released checkpoints (siyan824/slam3r_i2p, siyan824/slam3r_l2w)."""

TINY = ModelConfig(img_size=(64, 64), enc_embed_dim=64, enc_depth=2, enc_num_heads=4,
                   dec_embed_dim=48, dec_depth=3, dec_num_heads=4)
"""The tiny configuration of the numerical fixtures; used by tests."""

DEFAULT = ModelConfig(img_size=(112, 112), enc_embed_dim=160, enc_depth=6, enc_num_heads=5,
                      dec_embed_dim=128, dec_depth=4, dec_num_heads=4, enc_minibatch=16)
"""The small model bundled with the package (``slam3r/assets/default_model``), trained on CPU on synthetic scenes."""

PRESETS: dict[str, ModelConfig] = {"released": RELEASED, "tiny": TINY, "default": DEFAULT}


def preset(name: str, *, l2w: bool = False) -> ModelConfig:
    """Named configuration; L2W variants have no encoder blocks (they consume I2P's encoder tokens)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]
    if l2w:
        from slam3r.config import replace
        cfg = replace(cfg, need_encoder=False)
    return cfg
