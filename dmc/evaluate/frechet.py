"""Frechet distance between feature sets, with a bootstrap interval.

FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the FID formula on any
features. At N of a few hundred its sampling noise is as large as an INT8 delta
(see notes), so gates should use the interval, not the point value, and compare
configurations at the same N: FD is biased upward at small N.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from dmc.evaluate.features import FeatureExtractor


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``[n, d]`` features."""
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features [n >= 2, d], got shape {f.shape}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """FD between two Gaussians via ``scipy.linalg.sqrtm`` of ``S1 S2``.

    Covariances of few samples in many dims are singular, so a non-finite or
    ill-conditioned root is retried with ``eps * I`` added to both; imaginary parts from round-off are
    dropped, larger ones raise (they mean the covariances are not PSD).
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if caught or not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        scale = max(1.0, np.abs(np.diagonal(covmean).real).max())
        if imag > 1e-3 * scale:
            raise ValueError(f"sqrtm has a large imaginary component ({imag:.3g}); covariances not PSD?")
        covmean = covmean.real
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))  # tiny negatives are round-off


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FD between two ``[n, d]`` feature sets (rows are samples)."""
    return frechet_from_stats(*feature_stats(feats_a), *feature_stats(feats_b))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_with_ci(
    feats_gen: np.ndarray,
    feats_ref: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    strata: np.ndarray | None = None,
) -> dict[str, float | int]:
    """FD with a ``1 - alpha`` bootstrap interval over the generated samples.

    Rows of ``feats_gen`` are resampled with replacement; the reference is fixed.
    With ``strata`` (one label per row, e.g. the class each image was asked for) rows are
    resampled within each stratum, so every replicate keeps the class mix of the design:
    when ``dmc eval`` fixes the labels, class imbalance is not a source of noise, and an
    unstratified bootstrap (whose replicates vary the mix) would overstate the spread.
    Replicates use Tr((S_g S_r)^(1/2)) = sum sqrt(eig(R S_g R)), R = S_r^(1/2), which
    is exact for PSD covariances and needs one ``eigvalsh`` each (fast at d = 2048).
    Resampling with replacement inflates every replicate (duplicated rows), so the
    percentile interval is re-centred by the bootstrap bias (mean replicate - fd):
    it measures the sampling noise around ``fd`` at this N.
    """
    gen = np.asarray(feats_gen, dtype=np.float64)
    mu_r, sigma_r = feature_stats(feats_ref)
    fd = frechet_distance(gen, feats_ref)
    root_r = _psd_sqrt(sigma_r)
    base = np.trace(sigma_r)
    rng = np.random.default_rng(seed)
    groups = None
    if strata is not None:
        strata = np.asarray(strata).reshape(-1)
        if len(strata) != len(gen):
            raise ValueError(f"strata has {len(strata)} labels for {len(gen)} feature rows")
        groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    reps = np.empty(n_boot)
    for b in range(n_boot):
        if groups is None:
            pick = rng.integers(0, len(gen), len(gen))
        else:
            pick = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        mu_g, sigma_g = feature_stats(gen[pick])
        eig = np.linalg.eigvalsh(root_r @ sigma_g @ root_r)
        diff = mu_g - mu_r
        reps[b] = diff @ diff + np.trace(sigma_g) + base - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum()
    bias = float(reps.mean() - fd)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2]) - bias
    if not lo <= fd <= hi:  # only for degenerate, very skewed replicate sets
        warnings.warn(f"bootstrap interval [{lo:.3g}, {hi:.3g}] excludes fd {fd:.3g}", stacklevel=2)
    return {
        "fd": fd,
        "ci_low": float(max(lo, 0.0)),
        "ci_high": float(max(hi, 0.0)),
        "n_gen": len(gen),
        "n_ref": len(feats_ref),
        "n_boot": n_boot,
        "alpha": alpha,
        "boot_bias": bias,
        "stratified": groups is not None,
    }


def reference_features(extractor: FeatureExtractor, split: str = "heldout") -> np.ndarray:
    """Features of the real digits of ``split`` (default: the half generators never saw)."""
    from dmc.data.digits import load_digits_split

    images, _ = load_digits_split(split)  # [N, 1, 16, 16] in [-1, 1]
    unit = np.clip((images[:, 0] + 1.0) / 2.0, 0.0, 1.0)[..., None]
    return extractor(unit)
