"""Network input preprocessing, identical to the reference: resize so the short side is ``size`` (LANCZOS when
shrinking, BICUBIC when enlarging), centre-crop ``size x size``, scale to [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from slam3r.geometry.camera import input_crop_resize


def resize_crop(image: Image.Image | np.ndarray, size: int = 224) -> np.ndarray:
    """RGB image (PIL or ``(H, W, 3)`` uint8) -> ``(size, size, 3)`` uint8, resized and centre-cropped."""
    img = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    img = img.convert("RGB")
    g = input_crop_resize(img.width, img.height, size)
    interp = Image.LANCZOS if max(img.size) > max(g.resized_w, g.resized_h) else Image.BICUBIC
    box = (g.left, g.top, g.left + g.size, g.top + g.size)
    return np.array(img.resize((g.resized_w, g.resized_h), interp).crop(box))


def to_tensor(rgb: np.ndarray | Tensor) -> Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1] (mean 0.5, std 0.5)."""
    t = torch.from_numpy(np.require(rgb, requirements=["C", "W"])) if isinstance(rgb, np.ndarray) else rgb
    if t.dtype != torch.uint8 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 (..., H, W, 3) RGB, got {t.dtype} {tuple(t.shape)}")
    return (t.movedim(-1, -3).float() / 255.0 - 0.5) / 0.5
