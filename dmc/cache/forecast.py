"""TaylorSeer-style forecasting of cached features (``--cache-method forecast``).

At a cached call the skipped feature is not reused as it was last computed but extrapolated
from the last ``order + 1`` full computations by finite differences, i.e. by the polynomial
through them, evaluated at the cached call. With the nodes fixed by the static schedule the
extrapolation is linear in the stored features with weights known at compile time, so the call
table carries the weights and the runtime only forms ``sum_i w_i * F_i`` (newest first).

Order 1 is ``F1 + (F1 - F2) * (k - k1) / (k1 - k2)``; order 2 adds the second difference. The
abscissa is the call index (DDIM and DPM-Solver++ spacings in dmc are uniform in timestep, so
this equals TaylorSeer's step distance). Near the start, with fewer full computations behind a
call, the order drops to what is available (order 0 = plain reuse).
"""

from __future__ import annotations

import numpy as np


def lagrange_weights(nodes: list[float], at: float) -> list[float]:
    """Weights ``w`` with ``p(at) = sum_i w_i p(nodes[i])`` for every polynomial of degree < len(nodes)."""
    w = []
    for i, xi in enumerate(nodes):
        v = 1.0
        for j, xj in enumerate(nodes):
            if j != i:
                v *= (at - xj) / (xi - xj)
        w.append(v)
    return w


def forecast_weights(written: np.ndarray, order: int) -> dict[int, list[float]]:
    """For each call k that does not write the feature (``written[k]`` False) and has at least one
    earlier write: weights over the most recent writes before k, newest first."""
    written = np.asarray(written, dtype=bool)
    out: dict[int, list[float]] = {}
    done: list[int] = []
    for k, w in enumerate(written):
        if w:
            done.insert(0, k)
            continue
        if not done:
            continue
        nodes = done[: order + 1]
        out[k] = [float(v) for v in lagrange_weights([float(n) for n in nodes], float(k))]
    return out


def history_needed(weights: dict[int, list[float]]) -> int:
    return max((len(w) for w in weights.values()), default=1)


def annotate_calls(calls, written: np.ndarray, names: list[str], order: int) -> dict:
    """Write ``call.extra["forecast"] = {tensor name: weights}`` at every call that reads a cached
    tensor; ``written`` is ``[K, len(names)]`` (or ``[K]`` for one name). Returns the manifest record."""
    written = np.asarray(written, dtype=bool).reshape(len(calls), -1)
    orders_used = []
    for j, name in enumerate(names):
        for k, w in forecast_weights(written[:, j], order).items():
            calls[k].extra.setdefault("forecast", {})[name] = w
            orders_used.append(len(w) - 1)
    return {"order": order, "abscissa": "call index", "forecast_reads": len(orders_used),
            "reads_at_full_order": int(sum(o == order for o in orders_used))}
