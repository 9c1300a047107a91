"""Data: procedural scenes (``slam3r.data.synth``), RGB-D dataset readers/writers, frame sources, PLY I/O and
ground-truth pointmaps. Submodules are imported explicitly; this package imports nothing heavy."""
