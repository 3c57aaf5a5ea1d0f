"""scikit-learn's bundled 8x8 digits, split once into two fixed halves.

The demo generators train on the ``train`` half only. The feature classifier used
for Frechet distance and the reference set for evaluation come from the ``heldout``
half, which the generators never saw.
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0


def _split_indices(n: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    half = n // 2
    return np.sort(order[:half]), np.sort(order[half:])


def load_digits_split(split: str, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Images in [-1, 1] as float32 ``[N, 1, size, size]`` and int64 labels.

    ``split`` is ``"train"`` (the generators' half) or ``"heldout"`` (the rest).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # 0..16 -> 0..1
    labels = digits.target.astype(np.int64)
    train, heldout = _split_indices(len(images))
    pick = {"train": train, "heldout": heldout}[split]
    images = upsample(images[pick], size)
    return images[:, None] * 2.0 - 1.0, labels[pick]


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of ``[N, h, w]`` images (align_corners=False, like torch)."""
    n, h, w = images.shape
    if (h, w) == (size, size):
        return images.copy()

    def axis(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(size) + 0.5) * src / size - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    ylo, yhi, fy = axis(h)
    xlo, xhi, fx = axis(w)
    rows = images[:, ylo] * (1 - fy)[None, :, None] + images[:, yhi] * fy[None, :, None]
    return rows[:, :, xlo] * (1 - fx) + rows[:, :, xhi] * fx


# One foreground colour per class (RGB in [0, 1]): the mid-size model's data carry class in colour too.
CLASS_COLOURS = np.array([
    [1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.3, 0.4, 1.0], [1.0, 0.9, 0.2], [0.9, 0.3, 1.0],
    [0.2, 0.9, 1.0], [1.0, 0.6, 0.2], [0.6, 1.0, 0.7], [0.7, 0.6, 1.0], [1.0, 1.0, 1.0],
], dtype=np.float32)


def load_digits_rgb(split: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The same halves as RGB ``[N, 3, size, size]`` in [-1, 1]: each digit drawn in its class's colour."""
    images, labels = load_digits_split(split, size)
    ink = (images + 1.0) / 2.0  # [N, 1, s, s] in 0..1
    rgb = ink * CLASS_COLOURS[labels][:, :, None, None]
    return (rgb * 2.0 - 1.0).astype(np.float32), labels
