"""SLAM3R networks: I2P (:class:`Image2PointsModel`) and L2W (:class:`Local2WorldModel`) on one multi-view ViT."""

from slam3r.models.base import MultiViewTransformer, Pointmaps
from slam3r.models.config import PRESETS, RELEASED, TINY, ModelConfig, preset
from slam3r.models.hub import CheckpointError, OFFICIAL_REPOS
from slam3r.models.i2p import Image2PointsModel
from slam3r.models.l2w import Local2WorldModel

__all__ = ["Image2PointsModel", "Local2WorldModel", "MultiViewTransformer", "Pointmaps", "ModelConfig", "PRESETS",
           "RELEASED", "TINY", "preset", "CheckpointError", "OFFICIAL_REPOS"]
