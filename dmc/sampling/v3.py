"""DPM-Solver-v3: empirical model statistics (EMS) and their multistep predictor-corrector table.

Own derivation, following the structure of the paper's official code (thu-ml/DPM-Solver-v3), not its
text. In log-SNR time lambda (alpha = 1/sqrt(1 + e^{-2 lambda}) on a VP schedule), with y = x / sigma
and D the data prediction, the sampling ODE is dy/dlambda = e^lambda D. Per channel c:

* ``l``: the diagonal of the Jacobian dD/dx, so f = D - l x has the linear part taken out and
  dy/dlambda = alpha l y + e^lambda f is integrated exactly by the factor E = exp(int alpha l);
* ``s, b``: the regression df/dlambda ~ s f + b along the model's own trajectories, so that
  g = e^{-S} f - B (S = int s, B = int e^{-S} b) is nearly constant and its Taylor series in lambda
  is short.

A step s -> t is y_t = E_ts y_s + sum_n I_n g^(n)(s) + J with per-channel integrals I_n, J
(Gauss-Legendre quadrature over the interpolated statistics). The derivatives of g come from
earlier calls (predictor) or, once the next call's output exists, also from that node (the
corrector: no extra model call; it is folded into the next row like UniPC's). With l = s = b = 0
this is DPM-Solver++ in Taylor form (tests: equal to diffusers' DPM-Solver++(2M, heun)).

Coefficients are per channel, so rows carry them in ``SamplerCall.channel`` (arrays broadcast over
the sample's channel axis), plus a per-channel bias.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from dmc.sampling.calls import SamplerCall
from dmc.sampling.tables import prediction_terms

GAUSS = np.polynomial.legendre.leggauss(12)


@dataclass
class Stats:
    """EMS on a lambda grid: arrays (M, C)."""
    lambdas: np.ndarray
    l: np.ndarray
    s: np.ndarray
    b: np.ndarray
    info: dict

    @classmethod
    def trivial(cls, channels: int) -> "Stats":
        grid = np.array([-20.0, 20.0])
        z = np.zeros((2, channels))
        return cls(grid, z, z.copy(), z.copy(), {"trivial": True})

    def at(self, lam: np.ndarray, which: str) -> np.ndarray:
        """Linear interpolation in lambda (clamped): shape lam.shape + (C,)."""
        table = getattr(self, which)
        lam = np.clip(np.asarray(lam, dtype=np.float64), self.lambdas[0], self.lambdas[-1])
        return np.stack([np.interp(lam, self.lambdas, table[:, c]) for c in range(table.shape[1])], axis=-1)

    def to_json(self) -> dict:
        return {"lambdas": self.lambdas.tolist(), "l": self.l.tolist(), "s": self.s.tolist(),
                "b": self.b.tolist(), "info": self.info}

    @classmethod
    def from_json(cls, d: dict) -> "Stats":
        return cls(*(np.asarray(d[k], dtype=np.float64) for k in ("lambdas", "l", "s", "b")), dict(d["info"]))


def vp_alpha(lam):
    return 1.0 / np.sqrt(1.0 + np.exp(-2.0 * np.asarray(lam, dtype=np.float64)))


def _integral(fn, lo: float, hi: float):
    """int_lo^hi fn(u) du by Gauss-Legendre; fn maps an array of points (Q,) to (Q, C)."""
    nodes, weights = GAUSS
    u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
    return 0.5 * (hi - lo) * np.tensordot(weights, fn(u), axes=1)


class _Step:
    """The per-channel integrals of one step lambda_s -> lambda_t."""

    def __init__(self, stats: Stats, ls: float, lt: float):
        self.stats, self.ls, self.lt = stats, ls, lt

    def S(self, lam):  # int_ls^lam s, for each point of lam (Q,) -> (Q, C)
        return np.stack([_integral(lambda u: self.stats.at(u, "s"), self.ls, v) for v in np.atleast_1d(lam)])

    def B(self, lam):  # int_ls^lam e^{-S} b
        return np.stack([_integral(lambda u: np.exp(-self.S(u)) * self.stats.at(u, "b"), self.ls, v)
                         for v in np.atleast_1d(lam)])

    def L(self, lam):  # int_ls^lam alpha l
        return np.stack([_integral(lambda u: vp_alpha(u)[:, None] * self.stats.at(u, "l"), self.ls, v)
                         for v in np.atleast_1d(lam)])

    def coefficients(self, order: int):
        """(E_ts, [I_0..I_{order-1}], J), each (C,)."""
        lt_l = self.L(self.lt)[0]

        def weight(u):
            return np.exp(lt_l - self.L(u) + self.S(u)) * np.exp(u)[:, None]

        i_n = [_integral(lambda u, n=n: weight(u) * ((u - self.ls) ** n / math.factorial(n))[:, None],
                         self.ls, self.lt) for n in range(order)]
        j = _integral(lambda u: weight(u) * self.B(u), self.ls, self.lt)
        return np.exp(lt_l), i_n, j


def _add(form: dict, key, coef):
    form[key] = form.get(key, 0.0) + coef


def _taylor_terms(step: _Step, nodes: list[int], lam: list[float], l_at, order: int, i_n) -> dict:
    """sum_n I_n g^(n)(s) as a linear form over (x_j, D_j, 1), g^(n) from g at ``nodes``."""
    offsets = np.array([lam[j] - step.ls for j in nodes])
    vander = np.array([[d ** n / math.factorial(n) for n in range(order)] for d in offsets])
    w = np.linalg.inv(vander)  # g^(n)(s) = sum_j w[n, j] g_j
    form: dict = {}
    for col, j in enumerate(nodes):
        s_j, b_j = step.S(lam[j])[0], step.B(lam[j])[0]
        weight = sum(i_n[n] * w[n, col] for n in range(order))
        _add(form, ("D", j), weight * np.exp(-s_j))  # g_j = e^{-S_j}(D_j - l_j x_j) - B_j
        _add(form, ("x", j), -weight * np.exp(-s_j) * l_at[j])
        _add(form, "1", -weight * b_j)
    return form


def v3_calls(timesteps: list[float], lambdas: list[float], prediction_type: str, stats: Stats,
             order: int = 2, corrector: bool = True, orders: list[int] | None = None,
             correctors: list[bool] | None = None) -> list[SamplerCall]:
    """The table for calls at ``timesteps`` (K) with node log-SNRs ``lambdas`` (K+1; the last is where
    the sample ends; +inf is sigma = 0, reached as diffusers' final_sigmas_type="zero" does: by a first-order
    step, x_K = D_{K-1}, whose higher-order terms would grow without bound there). ``orders``/``correctors`` override the per-call choice (the search uses them)."""
    k_calls = len(timesteps)
    orders = orders or [min(order, k + 1) for k in range(k_calls)]
    orders = [min(p, k + 1) for k, p in enumerate(orders)]
    correctors = correctors or [corrector] * k_calls
    to_zero = math.isinf(lambdas[-1])
    if to_zero:
        lambdas = list(lambdas[:-1]) + [lambdas[-2] + 30.0]  # any finite stand-in: the last row is replaced
    sig = [float(vp_alpha(lam) * math.exp(-lam)) for lam in lambdas]
    l_at = [stats.at(np.array([lam]), "l")[0] for lam in lambdas]
    calls = []
    delta: dict = {}  # x^c_k - x^p_k as a form (the corrector's change of the current state)
    for k in range(k_calls):
        if k > 0 and correctors[k]:
            step = _Step(stats, lambdas[k - 1], lambdas[k])
            p = orders[k - 1]
            _, i_c, _ = step.coefficients(p + 1)
            _, i_p, _ = step.coefficients(p)
            corr = _taylor_terms(step, [k - 1, *range(k - 2, k - 1 - p, -1), k], lambdas, l_at, p + 1, i_c)
            pred = _taylor_terms(step, list(range(k - 1, k - 1 - p, -1)), lambdas, l_at, p, i_p)
            delta = {key: sig[k] * corr.get(key, 0.0) - sig[k] * pred.get(key, 0.0) for key in set(corr) | set(pred)}
        else:
            delta = {}
        step = _Step(stats, lambdas[k], lambdas[k + 1])
        e, i_n, j = step.coefficients(orders[k])
        form = {("x", k): e * sig[k + 1] / sig[k]}
        for key, v in delta.items():
            _add(form, key, e * sig[k + 1] / sig[k] * v)
        for key, v in _taylor_terms(step, list(range(k, k - orders[k], -1)), lambdas, l_at, orders[k], i_n).items():
            _add(form, key, sig[k + 1] * v)
        _add(form, "1", sig[k + 1] * j)
        calls.append(_row(form, k, timesteps[k], lambdas[k], prediction_type))
    if to_zero:
        last = calls[-1]
        calls[-1] = SamplerCall(last.timestep, last.d_x, last.d_out, last.e_x, last.e_out, a=0.0, b=0.0, c=[1.0])
    for k in range(len(calls) - 2, -1, -1):  # keep what the next row reaches back to (cf. tables.traced_calls)
        calls[k].c += [0.0] * max(0, len(calls[k + 1].c) - 1 - len(calls[k].c))
    return calls


def _row(form: dict, k: int, timestep: float, lam: float, prediction_type: str) -> SamplerCall:
    alpha = float(vp_alpha(lam))
    terms = prediction_terms(prediction_type, alpha, alpha * math.exp(-lam))
    depth = 1 + max([k - j for (kind, j) in (key for key in form if key != "1")], default=0)
    chan = lambda key: np.broadcast_to(np.asarray(form.get(key, 0.0), dtype=np.float64), form_shape).tolist()
    form_shape = np.shape(next(v for v in form.values() if np.ndim(v)))
    channel = {"a": chan(("x", k)), "c": [chan(("D", k - j)) for j in range(depth)],
               "x_hist": [chan(("x", k - j)) for j in range(1, depth)], "bias": chan("1")}
    return SamplerCall(float(timestep), *terms, a=0.0, b=0.0, c=[0.0] * depth,
                       x_hist=[0.0] * (depth - 1), channel=channel)


def compute_stats(denoise, channels_shape: tuple, lambdas_grid: np.ndarray, timestep_of, n_samples: int = 16,
                  seed: int = 0, batch: int = 16, progress=None) -> Stats:
    """EMS from the model's own predictions: ``denoise(x, t) -> D`` (numpy, float), on ``n_samples``
    trajectories of a fine DPM-Solver++(2M) over ``lambdas_grid`` (increasing, M points). Cost:
    3 * n_samples * M model evaluations (the trajectory plus a two-sided Jacobian-vector probe)."""
    started = time.time()
    rng = np.random.default_rng([seed, 3])
    lams = np.asarray(lambdas_grid, dtype=np.float64)
    c = channels_shape[0]
    axes = (0,) + tuple(range(2, 1 + len(channels_shape)))  # batch and spatial: one statistic per channel
    x = rng.standard_normal((n_samples, *channels_shape)) * 1.0
    xs, ds, ls = [], [], []
    d_prev = None
    for m, lam in enumerate(lams):
        t = timestep_of(lam)
        d = np.concatenate([denoise(x[i:i + batch], t) for i in range(0, n_samples, batch)])
        v = rng.choice([-1.0, 1.0], size=x.shape)
        eps = 1e-2 * float(vp_alpha(lam) * math.exp(-lam))
        jv = np.concatenate([(denoise(x[i:i + batch] + eps * v[i:i + batch], t)
                              - denoise(x[i:i + batch] - eps * v[i:i + batch], t)) / (2 * eps)
                             for i in range(0, n_samples, batch)])
        xs.append(x.copy()), ds.append(d), ls.append(np.mean(v * jv, axis=axes))
        if progress is not None:
            progress(m + 1, len(lams))
        if m + 1 == len(lams):
            break
        # one DPM-Solver++ step (2nd order after the first) to the next grid point
        h = lams[m + 1] - lam
        sig, sig_n = float(vp_alpha(lam) * math.exp(-lam)), float(vp_alpha(lams[m + 1]) * math.exp(-lams[m + 1]))
        a_n = float(vp_alpha(lams[m + 1]))
        step_d = d if d_prev is None else d + 0.5 * h / (lam - lams[m - 1]) * (d - d_prev)
        x = sig_n / sig * x + a_n * (-math.expm1(-h)) * step_d
        d_prev = d
    l_arr = np.array(ls)
    f = np.array([dm - l_arr[m].reshape((1, c) + (1,) * (len(channels_shape) - 1)) * xm
                  for m, (xm, dm) in enumerate(zip(xs, ds))])
    df = np.gradient(f, lams, axis=0)  # along each trajectory, in lambda
    red = tuple(a + 1 for a in axes)
    fm, dfm = f.mean(axis=red, keepdims=True), df.mean(axis=red, keepdims=True)
    cov = ((f - fm) * (df - dfm)).mean(axis=red)
    var = ((f - fm) ** 2).mean(axis=red)
    s = cov / np.maximum(var, 1e-12)
    b = dfm.reshape(len(lams), c) - s * fm.reshape(len(lams), c)
    info = {"samples": n_samples, "grid": len(lams), "model_evaluations": 3 * n_samples * len(lams),
            "seconds": round(time.time() - started, 2), "seed": seed,
            "lambda_range": [float(lams[0]), float(lams[-1])]}
    return Stats(lams, l_arr, s, b, info)
