"""Evaluation exactly as published: pointmap / point-cloud reconstruction metrics (accuracy, completion, Chamfer,
F-score) after RANSAC + ICP alignment (``slam3r.eval.recon``), trajectory ATE (``slam3r.eval.trajectory``) and the
``slam3r eval`` command (``slam3r.eval.cli``). Submodules are imported explicitly."""
