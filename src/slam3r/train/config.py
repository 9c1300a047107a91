"""Training configuration: one dataclass tree, loaded from YAML (``slam3r train STAGE --config FILE``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from slam3r.config import ConfigError
from slam3r.models.config import ModelConfig

Stage = Literal["i2p", "retrieval", "l2w"]


@dataclass(frozen=True)
class DataConfig:
    """Where training sequences come from and how samples are cut from them.

    ``source`` ``synth`` renders procedural scenes (seeds ``[seed_start, seed_start + num_sequences)``, all inside
    the training range 0..99,999) once into ``cache_dir``; ``replica`` / ``7scenes`` read datasets laid out like
    the published ones under ``root`` (every scene / sequence folder found there is used).
    """

    source: Literal["synth", "replica", "7scenes"] = "synth"
    root: str = ""
    cache_dir: str = "outputs/train_cache"
    seed_start: int = 0
    num_sequences: int = 150
    frames_per_sequence: int = 48
    loop_frames: tuple[int, int] = (80, 240)
    """Synthetic trajectories: one loop has a random number of frames in this range (smaller = faster motion)."""
    fov_deg: tuple[float, float] = (55.0, 75.0)
    num_views: int = 5
    """I2P / retrieval: views per window (the reference uses 11); the middle one is the reference."""
    stride: tuple[int, int] = (1, 3)
    """I2P: frame stride between window views, drawn uniformly in this range (inclusive)."""
    retrieval_span: int = 40
    """Retrieval: candidate frames are drawn anywhere within this many frames of the query."""
    num_scene: int = 4
    num_keyframes: int = 3
    """L2W: scene frames (world points) and keyframes (camera points); one more view is loaded to define the
    frame (the reference: 6 + 6 + 1)."""
    l2w_span: tuple[int, int] = (12, 40)
    """L2W: the loaded views are drawn from a run of this many consecutive frames."""
    l2w_order: Literal["random", "keyframes_last", "anchor"] = "random"
    """L2W: ``random`` mixes scene frames and keyframes anywhere in the run (the reference); ``keyframes_last``
    sorts the run in time (either direction) and makes its last ``num_keyframes`` frames the keyframes, as the
    pipeline gives them: it registers a new keyframe against scene frames from the buffer of earlier ones.
    ``anchor`` orders views like ``keyframes_last`` but loads no extra view: the world frame is the camera frame
    of the latest scene frame, as the pipeline feeds L2W with ``l2w_frame: anchor``."""
    flip: bool = True
    """Random horizontal mirroring of whole samples (images flipped, x of every camera frame negated)."""
    workers: int = 0
    """Processes drawing (and, on first use, rendering) batches ahead of the training step; 0 = in the training
    process. A batch depends only on (seed, step, rank), so the run is identical for any number of workers."""

    def validate(self) -> None:
        if self.source != "synth" and not self.root:
            raise ConfigError(f"data.root is required for source {self.source!r}")
        if self.source == "synth" and not (0 <= self.seed_start and self.seed_start + self.num_sequences <= 100_000):
            raise ConfigError("synthetic training seeds must lie in 0..99,999 (>= 1,000,000 are held out)")
        if self.num_views < 2 or self.num_scene < 1 or self.num_keyframes < 1:
            raise ConfigError("need num_views >= 2, num_scene >= 1, num_keyframes >= 1")
        if self.workers < 0:
            raise ConfigError(f"data.workers must be >= 0, got {self.workers}")
        if not 1 <= self.stride[0] <= self.stride[1]:
            raise ConfigError("stride must be (lo, hi) with 1 <= lo <= hi")
        need = max((self.num_views - 1) * self.stride[1] + 1, 1 + self.num_scene + self.num_keyframes,
                   self.l2w_span[1])
        if self.frames_per_sequence < need:
            raise ConfigError(f"frames_per_sequence {self.frames_per_sequence} < {need} needed by the sampling")
        if self.l2w_span[0] < 1 + self.num_scene + self.num_keyframes or self.l2w_span[0] > self.l2w_span[1]:
            raise ConfigError("l2w_span must be (lo, hi) with lo >= 1 + num_scene + num_keyframes and lo <= hi")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with warmup + cosine decay, per optimiser step."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """Max global gradient norm; 0 = no clipping."""

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0:
            raise ConfigError("steps and batch_size must be >= 1, warmup_steps >= 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError("need 0 <= min_lr <= lr")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    The architecture is the ``config.json`` of ``init`` when it is a model directory, else the named ``preset``
    (``slam3r.models.config.PRESETS``), else ``model``; L2W always drops the encoder blocks. ``init`` (a model
    directory or a DUSt3R / SLAM3R ``.pth``) initialises every tensor whose name and shape match (e.g. L2W from the
    trained I2P; the retrieval stage needs the trained I2P here). ``encoder`` is the I2P model directory whose
    frozen encoder makes the tokens L2W reads.
    """

    preset: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    init: str = ""
    encoder: str = ""
    freeze_encoder: bool = False
    zero_point_embedder: bool = False
    """L2W: start ``ponit_embedder`` at zero when ``init`` has none, so that L2W begins as exactly the initialising
    (I2P) decoder; otherwise it keeps PyTorch's default initialisation."""
    alpha: float = 0.2
    """Weight of the -log(conf) term of the confidence-aware loss."""
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Autocast of the networks' forward pass (the heads and losses stay fp32; weights, gradients and AdamW state
    are fp32): ``bf16`` autocasts matmuls to bfloat16; ``auto`` = bf16 on CUDA with bf16 support and on CPUs with
    native bf16 (AVX-512 BF16 or AMX), else fp32."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    log_every: int = 10
    save_every: int = 100

    def validate(self) -> None:
        if self.log_every < 1 or self.save_every < 1:
            raise ConfigError("log_every and save_every must be >= 1")
        if self.alpha <= 0:
            raise ConfigError("alpha must be > 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
