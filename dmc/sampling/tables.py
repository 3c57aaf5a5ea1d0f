"""Table builders: a configured diffusers scheduler in, one :class:`SamplerCall` per model call out.

DDIM and DPM-Solver++(2M) are written in closed form (DDIM keeps ``clip_sample`` as a clip of
D at run time). Every other solver is *traced*: diffusers' own ``scale_model_input`` and
``step`` run once on symbolic samples (coefficient vectors over the initial noise and each
call's model output), and each call's row is the short linear recurrence that reproduces the
next sample from the last few inputs and outputs. That is exact for any deterministic
scheduler whose step is linear in (sample, model output), which covers multistep, restarting
(Heun, PRK) and corrector (UniPC) updates without a second model call.
"""

from __future__ import annotations

import math

import numpy as np

from dmc.errors import DmcError
from dmc.sampling.calls import SamplerCall

MAX_DEPTH = 13  # calls a traced row may reach back (PNDM's first PLMS steps use outputs of its RK stages)
TRACE_TOLERANCE = 1e-10  # relative residual of a row: the traced forms are float64, and their entries can cancel (~2e4)


def prediction_terms(kind: str, alpha: float, sigma: float) -> tuple[float, float, float, float]:
    """(d_x, d_out, e_x, e_out) for x = alpha * x0 + sigma * eps."""
    if kind == "epsilon":
        return 1 / alpha, -sigma / alpha, 0.0, 1.0
    if kind == "v_prediction":
        return alpha, -sigma, sigma, alpha
    if kind == "sample":
        return 0.0, 1.0, 1 / sigma, -alpha / sigma
    if kind == "flow_prediction":  # x = (1 - s) x0 + s eps, out = eps - x0
        return 1.0, -sigma, 1.0, 1.0 - sigma
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
        terms = prediction_terms(cfg.prediction_type, math.sqrt(abar), math.sqrt(1 - abar))
        calls.append(SamplerCall(float(t), *terms, a=0.0, b=math.sqrt(1 - abar_prev),
                                 c=[math.sqrt(abar_prev)], clip=clip))
    return calls


def ddpm_calls(sched) -> list[SamplerCall]:
    """DDPM's ancestral step (variance ``fixed_small``), on any subset of the training timesteps:
    x' = c0 * clip(D) + c1 * x + sigma * z, abar_prev at the next timestep of the schedule (one after
    the last), as diffusers' ``previous_timestep``."""
    cfg = sched.config
    if cfg.variance_type not in ("fixed_small", "fixed_small_log"):
        raise DmcError(f"DDPM variance_type {cfg.variance_type!r} is not supported (fixed_small only)")
    clip = float(cfg.clip_sample_range) if cfg.clip_sample else None
    calls = []
    timesteps = sched.timesteps.tolist()
    for i, t in enumerate(timesteps):
        abar = float(sched.alphas_cumprod[t])
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        abar_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else float(sched.one)
        beta = 1 - abar / abar_prev  # the step's own beta (several training steps at once)
        terms = prediction_terms(cfg.prediction_type, math.sqrt(abar), math.sqrt(1 - abar))
        c0 = math.sqrt(abar_prev) * beta / (1 - abar)
        c1 = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        sigma = math.sqrt(max((1 - abar_prev) / (1 - abar) * beta, 1e-20)) if t > 0 else 0.0
        calls.append(SamplerCall(float(t), *terms, a=c1, b=0.0, c=[c0], clip=clip, noise=sigma))
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
        terms = prediction_terms(cfg.prediction_type, alpha[i], sig[i])
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


def _symbolic_class():
    import torch

    class Symbolic(torch.Tensor):
        """A float64 tensor that ignores downcasts. Several schedulers cast the sample to float32
        "to avoid precision issues"; on a coefficient vector whose entries cancel (an epsilon model
        at t=999 of a cosine schedule puts ~2e4 on the noise and on out_0) that cast would cost the
        table its accuracy, while on real samples it costs nothing."""

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to and args[0].dtype == torch.float64:
                dtype = kwargs.get("dtype") or next((a for a in args[1:] if isinstance(a, torch.dtype)), None)
                if dtype is not None and dtype != torch.float64:
                    return args[0]
            return super().__torch_function__(func, types, args, kwargs)

    return Symbolic


