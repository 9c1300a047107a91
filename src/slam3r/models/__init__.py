"""SLAM3R networks: I2P (:class:`Image2PointsModel`) and L2W (:class:`Local2WorldModel`) on one multi-view ViT.

Names are imported lazily, so light sub-modules (configs, the CLI's argument parsers) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Image2PointsModel": "slam3r.models.i2p",
    "Local2WorldModel": "slam3r.models.l2w",
    "MultiViewTransformer": "slam3r.models.base",
    "Pointmaps": "slam3r.models.base",
    "ModelConfig": "slam3r.models.config",
    "PRESETS": "slam3r.models.config",
    "RELEASED": "slam3r.models.config",
    "TINY": "slam3r.models.config",
    "DEFAULT": "slam3r.models.config",
    "preset": "slam3r.models.config",
    "OFFICIAL_REPOS": "slam3r.models.config",
    "CheckpointError": "slam3r.models.hub",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'slam3r.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
