"""Quantizer math: weight scales, activation statistics and PTQ4DM's clipping-range search.

Conventions (ONNX QuantizeLinear): ``q = saturate(round_half_even(x / scale) + zero_point)``,
``x_hat = (q - zero_point) * scale``. Scales are float32, zero points uint8 or int8.

- Weights: symmetric per output channel, ``scale_c = max|W_c| / qmax`` with qmax = 127, or 64 with
  ``reduce_range`` (ONNX Runtime's 7-bit weights for CPUs without VNNI); zero point 0.
- Activations: per tensor. ``minmax`` takes the observed range (widened to include 0, as an integer
  zero point must represent 0 exactly). ``mse`` is PTQ4DM's search: clipping ranges that are fractions
  i/N of the observed range, i = 1..N (N = 100), choosing the one minimising mean |x - Q(x)|^2.4.
  Symmetric grids search one clip value; asymmetric ones first shrink both ends together, then refine
  each end with the other fixed (a coordinate search over PTQ4DM's 2-D range x zero-point grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}
SAMPLE_CAP = 1 << 14  # values kept per tensor for the search (a uniform random subsample)
TAIL = 64  # extreme values kept exactly at each end
_TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class QParams:
    scale: float  # a float32 value
    zero_point: int
    dtype: str  # "uint8" | "int8"
    lo: float = 0.0  # the real range the grid covers (for reports)
    hi: float = 0.0

    def to_json(self) -> dict:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point), "dtype": self.dtype,
                "range": [float(self.lo), float(self.hi)]}


def weight_scales(w: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    """Symmetric per-channel scales along ``axis`` (float32), ONNX Runtime's formula exactly."""
    w = np.asarray(w, dtype=np.float32)
    axis = axis % w.ndim
    other = tuple(i for i in range(w.ndim) if i != axis)
    absmax = np.abs(w).max(axis=other).astype(np.float64) if other else np.abs(w).astype(np.float64)
    scale = (2 * absmax) / (2 * qmax)
    scale = np.where(scale < _TINY, 1.0, scale)
    return scale.astype(np.float32)


def quantize_weights(w: np.ndarray, axis: int, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, scales): symmetric per channel, values in [-qmax, qmax]."""
    scale = weight_scales(w, axis, qmax)
    shape = [1] * w.ndim
    shape[axis % w.ndim] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def params_from_range(lo: float, hi: float, dtype: str, symmetric: bool) -> QParams:
    """Scale and zero point whose grid covers [lo, hi] (widened to include 0)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = QRANGE[dtype]
    if symmetric:
        if dtype != "int8":
            raise ValueError("symmetric activations use int8")
        absmax = max(-lo, hi)
        scale = absmax / 127.0  # ORT's symmetric int8 grid is [-127, 127]
        zp = 0
        lo, hi = -absmax, absmax
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = int(np.round(qmin - lo / scale)) if scale >= _TINY else 0
    if scale < _TINY:
        return QParams(1.0, 0 if symmetric or dtype == "int8" else qmin, dtype, 0.0, 0.0)
    return QParams(float(np.float32(scale)), int(np.clip(zp, qmin, qmax)), dtype, lo, hi)


