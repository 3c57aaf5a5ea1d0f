"""HarmoniCa's learned cache router: ``--cache-schedule router`` (``algorithms.md`` §8).

A logit β[k, p] per model call k and cache point p (DeepCache's deep feature, or a DiT block's
attention / MLP branch); the score r = sigmoid(β). In training a point's output is mixed,
``r·fresh + (1 − r)·cached``, by forward hooks on the very modules whose outputs the artifact
caches, so the torch model needs no cached re-implementation. Training follows HarmoniCa's code:

- SDT, step-wise denoising training: every iteration runs a student trajectory from fresh noise
  with the routers in the loop. The cache holds what inference would hold: a point's fresh
  output is stored at the calls the current scores' schedule refreshes (re-derived every
  iteration; HarmoniCa stores where r > θ, which with a budget would refresh nearly always). At every call the student's prediction is compared with the
  teacher's: the same network, uncached, at the student's own state. One Adam step per call,
  on that call's logits only. The state advances with the student's (detached) prediction.
- IEPO, the image-error proxy: λ_k is the final-image error that switching on call k's router
  adds to the routers of the calls before it. It is re-estimated every ``lambda_every``
  iterations on a fixed batch, and it weights call k's loss.
- Loss_k = λ_k · ‖ε_student − ε_teacher‖² / ‖ε_teacher‖² + α · mean(r_k). The error is
  relative and λ is normalised to mean 1 (dmc's choice: α then means the same on any model).
  The first ``full_first`` calls stay full (logit 5); logits are clamped to [−5, 5].

The learned scores become a static schedule, which the cache graphs and the runtime follow.
With ``router_threshold`` set, HarmoniCa's rule applies (a point computes where r > θ).
Otherwise each point keeps its ``budget`` highest-scoring calls (equal compute to a uniform
schedule at the same interval). Either way there are at most ``max_variants`` distinct per-call
patterns (graphs), as for BAC.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dmc.cache.choose import Schedule, budget_of, register_schedule
from dmc.learn.unrolled import UnrolledSampler, conditions
from dmc.sampling.calls import initial_noise

LOGIT_LIMIT = 5.0


class SoftCache:
    """Forward hooks that put a cache in the loop of a torch model.

    ``scores`` (one per point, for the call in progress) mix each point's fresh output with its
    stored one; ``scores = None`` runs the model uncached and stores nothing (the teacher).
    ``commit(write)`` after a call stores the fresh outputs of the points ``write`` marks.
    """

    def __init__(self, modules: list):
        self.modules = modules
        self.scores: torch.Tensor | None = None
        self.store: list[torch.Tensor | None] = [None] * len(modules)
        self._fresh: list[torch.Tensor | None] = [None] * len(modules)
        self._handles: list = []

    def __enter__(self) -> SoftCache:
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def reset(self) -> None:
        self.store = [None] * len(self.modules)
        self._fresh = [None] * len(self.modules)

    def _hook(self, i: int):
        def hook(_module, _inputs, output):
            if self.scores is None:
                return None
            self._fresh[i] = output
            if self.store[i] is None:  # nothing cached yet: the point is computed
                return None
            r = self.scores[i]
            return r * output + (1 - r) * self.store[i]
        return hook

    def commit(self, write) -> None:
        for i, fresh in enumerate(self._fresh):
            if fresh is not None and (self.store[i] is None or bool(write[i])):
                self.store[i] = fresh.detach()
        self._fresh = [None] * len(self.modules)


class _Trajectory:
    """The recipe's sampler driven call by call with a ``SoftCache``."""

    def __init__(self, sampler: UnrolledSampler, cache: SoftCache, cond: dict, uncond: dict):
        self.sampler, self.cache, self.cond, self.uncond = sampler, cache, cond, uncond

    def predict(self, k: int, x: torch.Tensor, scores: torch.Tensor | None) -> torch.Tensor:
        self.cache.scores = scores
        return self.sampler.predict(k, x, self.cond, self.uncond)

    def generate(self, x: torch.Tensor, scores_of, writes_of) -> torch.Tensor:
        """Final sample with ``scores_of(k)`` mixing and ``writes_of(k)`` stored at call k (no gradients)."""
        self.cache.reset()
        state = self.sampler.initial_state(x)
        with torch.no_grad():
            for k in range(len(self.sampler.calls)):
                out = self.predict(k, state[0], scores_of(k))
                self.cache.commit(writes_of(k))
                state = self.sampler.advance(k, state, out)
        return state[0]


def image_error_proxy(traj: _Trajectory, rows: list, writes: np.ndarray, full_first: int,
                      x: torch.Tensor) -> torch.Tensor:
    """IEPO's λ: ``λ_k = MSE(x0 with routers on at calls ≤ k, x0 with them on at calls < k)``,
    normalised to mean 1 over the routed calls (all ones when caching changes nothing)."""
    num_calls, num_points = writes.shape
    ones, every = torch.ones(num_points), np.ones(num_points, dtype=bool)

    def routed(last):
        on = range(full_first, last + 1)
        return (lambda k: torch.sigmoid(rows[k].detach()) if k in on else ones,
                lambda k: writes[k] if k in on else every)

    lam = torch.ones(num_calls)
    prev = traj.generate(x, *routed(-1))
    for k in range(full_first, num_calls):
        cur = traj.generate(x, *routed(k))
        lam[k] = (cur - prev).square().mean()
        prev = cur
    part = lam[full_first:]
    if len(part) and float(part.mean()) > 0:
        lam[full_first:] = part / part.mean()
    else:
        lam[:] = 1.0
    return lam


def _scores(rows: list) -> np.ndarray:
    return torch.sigmoid(torch.stack([r.detach() for r in rows])).numpy()


