"""``--steps auto --calls N``: search a call table for a budget of N model calls (USF-style space).

The space, per call: the timestep (integer, strictly decreasing, the first one fixed to the common
start so every candidate starts from the same noise level), the Taylor order (1..3) and whether the
corrector (which reuses the next call's output, no extra call) runs. Every candidate is a DPM-Solver-v3
table (``dmc.sampling.v3``; with trivial statistics the DPM-Solver++ family), so the result is an
ordinary call table. The objective is the final sample's relative squared error against a many-step
reference trajectory of the model from the same noises and conditions (the search set).

Deterministic: a fixed start (the best of the fixed candidates), coordinate descent over timesteps with
shrinking moves, then greedy flips of the per-call choices, ties broken by order of visit. The cost is
bounded by ``max_candidates`` tables, each N model calls per search sample.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from dmc.sampling.calls import sampler_update
from dmc.sampling.v3 import Stats, v3_calls

MOVES = (64, 32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class Plan:
    timesteps: tuple[int, ...]
    orders: tuple[int, ...]
    correctors: tuple[bool, ...]

    def to_json(self) -> dict:
        return {"timesteps": list(self.timesteps), "orders": list(self.orders), "correctors": list(self.correctors)}


@dataclass
class SearchResult:
    plan: Plan
    objective: float
    baselines: dict  # name -> objective of the fixed candidates
    best_fixed: str
    improved: bool  # False: the search did not beat the best fixed candidate, which is kept
    candidates: int
    model_calls: int
    seconds: float
    history: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"plan": self.plan.to_json(), "objective": self.objective, "baselines": self.baselines,
                "best_fixed": self.best_fixed, "improved": self.improved, "candidates": self.candidates,
                "model_calls": self.model_calls, "seconds": self.seconds}


class ScheduleSearch:
    """``model(x, t) -> out`` (numpy, the schedule's prediction type); ``abar`` the training alphas_cumprod."""

    def __init__(self, model, abar: np.ndarray, prediction_type: str, noises: np.ndarray, reference: np.ndarray,
                 stats: Stats | None = None, start: int | None = None, end: int = 0, to_zero: bool = True,
                 extra_candidates: dict[str, Plan] | None = None):
        self.model, self.abar, self.kind = model, np.asarray(abar, dtype=np.float64), prediction_type
        self.noises, self.reference = noises, reference
        self.stats = stats or Stats.trivial(noises.shape[1])
        self.start = len(abar) - 1 if start is None else start
        self.end = end
        self.to_zero = to_zero  # end at sigma = 0 (a first-order last step) rather than at t = end
        self.calls_made = 0
        self.evaluated: dict[Plan, float] = {}
        self.extra_candidates = dict(extra_candidates or {})  # more fixed baselines (e.g. the recipe's own table)

    def lam(self, t: int) -> float:
        a = self.abar[t]
        return 0.5 * math.log(a / (1 - a))

    def table(self, plan: Plan):
        lambdas = [self.lam(t) for t in plan.timesteps] + [math.inf if self.to_zero else self.lam(self.end)]
        return v3_calls([float(t) for t in plan.timesteps], lambdas, self.kind, self.stats,
                        orders=list(plan.orders), correctors=list(plan.correctors))

    def sample(self, plan: Plan, noises: np.ndarray) -> np.ndarray:
        x, history = noises.astype(np.float64), []
        for call in self.table(plan):
            x = sampler_update(call, x, self.model(x, call.timestep), history)
            self.calls_made += len(noises)
        return x

    def objective(self, plan: Plan) -> float:
        if plan not in self.evaluated:
            got = self.sample(plan, self.noises)
            self.evaluated[plan] = float(np.mean((got - self.reference) ** 2) / np.mean(self.reference ** 2))
        return self.evaluated[plan]

    def fixed_candidates(self, calls: int) -> dict[str, Plan]:
        """Uniform in t (trailing spacing from the common start) and uniform in log-SNR, order 2 with
        and without the corrector: the fixed solvers the search must beat."""
        uniform_t = tuple(int(round(v)) for v in np.linspace(self.start, self.end, calls + 1)[:-1])
        lams = np.linspace(self.lam(self.start), self.lam(self.end), calls + 1)[:-1]
        table_lams = np.array([self.lam(t) for t in range(len(self.abar))])
        uniform_l = tuple(int(np.argmin(np.abs(table_lams - v))) for v in lams)
        out = {}
        for name, ts in (("uniform-t", uniform_t), ("uniform-logsnr", uniform_l)):
            if len(set(ts)) != calls or list(ts) != sorted(ts, reverse=True) or ts[-1] <= self.end:
                continue
            out[f"dpm++2m {name}"] = Plan(ts, (2,) * calls, (False,) * calls)
            out[f"dpm-v3 pc {name}"] = Plan(ts, (2,) * calls, (True,) * calls)
        out.update({name: p for name, p in self.extra_candidates.items() if len(p.timesteps) == calls})
        return out

    def run(self, calls: int, max_candidates: int = 300, progress=None) -> SearchResult:
        started = time.time()
        baselines = {name: self.objective(p) for name, p in self.fixed_candidates(calls).items()}
        best_fixed = min(baselines, key=lambda n: (baselines[n], n))
        plan, best = self.fixed_candidates(calls)[best_fixed], baselines[best_fixed]
        history = [best]

        def consider(candidate: Plan):
            nonlocal plan, best
            if len(self.evaluated) >= max_candidates:
                return False
            value = self.objective(candidate)
            if progress is not None:
                progress(len(self.evaluated), max_candidates)
            if value < best:
                plan, best = candidate, value
                history.append(value)
                return True
            return False

        for move in MOVES:
            changed = True
            while changed and len(self.evaluated) < max_candidates:
                changed = False
                for i in range(1, calls):  # the first timestep is the common start
                    for sign in (-1, 1):
                        ts = list(plan.timesteps)
                        ts[i] += sign * move
                        if all(a > b for a, b in zip(ts, ts[1:])) and ts[-1] > self.end:
                            changed |= consider(Plan(tuple(ts), plan.orders, plan.correctors))
            for i in range(calls):  # per-call solver choice
                for order in (1, 2, 3):
                    if order != plan.orders[i] and order <= i + 1:
                        orders = list(plan.orders)
                        orders[i] = order
                        consider(Plan(plan.timesteps, tuple(orders), plan.correctors))
                if i > 0:
                    flips = list(plan.correctors)
                    flips[i] = not flips[i]
                    consider(Plan(plan.timesteps, plan.orders, tuple(flips)))
        improved = best < baselines[best_fixed]
        if not improved:
            plan = self.fixed_candidates(calls)[best_fixed]
        return SearchResult(plan, best, baselines, best_fixed, improved, len(self.evaluated), self.calls_made,
                            round(time.time() - started, 2), history)
