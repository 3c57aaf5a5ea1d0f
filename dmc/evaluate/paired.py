"""Paired fidelity of a compressed model against its reference, same seeds.

Both sets must come from identical initial noise and sampler settings, so image i
of one is the compressed counterpart of image i of the other. This is the sensitive
regression signal: INT8 paired RMSE is ~13x below the seed-to-seed spread (notes).
"""

from __future__ import annotations

import numpy as np

from dmc.evaluate.features import to_unit_nhwc

PSNR_CAP_DB = 100.0  # PSNR of identical images (infinite) is reported as this


def psnr_from_rmse(rmse: np.ndarray | float) -> np.ndarray:
    """PSNR in dB for data range 1.0, capped at ``PSNR_CAP_DB`` so it stays finite
    (JSON-safe, averageable); the cap is reached for RMSE <= 1e-5."""
    r = np.asarray(rmse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.minimum(-20.0 * np.log10(r), PSNR_CAP_DB)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    h, w, c = a.shape
    win = min(7, h, w)
    win -= 1 - win % 2  # must be odd; 7 suits 16x16 digits
    if win < 3:
        raise ValueError(f"images of {h}x{w} are too small for SSIM")
    return float(
        structural_similarity(
            a if c > 1 else a[..., 0],
            b if c > 1 else b[..., 0],
            win_size=win,
            data_range=1.0,
            channel_axis=-1 if c > 1 else None,
        )
    )


def paired_fidelity(images_a: np.ndarray, images_b: np.ndarray) -> dict[str, float | int | list[float]]:
    """Per-image RMSE ([0, 1] scale), PSNR and SSIM between two same-seed image sets.

    Inputs: uint8 ``[n, H, W, C]`` or float in [0, 1]. Returns the per-image lists
    ``rmse``, ``psnr``, ``ssim`` plus ``*_mean`` and ``*_worst`` (max RMSE, min PSNR,
    min SSIM) and ``n``. ``psnr_mean`` averages the capped per-image values.
    """
    a, b = to_unit_nhwc(images_a), to_unit_nhwc(images_b)
    if a.shape != b.shape:
        raise ValueError(f"paired image sets differ in shape: {a.shape} vs {b.shape}")
    if len(a) == 0:
        raise ValueError("paired image sets are empty")
    rmse = np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))
    psnr = psnr_from_rmse(rmse)
    ssim = np.array([_ssim(x, y) for x, y in zip(a, b)])
    return {
        "n": len(a),
        "rmse": rmse.tolist(),
        "psnr": psnr.tolist(),
        "ssim": ssim.tolist(),
        "rmse_mean": float(rmse.mean()),
        "rmse_worst": float(rmse.max()),
        "psnr_mean": float(psnr.mean()),
        "psnr_worst": float(psnr.min()),
        "ssim_mean": float(ssim.mean()),
        "ssim_worst": float(ssim.min()),
    }