def fake_quant(x: np.ndarray, scale, zero_point, dtype: str) -> np.ndarray:
    """Quantize-dequantize; ``scale``/``zero_point`` may be arrays that broadcast against ``x``."""
    qmin, qmax = QRANGE[dtype]
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zero_point, dtype=np.float32)
    q = np.clip(np.round(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def lp_error(x: np.ndarray, params: QParams, p: float = 2.4) -> float:
    """mean |x - Q(x)|^p (PTQ4DM's "MSE")."""
    e = np.abs(x - fake_quant(x, params.scale, params.zero_point, params.dtype))
    return float(np.mean(e ** p))


def _errors(x: np.ndarray, scales: np.ndarray, zps: np.ndarray, dtype: str, p: float,
            weights: np.ndarray | None = None) -> np.ndarray:
    """(weighted) mean |x - Q(x)|^p for each (scale, zero point) candidate, in place in float32."""
    qmin, qmax = QRANGE[dtype]
    out = np.empty(len(scales))
    chunk = max(1, (1 << 21) // max(len(x), 1))
    for i in range(0, len(scales), chunk):
        s = scales[i:i + chunk, None].astype(np.float32)
        z = zps[i:i + chunk, None].astype(np.float32)
        q = x[None, :] / s
        np.rint(q, out=q)
        q += z
        np.clip(q, qmin, qmax, out=q)
        q -= z
        q *= s
        q -= x[None, :]
        np.abs(q, out=q)
        np.power(q, np.float32(p), out=q)
        out[i:i + chunk] = q.mean(axis=1, dtype=np.float64) if weights is None else q @ weights
    return out


def _grid(los: np.ndarray, his: np.ndarray, dtype: str, symmetric: bool) -> tuple[list[QParams], np.ndarray, np.ndarray]:
    ps = [params_from_range(lo, hi, dtype, symmetric) for lo, hi in zip(los, his)]
    return ps, np.array([q.scale for q in ps]), np.array([q.zero_point for q in ps])


def search_params(x: np.ndarray, xmin: float, xmax: float, dtype: str, symmetric: bool,
                  method: str = "mse", p: float = 2.4, candidates: int = 100,
                  weights: np.ndarray | None = None) -> QParams:
    """Activation quantization parameters for data ``x`` (a sample, optionally weighted; weights sum
    to 1) with exact extremes xmin/xmax."""
    xmin, xmax = float(min(xmin, 0.0)), float(max(xmax, 0.0))
    if method == "minmax" or xmax - xmin < _TINY or len(x) == 0:
        return params_from_range(xmin, xmax, dtype, symmetric)
    if method != "mse":
        raise ValueError(f"unknown range method {method!r}")
    x = np.asarray(x, dtype=np.float32).reshape(-1)
    w = None if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    frac = np.arange(1, candidates + 1, dtype=np.float64) / candidates

    def best(los, his):
        ps, s, z = _grid(los, his, dtype, symmetric)
        err = _errors(x, s, z, dtype, p, w)
        i = int(np.argmin(err))
        return ps[i], los[i], his[i]

    if symmetric:
        amax = max(-xmin, xmax)
        return best(-amax * frac, amax * frac)[0]
    # Asymmetric: shrink both ends together (covers one-sided tensors), then refine each end.
    params, lo, hi = best(xmin * frac, xmax * frac)
    if xmin < 0 < xmax:
        params, lo, hi = best(xmin * frac, np.full(candidates, hi))
        params, lo, hi = best(np.full(candidates, lo), xmax * frac)
    return params


class ActivationStats:
    """Exact min/max and extreme tails plus a uniform random subsample of one tensor's values.

    The search scores clipping candidates on the subsample, standing for the bulk of the data, plus
    the ``tail`` largest and smallest values seen anywhere, each weighted as itself: clipping rare
    outliers a small subsample would miss is then charged at its true cost.
    """

    def __init__(self, rng: np.random.Generator, cap: int = SAMPLE_CAP, tail: int = TAIL):
        self.rng = rng
        self.cap = cap
        self.tail = tail
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self._parts: list[np.ndarray] = []
        self._low = np.zeros(0, np.float32)
        self._high = np.zeros(0, np.float32)

    def update(self, values: np.ndarray, share: float) -> None:
        """Add a batch; ``share`` = the fraction of the whole calibration set this batch is."""
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        if v.size == 0:
            return
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))
        self.count += v.size
        k = min(v.size, max(1, int(round(self.cap * share))))
        self._parts.append(v if k == v.size else v[self.rng.choice(v.size, k, replace=False)])
        t = min(self.tail, v.size)
        lo = np.concatenate([self._low, np.partition(v, t - 1)[:t]])
        hi = np.concatenate([self._high, np.partition(v, v.size - t)[v.size - t:]])
        self._low = np.sort(lo)[: self.tail]
        self._high = np.sort(hi)[-self.tail:]

    @property
    def sample(self) -> np.ndarray:
        return np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)

    def weighted(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, weights) whose weighted mean estimates a mean over all values seen."""
        bulk = self.sample
        tails = np.concatenate([self._low, self._high])
        if self.count <= len(bulk) or self.count <= 2 * self.tail:
            return bulk, np.full(len(bulk), 1.0 / max(len(bulk), 1))
        w_bulk = (self.count - len(tails)) / self.count / len(bulk)
        return np.concatenate([bulk, tails]), np.concatenate([np.full(len(bulk), w_bulk),
                                                            np.full(len(tails), 1.0 / self.count)])

    def params(self, dtype: str, symmetric: bool, method: str, p: float = 2.4, candidates: int = 100) -> QParams:
        if self.count == 0:
            raise ValueError("no calibration data for this tensor")
        x, w = self.weighted()
        return search_params(x, self.min, self.max, dtype, symmetric, method, p, candidates, weights=w)
