"""slam3r: real-time dense 3D reconstruction from monocular RGB video (SLAM3R, re-implemented)."""

__version__ = "0.1.0"
