"""Calibration sets taken from the deployed sampler's own trajectory.

The FP model runs the artifact's recipe through the runtime's sampler loop
(``ctx.torch_pipeline()``, with whatever cache graphs and buffers earlier passes installed) from
seeded noise; the ``on_call`` hook keeps the feeds of selected rows at selected calls. What is
kept is exactly what the deployed graph receives there: the state x_k, the *native* timestep
tau_k from the call table (not the loop index k: PTQ4DM's reference code gets this wrong, see
algorithms.md §1.8), class labels, and both CFG halves (the doubled batch is
[unconditional; conditional]), plus cached tensors for partial graphs.

Calibration chains use image indices from ``CHAIN_OFFSET`` on, so they never coincide with the
images ``dmc eval`` and verification draw for the same seed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from dmc.errors import DmcError
from dmc.progress import bar

CHAIN_OFFSET = 1_000_000  # image index of the first calibration chain (disjoint from eval images)


@dataclass
class CalibrationSet:
    method: str
    batches: dict[int, dict[str, np.ndarray]]  # call index -> feeds of the kept rows
    states: dict[int, int]  # call index -> calibration states kept there (before CFG doubling)
    graph_of: dict[int, str]  # call index -> graph that ran it while recording
    constants: dict[int, set] = field(default_factory=dict)  # per call: feed names not sliced by row
    info: dict = field(default_factory=dict)

    def rows(self, k: int) -> int:
        b = self.batches.get(k)
        return 0 if b is None else len(b["sample"])

    def timesteps(self) -> list[float]:
        """The distinct timesteps the network was fed during calibration."""
        return sorted({float(t) for b in self.batches.values() for t in np.unique(b["timestep"])})

    def summary(self, num_calls: int) -> dict:
        return {
            "method": self.method,
            "states": int(sum(self.states.values())),
            "rows": int(sum(self.rows(k) for k in self.batches)),
            "states_per_call": [int(self.states.get(k, 0)) for k in range(num_calls)],
            "timesteps": self.timesteps(),
            **self.info,
        }


def num_train_timesteps(ctx) -> int:
    return int((ctx.loaded.scheduler_config or {}).get("num_train_timesteps", 1000))


def ndtc_call_indices(taus: np.ndarray, n: int, mean: float, std: float, train_steps: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """PTQ4DM's NDTC in native time: t_i = floor(N(mean*T, (std*T)^2)) clamped to [0, T-1], then the
    deployed call whose native timestep is nearest. Small t is the clean end, so mean < 0.5 biases
    calibration toward x_0 as the paper intends. Returns (call index per chain, drawn t)."""
    t = np.floor(rng.normal(mean * train_steps, std * train_steps, size=n))
    t = np.clip(t, 0, train_steps - 1)
    k = np.abs(np.asarray(taus, dtype=np.float64)[None, :] - t[:, None]).argmin(axis=1)
    return k, t


def uniform_call_indices(num_calls: int, n_steps: int) -> list[int]:
    """Q-Diffusion's grid: every (K // n_st)-th call, in call-index space."""
    stride = max(1, num_calls // max(1, n_steps))
    return list(range(0, num_calls, stride))


def _select(feeds: dict, rows: np.ndarray, constants: set) -> dict:
    n = len(feeds["sample"])
    out = {}
    for name, v in feeds.items():
        v = np.asarray(v)
        out[name] = v if name in constants or v.ndim == 0 or v.shape[0] != n else v[rows].copy()
    return out


def _merge(parts: list[dict], constants: set) -> dict:
    return {name: parts[0][name] if name in constants else np.concatenate([p[name] for p in parts])
            for name in parts[0]}


def chains_per_batch(ctx, cfg) -> int:
    """Chains run together: ``cfg.batch_size``, fewer where the model is big (memory)."""
    from dmc.compress.device import images_per_batch

    return images_per_batch(ctx, max(1, cfg.batch_size))


def _within_budget(pipe, wanted: list[list[int]], cfg) -> tuple[list[list[int]], dict]:
    """The first chains (iid draws, so any prefix is an unbiased subset) whose estimated cost fits
    ``cfg.calibration_budget_s``: one timed call of one chain prices a call."""
    import time

    full = pipe.calls
    pipe.calls = full[:1]
    pipe.sample(1, seed=cfg.seed, batch_size=1, first=CHAIN_OFFSET)  # warm-up (allocations, kernels)
    t = time.perf_counter()
    pipe.sample(1, seed=cfg.seed, batch_size=1, first=CHAIN_OFFSET)
    per_call = time.perf_counter() - t
    pipe.calls = full
    spent, keep = 0.0, 0
    for w in wanted:
        cost = per_call * (max(w) + 1)
        if keep >= cfg.min_samples and spent + cost > cfg.calibration_budget_s:
            break
        spent, keep = spent + cost, keep + 1
    return wanted[:keep], {"seconds": cfg.calibration_budget_s, "seconds_per_call": round(per_call, 4),
                           "chains_drawn": len(wanted), "chains_kept": keep, "estimated_seconds": round(spent, 1)}


def trajectory_set(ctx, cfg, under_schedule: bool = True) -> CalibrationSet:
    """Run the FP sampler and keep the feeds the calibration method asks for."""
    calls = ctx.calls
    n_calls = len(calls)
    taus = np.array([c.timestep for c in calls])
    rng = np.random.default_rng([cfg.seed, 0x0D7C])
    info: dict = {}
    if cfg.calibration == "ndtc":
        T = num_train_timesteps(ctx)
        chain_calls, drawn = ndtc_call_indices(taus, cfg.num_samples, cfg.ndtc_mean, cfg.ndtc_std, T, rng)
        wanted = [[int(k)] for k in chain_calls]
        info["ndtc"] = {"mean": cfg.ndtc_mean, "std": cfg.ndtc_std, "train_timesteps": T,
                        "drawn_t_mean": float(drawn.mean())}
    elif cfg.calibration == "uniform":
        grid = uniform_call_indices(n_calls, cfg.uniform_calls)
        chains = math.ceil(cfg.num_samples / len(grid))
        wanted = [grid] * chains
        info["uniform_calls"] = grid
    elif cfg.calibration == "single-step":
        k = cfg.single_step_call % n_calls
        wanted = [[k]] * cfg.num_samples
        info["single_step_call"] = k
    else:
        raise ValueError(cfg.calibration)

    pipe = ctx.torch_pipeline()
    if cfg.calibration_budget_s is not None:
        wanted, info["budget"] = _within_budget(pipe, wanted, cfg)
    # Chains are independent draws, so give the chains with the earliest calls the lowest indices;
    # each batch then stops at the last call any of its chains needs (NDTC saves about a third).
    wanted = sorted(wanted, key=max)
    n_chains = len(wanted)
    base_calls = list(pipe.calls)
    if not under_schedule:  # the uncached trajectory: every call runs the full graph
        base_calls = [copy.copy(c) for c in base_calls]
        for c in base_calls:
            c.graph = "full"
    graph_of = {k: c.graph for k, c in enumerate(base_calls)}
    guided = ctx.recipe.guided
    parts: dict[int, list[dict]] = {}
    states: dict[int, int] = {}
    constants = {k: set(c.extra.get("tables", {})) for k, c in enumerate(base_calls)}
    step = chains_per_batch(ctx, cfg)
    work = sum(len(wanted[i:i + step]) * (max(max(w) for w in wanted[i:i + step]) + 1)
               for i in range(0, n_chains, step))
    pbar = bar(getattr(ctx, "progress", False), work, "calibration trajectories", "chain-call")
    for start in range(0, n_chains, step):
        chunk = wanted[start:start + step]

        def on_call(k, feeds, raw, x_next, chunk=chunk):
            b = len(chunk)
            pbar.update(b)
            local = [j for j in range(b) if k in chunk[j]]
            if not local:
                return
            rows = np.array(local + ([j + b for j in local] if guided else []), dtype=np.int64)
            parts.setdefault(k, []).append(_select(feeds, rows, constants[k]))
            states[k] = states.get(k, 0) + len(local)

        pipe.calls = base_calls[: max(max(w) for w in chunk) + 1]
        pipe.sample(len(chunk), seed=cfg.seed, batch_size=len(chunk), first=CHAIN_OFFSET + start, on_call=on_call)
    pbar.close()
    batches = {k: _merge(p, constants[k]) for k, p in sorted(parts.items())}
    return CalibrationSet(cfg.calibration, batches, states, graph_of,
                          {k: constants[k] for k in batches}, info)


def noise_set(ctx, cfg, under_schedule: bool = True) -> CalibrationSet:
    """The naive baseline: N(0, 1) samples at uniformly random native timesteps, random classes
    (the null class for the unconditional half when guided). Each row is filed under the call whose
    timestep is nearest, only so that scale groups can pick rows."""
    names = set(ctx.adapter.input_names)
    for name, g in ctx.graphs.items():
        if set(g.input_names) - names:
            raise DmcError(f"calibration='noise' cannot feed graph {name!r} (it takes cached tensors "
                           f"{sorted(set(g.input_names) - names)}); use ndtc or uniform")
    rng = np.random.default_rng([cfg.seed, 0x9015E])
    T = num_train_timesteps(ctx)
    n = cfg.num_samples
    rows = 2 * n if ctx.recipe.guided else n
    x = rng.standard_normal((rows, *ctx.sample_shape), dtype=np.float32)
    t = rng.integers(0, T, size=rows).astype(np.float32)
    feeds = {"sample": x, "timestep": t}
    cond = ctx.adapter.conditioning()
    for spec in cond.inputs:  # random labels and text states; size/guidance conditions at their defaults
        if spec.dtype == "int64":
            labels = rng.integers(0, cond.num_classes, size=rows).astype(np.int64)
            if ctx.recipe.guided:
                labels[:n] = cond.null_class
            feeds[spec.name] = labels
        elif spec.uncond == "same":
            feeds[spec.name] = spec.value(rows)
        else:
            feeds[spec.name] = rng.standard_normal((rows, *spec.shape), dtype=np.float32)
    taus = np.array([c.timestep for c in ctx.calls])
    nearest = np.abs(taus[None, :] - t[:, None]).argmin(axis=1)
    batches, states = {}, {}
    for k in np.unique(nearest):
        sel = np.flatnonzero(nearest == k)
        batches[int(k)] = {name: v[sel] for name, v in feeds.items()}
        states[int(k)] = len(sel) // (2 if ctx.recipe.guided else 1) or 1
    graph_of = {k: (c.graph if under_schedule else "full") for k, c in enumerate(ctx.calls)}
    return CalibrationSet("noise", batches, states, graph_of, {k: set() for k in batches},
                          {"noise": {"train_timesteps": T}})


def build(ctx, cfg, under_schedule: bool = True) -> CalibrationSet:
    if cfg.calibration == "noise":
        return noise_set(ctx, cfg, under_schedule)
    return trajectory_set(ctx, cfg, under_schedule)
