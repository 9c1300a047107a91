"""Procedural indoor scenes with exact ground truth, rendered on the CPU.

A seed fully determines a room (walls, floor, ceiling, furniture-like boxes / cylinders / spheres, procedural
textures, ambient + directional + point lights) and, together with a trajectory kind, a smooth camera path that
stays inside the room and revisits its start. ``render`` ray-casts RGB (uint8) and metric z-depth (float32 m).

Seed ranges (the training code relies on them):

* seeds ``0 .. 99_999`` are reserved for **training** data;
* seeds ``>= 1_000_000`` are reserved for **held-out demo / evaluation** scenes;
* seeds ``100_000 .. 999_999`` are unassigned (use them for experiments).

Example::

    from slam3r.data.synth import render_sequence
    seq = render_sequence(seed=1_000_000, num_frames=100)   # seq.rgb (100, 480, 640, 3), seq.depth, seq.K, seq.c2w
"""

from slam3r.data.synth.render import render
from slam3r.data.synth.scene import Primitive, Scene, make_scene
from slam3r.data.synth.sequence import Sequence, iter_frames, render_sequence, sequence_camera
from slam3r.data.synth.trajectory import make_trajectory

TRAIN_SEEDS = range(0, 100_000)
"""Seeds reserved for training data."""
EVAL_SEED_START = 1_000_000
"""First seed of the held-out demo / evaluation range (all seeds >= this value)."""


def is_eval_seed(seed: int) -> bool:
    """True for seeds in the held-out demo / evaluation range."""
    return seed >= EVAL_SEED_START


__all__ = [
    "EVAL_SEED_START",
    "Primitive",
    "Scene",
    "Sequence",
    "TRAIN_SEEDS",
    "is_eval_seed",
    "iter_frames",
    "make_scene",
    "make_trajectory",
    "render",
    "render_sequence",
    "sequence_camera",
]