def train_router(adapter, calls, guidance, sample_shape, modules: list, full_first: int, cfg, seed: int,
                 budget: int) -> dict:
    """SDT + IEPO; returns the learned scores ``[K, P]`` and a training log.

    The training cache stores what the schedule of the current scores would refresh (each
    iteration re-derives it), so the reuse distances the routers see are the ones inference has.
    """
    started = time.time()
    num_calls, num_points = len(calls), len(modules)
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.nn.Parameter(cfg.router_init_std * torch.randn(num_points, generator=gen)) for _ in range(num_calls)]
    with torch.no_grad():
        for k in range(min(full_first, num_calls)):
            rows[k].fill_(LOGIT_LIMIT)
    optim = torch.optim.Adam(rows[full_first:] or [torch.nn.Parameter(torch.zeros(1))], lr=cfg.router_lr)
    sampler = UnrolledSampler(lambda x, t, **c: adapter(x, t, **c), calls, guidance)
    batch = cfg.router_batch
    fixed_x = torch.from_numpy(initial_noise(seed, batch, tuple(sample_shape), 1 << 20))

    def schedule():
        return scores_to_refresh(_scores(rows), full_first, cfg.router_threshold, budget, None)

    frozen = [p for p in adapter.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    log = {"loss": [], "lambda": []}
    try:
        with SoftCache(modules) as cache:
            fixed = _Trajectory(sampler, cache, *conditions(adapter, batch))
            for it in range(cfg.router_iterations):
                writes = schedule()
                if it % cfg.router_lambda_every == 0:
                    lam = image_error_proxy(fixed, rows, writes, full_first, fixed_x)
                    log["lambda"].append([round(float(v), 4) for v in lam])
                x = torch.from_numpy(initial_noise(seed, batch, tuple(sample_shape), it * batch))
                traj = _Trajectory(sampler, cache, *conditions(adapter, batch, it * batch))
                log["loss"].append(_sdt_iteration(traj, rows, optim, lam, writes, full_first, cfg.router_alpha, x))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    losses = [v for v in log["loss"] if v is not None]
    return {"scores": _scores(rows), "iterations": cfg.router_iterations, "batch": batch, "lr": cfg.router_lr,
            "alpha": cfg.router_alpha, "lambda_every": cfg.router_lambda_every,
            "seconds": round(time.time() - started, 1),
            "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-3:])) if losses else None,
            "lambda": log["lambda"][-1] if log["lambda"] else None}


def _sdt_iteration(traj: _Trajectory, rows: list, optim, lam, writes: np.ndarray, full_first: int,
                   alpha: float, x: torch.Tensor) -> float | None:
    """One student trajectory with a teacher comparison and an optimiser step at every routed call;
    returns the mean relative error of the student."""
    sampler, cache = traj.sampler, traj.cache
    cache.reset()
    state = sampler.initial_state(x)
    ones = torch.ones(writes.shape[1])
    total, routed = 0.0, 0
    for k in range(len(sampler.calls)):
        if k < full_first:
            with torch.no_grad():
                out = traj.predict(k, state[0], ones)
        else:
            with torch.no_grad():
                teacher = traj.predict(k, state[0], None)
            r = torch.sigmoid(rows[k])
            with torch.enable_grad():
                student = traj.predict(k, state[0], r)
                err = (student - teacher).square().mean() / teacher.square().mean().clamp_min(1e-12)
                loss = lam[k] * err + alpha * r.mean()
                optim.zero_grad(set_to_none=True)
                loss.backward()
            optim.step()
            with torch.no_grad():
                rows[k].clamp_(-LOGIT_LIMIT, LOGIT_LIMIT)
            out = student.detach()
            total, routed = total + err.item(), routed + 1
        cache.commit(writes[k])
        with torch.no_grad():
            state = sampler.advance(k, state, out)
    return round(total / routed, 6) if routed else None


def scores_to_refresh(scores: np.ndarray, full_first: int, threshold: float | None, budget: int,
                      max_variants: int | None) -> np.ndarray:
    """Static ``[K, P]`` schedule from router scores: r > θ, or each point's ``budget`` best calls."""
    from dmc.cache.schedules import cap_variants

    scores = np.asarray(scores, dtype=np.float64)
    num_calls = len(scores)
    full_first = min(full_first, num_calls)
    if threshold is not None:
        refresh = scores > threshold
    else:
        refresh = np.zeros(scores.shape, dtype=bool)
        refresh[:full_first] = True
        extra = max(0, min(budget, num_calls) - full_first)
        for p in range(scores.shape[1]):
            rest = np.argsort(-scores[full_first:, p], kind="stable")[:extra] + full_first
            refresh[rest, p] = True
    refresh[:full_first] = True
    if max_variants is not None and scores.shape[1] > 1:
        refresh = cap_variants(refresh, max_variants)
    return refresh


@register_schedule("router")
def _router(ctx, cfg, points, num_calls, full_first, seed) -> Schedule:
    trained = train_router(ctx.adapter, ctx.calls, ctx.recipe.guidance, ctx.sample_shape, points.modules(),
                           full_first, cfg, seed, budget_of(cfg, num_calls))
    scores = trained.pop("scores")
    refresh = scores_to_refresh(scores, full_first, cfg.router_threshold, budget_of(cfg, num_calls),
                                cfg.max_variants)
    rule = (f"r > {cfg.router_threshold}" if cfg.router_threshold is not None
            else f"the {budget_of(cfg, num_calls)} best-scored calls per point")
    return Schedule(refresh, {"router": {"kind": "HarmoniCa (SDT + IEPO)", "rule": rule, **trained,
                                         "scores": np.round(scores, 4).tolist()}})
