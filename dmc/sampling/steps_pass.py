"""The "steps" pass handler (compile side): see ``dmc.sampling.step_plan``."""

from __future__ import annotations

import math

import numpy as np

from dmc.compress.passes import register_pass
from dmc.errors import DmcError
from dmc.progress import bar
from dmc.sampling.calls import SamplerCall
from dmc.sampling.step_plan import BASE_SAMPLER, StepsConfig

class _ModelProbe:
    """``model(x, t)`` (the guided network output, numpy float64) and the VP schedule of ``ctx``."""

    def __init__(self, ctx):
        from dmc.sampling.compile import build_scheduler
        from dmc.sampling.recipe import Recipe
        from dmc.sampling.schedules import family

        schedule = ctx.loaded.scheduler_config
        if schedule is None or family(schedule) != "diffusion":
            raise DmcError("step plans (--sampler dpm-v3, --steps auto) need a diffusion (VP) training schedule; "
                           "this model's is a flow schedule")
        self.kind = schedule.get("prediction_type", "epsilon")
        if self.kind not in ("epsilon", "v_prediction", "sample"):
            raise DmcError(f"step plans do not support prediction_type {self.kind!r}")
        sched = build_scheduler(Recipe(sampler=BASE_SAMPLER, steps=2), schedule, ctx.sample_shape)
        self.abar = sched.alphas_cumprod.double().numpy()
        self.lams = np.log(np.sqrt(self.abar) / np.sqrt(1 - self.abar))  # decreasing in t
        self.pipe = ctx.torch_pipeline()
        self.evaluations = 0

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        import torch

        probe = SamplerCall(float(t), 0.0, 0.0, 0.0, 0.0, a=0.0, b=0.0, c=[], o=1.0)  # x' = out
        saved, self.pipe.calls = self.pipe.calls, [probe]
        try:
            with torch.no_grad():
                out = self.pipe.sample(len(x), noise=np.asarray(x, dtype=np.float32), batch_size=len(x))
        finally:
            self.pipe.calls = saved
        self.evaluations += len(x)
        return out.astype(np.float64)

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        a = float(np.interp(t, np.arange(len(self.abar)), self.abar))
        return math.sqrt(a), math.sqrt(1 - a)

    def lam(self, t: float) -> float:
        alpha, sigma = self.alpha_sigma(t)
        return math.log(alpha / sigma)

    def denoise(self, x: np.ndarray, t: float) -> np.ndarray:
        """The data prediction D(x, t) from the network output."""
        from dmc.sampling.tables import prediction_terms

        alpha, sigma = self.alpha_sigma(t)
        d_x, d_out, _, _ = prediction_terms(self.kind, alpha, sigma)
        return d_x * x + d_out * self(x, t)

    def timestep_of(self, lam: float) -> float:
        return float(np.interp(lam, self.lams[::-1], np.arange(len(self.abar))[::-1]))


def _ems(ctx, probe: _ModelProbe, cfg: StepsConfig, start: float, progress):
    from dmc.sampling.v3 import compute_stats

    grid = np.linspace(probe.lam(start), probe.lam(0), cfg.ems_grid)
    return compute_stats(probe.denoise, ctx.sample_shape, grid, probe.timestep_of, n_samples=cfg.ems_samples,
                         seed=cfg.seed, batch=max(1, cfg.ems_samples), progress=progress)


def _advance(progress_bar):
    """A ``(done, total)`` callback (what the v3 statistics and the search report) for a ``dmc.progress`` bar."""
    seen = [0]

    def update(done, _total):
        progress_bar.update(done - seen[0])
        seen[0] = done
    return update


def _finish(ctx, calls: list[SamplerCall], record: dict) -> None:
    for c in calls:
        c.graph = "full"
    ctx.calls = calls
    record["base_calls"] = [c.to_json() for c in calls]
    ctx.passes.append(record)


