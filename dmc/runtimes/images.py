"""Image grids for people to look at (Pillow, no torch)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np


def make_grid(images: np.ndarray, cols: int, pad: int = 2, scale: int = 4) -> np.ndarray:
    """uint8 ``[n, H, W, C]`` -> one uint8 ``[rows*(H+pad), cols*(W+pad), C]`` picture, upscaled."""
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = im
    return grid.repeat(scale, 0).repeat(scale, 1)


def save_grid(images: np.ndarray, path: str | os.PathLike, cols: int = 10) -> None:
    from PIL import Image

    grid = make_grid(images, cols)
    mode = "L" if grid.shape[2] == 1 else "RGB"
    img = Image.fromarray(grid[..., 0] if mode == "L" else grid[..., :3], mode)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
