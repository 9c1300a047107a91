"""Results exchanged between the reconstruction engine and its consumers (exporters, service, app)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameResult:
    """One registered frame, at network resolution S x S (S = model img_size, 224 for the released model).

    Attributes:
        frame_id: index of the frame in the input stream (0-based, counting only frames that decoded).
        timestamp_ns: capture time if the source gave one.
        rgb: ``(S, S, 3)`` uint8 cropped network input colours.
        pts3d_local: ``(S, S, 3)`` float32 I2P points in this frame's camera frame (scene units).
        conf_i2p: ``(S, S)`` float32 I2P confidence (>= 1).
        pts3d_world: ``(S, S, 3)`` float32 points in the world frame (scene units; world = initial keyframe).
        conf: ``(S, S)`` float32 L2W confidence (>= 1; exactly 1 where the frame has no world point, so such
            pixels never pass a threshold); threshold with ``conf_thres_l2w``.
        pose_c2w: ``(4, 4)`` float64 camera-to-world pose estimated from local vs world points; all NaN when the
            frame is not ``registered``.
        focal: focal length in pixels at network resolution (principal point at the image centre).
        is_keyframe: whether the frame is in the buffering set when its result is emitted: the initial keyframes
            and frames chosen by the buffer update right after their own registration batch (a frame chosen when a
            later batch closes its stride segment is listed in the run's ``summary.json`` ``keyframes`` only).
        registered: False when no confident point places the frame in the world (e.g. an initial-window frame
            whose I2P points were all below ``conf_thres_i2p``): no pose, no points.
    """

    frame_id: int
    timestamp_ns: int | None
    rgb: np.ndarray
    pts3d_local: np.ndarray
    conf_i2p: np.ndarray
    pts3d_world: np.ndarray
    conf: np.ndarray
    pose_c2w: np.ndarray
    focal: float
    is_keyframe: bool = False
    registered: bool = True

    def points(self, conf_thres: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Confident world points: xyz ``(M, 3)`` float32, rgb ``(M, 3)`` uint8, conf ``(M,)`` float32."""
        idx = np.flatnonzero(self.conf.reshape(-1) > conf_thres)  # flat gather: ~5x faster than 2-D masks
        return self.pts3d_world.reshape(-1, 3)[idx], self.rgb.reshape(-1, 3)[idx], self.conf.reshape(-1)[idx]