def trace_forms(sched, step_kwargs: dict | None = None) -> tuple[list[float], list[np.ndarray], np.ndarray]:
    """Run diffusers' sampling loop on symbolic samples.

    Returns the timesteps, the network input of every call and the final sample, each as a
    coefficient vector over the basis (initial noise z, out_0, ..., out_{K-1}), where the
    loop starts, as diffusers' pipelines do, from ``z * init_noise_sigma``.
    """
    import torch

    _Symbolic = _symbolic_class()
    timesteps = list(sched.timesteps)
    n = len(timesteps) + 1

    def unit(i: int):
        v = torch.zeros(1, n, dtype=torch.float64)
        v[0, i] = 1.0
        return v.as_subclass(_Symbolic)

    sample = unit(0) * float(getattr(sched, "init_noise_sigma", 1.0))  # flow schedulers start at unit noise
    scale = getattr(sched, "scale_model_input", lambda s, t: s)
    inputs = []
    for k, t in enumerate(timesteps):
        inputs.append(scale(sample, t).as_subclass(torch.Tensor).double()[0].numpy().copy())
        sample = sched.step(unit(k + 1), t, sample, return_dict=False, **(step_kwargs or {}))[0]
    forms = inputs + [sample.as_subclass(torch.Tensor).double()[0].numpy()]
    if not all(np.isfinite(f).all() for f in forms):
        raise DmcError(f"{type(sched).__name__} produced non-finite coefficients for this schedule")
    return [float(t) for t in timesteps], inputs, forms[-1]


def traced_calls(sched, step_kwargs: dict | None = None) -> list[SamplerCall]:
    """One row per call, fitted to the traced loop (see the module docstring)."""
    timesteps, inputs, final = trace_forms(sched, step_kwargs)
    k_calls = len(timesteps)
    size = k_calls + 1
    # the runtime's state: z at call 0 (the network sees scale_in * z), the network input at later
    # calls, and diffusers' final sample after the last one
    states = [np.eye(size)[0]] + inputs[1:] + [final]
    scale_in0 = float(inputs[0][0])
    if np.abs(inputs[0][1:]).max() > 0:
        raise DmcError(f"{type(sched).__name__}: the first network input is not a multiple of the noise")
    calls = []
    for k, t in enumerate(timesteps):
        target = states[k + 1]
        fits = []
        for depth in range(1, min(MAX_DEPTH, k + 1) + 1):
            cols = [states[k - j] for j in range(depth)] + [np.eye(size)[k - j + 1] for j in range(depth)]
            m = np.stack(cols, axis=1)
            coef, *_ = np.linalg.lstsq(m, target, rcond=None)
            fits.append((np.linalg.norm(m @ coef - target), coef[:depth], coef[depth:]))
        # the shallowest row as exact as the deepest one (whose residual is the traced forms' own rounding)
        floor = max(TRACE_TOLERANCE * max(1.0, np.linalg.norm(target)), 2 * fits[-1][0])
        row = next(((xs, outs) for res, xs, outs in fits if res <= floor), None)
        if fits[-1][0] > 1e4 * TRACE_TOLERANCE * max(1.0, np.linalg.norm(target)):
            raise DmcError(f"{type(sched).__name__}: call {k} is not a linear update of the last "
                           f"{MAX_DEPTH} calls; this sampler cannot be compiled into a call table")
        xs, outs = (np.where(np.abs(v) < 1e-12, 0.0, v).tolist() for v in row)
        calls.append(SamplerCall(t, 0.0, 0.0, 0.0, 0.0, a=xs[0], b=0.0, c=[], o=outs[0], x_hist=xs[1:],
                                 out_hist=outs[1:], scale_in=scale_in0 if k == 0 else 1.0))
    # the runtime keeps only the history the current row names: pad earlier rows with zero weights
    # so that a row reaching j calls back finds them kept
    for k in range(len(calls) - 2, -1, -1):
        need = max(len(calls[k + 1].out_hist), len(calls[k + 1].x_hist)) - 1
        calls[k].out_hist += [0.0] * max(0, need - len(calls[k].out_hist))
    return calls
