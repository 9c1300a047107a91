"""Shared fixtures: paths to the reference fixtures and tiny networks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SPEC = Path(os.environ.get("SLAM3R_SPEC_DIR", Path(__file__).resolve().parents[2] / "shared" / "spec"))
FIXTURES = SPEC / "fixtures"

# Tiny test networks run fastest single-threaded, and CI machines are often shared: avoid OpenMP oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES} (set SLAM3R_SPEC_DIR)")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny random I2P / L2W networks (64x64 input), fixed seed."""
    from slam3r.models import Image2PointsModel, Local2WorldModel, TINY, preset

    torch.manual_seed(0)
    return Image2PointsModel(TINY).eval(), Local2WorldModel(preset("tiny", l2w=True)).eval()


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory, tiny_models) -> Path:
    """The tiny networks saved as a weights directory (``--weights DIR``: ``i2p/`` and ``l2w/``)."""
    root = tmp_path_factory.mktemp("tiny_weights")
    tiny_models[0].save_pretrained(root / "i2p")
    tiny_models[1].save_pretrained(root / "l2w")
    return root