def _plan_v3(ctx, cfg: StepsConfig) -> None:
    from dmc.sampling.v3 import v3_calls

    probe = _ModelProbe(ctx)
    timesteps = [c.timestep for c in ctx.calls]
    with bar(ctx.progress, cfg.ems_grid, "DPM-Solver-v3 statistics") as b:
        stats = _ems(ctx, probe, cfg, timesteps[0], _advance(b))
    calls = v3_calls(timesteps, [probe.lam(t) for t in timesteps] + [math.inf], probe.kind, stats,
                     order=2, corrector=True)
    _finish(ctx, calls, {"name": "steps", "method": "dpm-v3", "config": cfg.to_json(), "calls": len(calls),
                         "timesteps": timesteps, "ems": stats.info, "stats": stats.to_json(),
                         "model_evaluations": probe.evaluations})


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean((got - want) ** 2) / np.mean(want ** 2))


def _plan_search(ctx, cfg: StepsConfig) -> None:
    from dmc.sampling.calls import initial_noise
    from dmc.sampling.search import Plan, ScheduleSearch
    from dmc.sampling.v3 import Stats

    calls = cfg.calls or len(ctx.calls)
    probe = _ModelProbe(ctx)
    start = int(round(ctx.calls[0].timestep))  # the recipe's first call: every candidate starts there
    if start < calls:
        raise DmcError(f"cannot place {calls} calls below timestep {start}")
    stats = Stats.trivial(ctx.sample_shape[0])
    ems_info = None
    if cfg.ems_in_search:
        stats = _ems(ctx, probe, cfg, start, None)
        ems_info = stats.info
    shape = tuple(ctx.sample_shape)
    search_noise = initial_noise(cfg.seed + 1000, cfg.search_samples, shape).astype(np.float64)
    held_noise = initial_noise(cfg.seed + 2000, cfg.held_out, shape).astype(np.float64)
    ref_calls = min(cfg.reference_calls, start)
    recipe_plan = Plan(tuple(int(round(c.timestep)) for c in ctx.calls), (2,) * len(ctx.calls),
                       (False,) * len(ctx.calls))
    searcher = ScheduleSearch(probe, probe.abar, probe.kind, search_noise, search_noise, stats=stats, start=start,
                              extra_candidates={"recipe dpm++2m": recipe_plan})
    reference_plan = searcher.fixed_candidates(ref_calls)["dpm++2m uniform-t"]
    search_ref, held_ref = searcher.sample(reference_plan, search_noise), searcher.sample(reference_plan, held_noise)
    searcher.reference = search_ref
    with bar(ctx.progress, cfg.candidates, f"searching a {calls}-call schedule", unit="table") as b:
        result = searcher.run(calls, max_candidates=cfg.candidates, progress=_advance(b))
    fixed = searcher.fixed_candidates(calls)[result.best_fixed]
    held = {"searched": _relative_error(searcher.sample(result.plan, held_noise), held_ref),
            "best_fixed": _relative_error(searcher.sample(fixed, held_noise), held_ref)}
    plan, kept = result.plan, "searched" if result.improved else "best fixed (the search did not beat it)"
    if result.improved and held["searched"] > held["best_fixed"]:
        plan, kept = fixed, "best fixed (the searched schedule was worse on held-out seeds)"
    if kept != "searched":
        ctx.warnings.append(f"--steps auto: kept the {kept.replace(' (', ' table (', 1)}: {result.best_fixed}")
    table = searcher.table(plan)
    _finish(ctx, table, {"name": "steps", "method": "search", "config": cfg.to_json(), "calls": len(table),
                         "start": start, "kept": kept, "plan": plan.to_json(), "search": result.to_json(),
                         "held_out_relative_error": held, "reference": f"dpm++2m, {ref_calls} calls from t={start}",
                         "ems": ems_info, "stats": stats.to_json() if cfg.ems_in_search else None,
                         "model_evaluations": probe.evaluations})


_METHODS = {"dpm-v3": _plan_v3, "search": _plan_search}


@register_pass("steps", StepsConfig)
def run_steps(ctx, cfg: StepsConfig) -> None:
    if ctx.recipe.sampler != BASE_SAMPLER:
        raise DmcError(f"a step plan starts from the {BASE_SAMPLER} table; the recipe's sampler is "
                       f"{ctx.recipe.sampler!r}")
    _METHODS[cfg.method](ctx, cfg)


