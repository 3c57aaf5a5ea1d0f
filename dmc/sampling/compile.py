"""Derive the per-call coefficients of a sampler from diffusers' own schedulers (compile side).

The scheduler computes its timesteps and noise levels; dmc reads them and writes the
closed-form update of each call as a :class:`SamplerCall`. Tests check the result against
diffusers' ``scheduler.step`` loop.
"""

from __future__ import annotations

import inspect
import math

from dmc.errors import DmcError
from dmc.sampling.calls import SamplerCall
from dmc.sampling.recipe import Recipe

DEFAULT_TRAINING_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear",
                             "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"}
SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler"}
FORCED = {"dpm++2m": {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": False}}


def build_scheduler(recipe: Recipe, training_schedule: dict | None):
    """The diffusers scheduler for ``recipe``, keeping only the keys that scheduler accepts."""
    import diffusers

    cls = getattr(diffusers, SCHEDULER_CLASSES[recipe.sampler])
    base = dict(training_schedule or DEFAULT_TRAINING_SCHEDULE)
    accepted = set(inspect.signature(cls.__init__).parameters)
    kwargs = {k: v for k, v in base.items() if k in accepted}
    kwargs.update(FORCED.get(recipe.sampler, {}))
    if kwargs.get("thresholding"):
        raise DmcError("dynamic thresholding is not supported by the compiled sampler")
    sched = cls(**kwargs)
    sched.set_timesteps(recipe.steps)
    return sched


def _prediction_terms(kind: str, alpha: float, sigma: float) -> tuple[float, float, float, float]:
    """(d_x, d_out, e_x, e_out) for x = alpha * x0 + sigma * eps."""
    if kind == "epsilon":
        return 1 / alpha, -sigma / alpha, 0.0, 1.0
    if kind == "v_prediction":
        return alpha, -sigma, sigma, alpha
    if kind == "sample":
        return 0.0, 1.0, 1 / sigma, -alpha / sigma
    raise DmcError(f"unsupported prediction_type {kind!r}")


def ddim_calls(sched) -> list[SamplerCall]:
    """DDIM with eta=0: x' = sqrt(abar') * clip(D) + sqrt(1 - abar') * eps."""
    cfg = sched.config
    step = cfg.num_train_timesteps // sched.num_inference_steps
    clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
    calls = []
    for t in sched.timesteps.tolist():
        abar = float(sched.alphas_cumprod[t])
        prev = t - step
        abar_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else float(sched.final_alpha_cumprod)
        terms = _prediction_terms(cfg.prediction_type, math.sqrt(abar), math.sqrt(1 - abar))
        calls.append(SamplerCall(float(t), *terms, a=0.0, b=math.sqrt(1 - abar_prev),
                                 c=[math.sqrt(abar_prev)], clip=clip))
    return calls


def dpmpp_2m_calls(sched) -> list[SamplerCall]:
    """DPM-Solver++(2M), midpoint form, with diffusers' rules for first and final orders."""
    cfg = sched.config
    n = len(sched.timesteps)
    sigmas = [float(s) for s in sched.sigmas]
    alpha = [1 / math.sqrt(s * s + 1) for s in sigmas]
    sig = [s * a for s, a in zip(sigmas, alpha)]
    lam = [math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alpha, sig)]
    calls = []
    for i, t in enumerate(sched.timesteps.tolist()):
        terms = _prediction_terms(cfg.prediction_type, alpha[i], sig[i])
        final_first_order = i == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
        h = lam[i + 1] - lam[i]
        em1 = -1.0 if math.isinf(h) else math.expm1(-h)  # e^{-h} - 1
        a = sig[i + 1] / sig[i]
        if i == 0 or final_first_order:
            c = [-alpha[i + 1] * em1]
        else:
            r = (lam[i] - lam[i - 1]) / h
            c = [-alpha[i + 1] * em1 * (1 + 0.5 / r), 0.5 * alpha[i + 1] * em1 / r]
        calls.append(SamplerCall(float(t), *terms, a=a, b=0.0, c=c))
    return calls


def compile_calls(recipe: Recipe, training_schedule: dict | None) -> list[SamplerCall]:
    sched = build_scheduler(recipe, training_schedule)
    return {"ddim": ddim_calls, "dpm++2m": dpmpp_2m_calls}[recipe.sampler](sched)
