"""Training of the three SLAM3R stages (I2P, its retrieval head, L2W), as the reference trains them.

Modules: ``config`` (dataclasses), ``sequences`` (posed RGB-D sequences: synthetic render cache, Replica,
7-Scenes), ``samples`` (windows -> network inputs + ground truth), ``losses``, ``optim`` (AdamW groups, warmup +
cosine), ``checkpoint`` (safetensors weights + resumable state), ``trainer`` (the loop), ``cli`` (``slam3r train``).
Nothing heavy is imported here.
"""
