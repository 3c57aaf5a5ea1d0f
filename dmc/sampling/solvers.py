"""The compiled samplers, one registry entry each: which diffusers scheduler defines it, the
settings dmc forces on it, which kind of training schedule it runs, and its table builder.

``--sampler`` choices, ``Recipe`` validation and the README table all read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dmc.sampling.tables import ddim_calls, ddpm_calls, dpmpp_2m_calls, traced_calls

DIFFUSION, FLOW = "diffusion", "flow"  # VP training schedules (betas) / rectified-flow ones (sigmas)
_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}


@dataclass(frozen=True)
class Solver:
    scheduler: str  # the diffusers class whose step loop the table reproduces
    family: str  # DIFFUSION or FLOW: the training schedules it can run
    summary: str
    forced: dict = field(default_factory=dict)  # kwargs dmc sets on top of the training schedule
    build: Callable = traced_calls  # configured scheduler -> list[SamplerCall]
    renames: dict = field(default_factory=dict)  # training-schedule key -> this scheduler's key
    calls: str = "N"  # model calls for N steps


_NO_THRESHOLD = {"thresholding": False}
SOLVERS: dict[str, Solver] = {
    "ddim": Solver("DDIMScheduler", DIFFUSION, "DDIM (eta 0), clip_sample as configured", build=ddim_calls),
    "ddpm": Solver("DDPMScheduler", DIFFUSION, "DDPM ancestral (stochastic: fresh noise every call), clip_sample "
                   "as configured", build=ddpm_calls),
    "dpm++2m": Solver("DPMSolverMultistepScheduler", DIFFUSION, "DPM-Solver++(2M), midpoint",
                      {"algorithm_type": "dpmsolver++", "solver_order": 2, **_NO_THRESHOLD}, build=dpmpp_2m_calls),
    "dpm++3m": Solver("DPMSolverMultistepScheduler", DIFFUSION, "DPM-Solver++(3M)",
                      {"algorithm_type": "dpmsolver++", "solver_order": 3, **_NO_THRESHOLD}),
    "unipc-bh1": Solver("UniPCMultistepScheduler", DIFFUSION, "UniPC order 2, B(h)=h; corrector folded in",
                        # diffusers' bh1 returns NaN when the last sigma is 0 (B(h) = -inf times 0)
                        {"solver_type": "bh1", "solver_order": 2, "predict_x0": True, "final_sigmas_type": "sigma_min",
                         **_NO_THRESHOLD}),
    "unipc-bh2": Solver("UniPCMultistepScheduler", DIFFUSION, "UniPC order 2, B(h)=e^h-1; corrector folded in",
                        {"solver_type": "bh2", "solver_order": 2, "predict_x0": True, **_NO_THRESHOLD}),
    "deis2": Solver("DEISMultistepScheduler", DIFFUSION, "DEIS (logrho) order 2",
                    {"algorithm_type": "deis", "solver_type": "logrho", "solver_order": 2, **_NO_THRESHOLD}),
    "deis3": Solver("DEISMultistepScheduler", DIFFUSION, "DEIS (logrho) order 3",
                    {"algorithm_type": "deis", "solver_type": "logrho", "solver_order": 3, **_NO_THRESHOLD}),
    "plms": Solver("PNDMScheduler", DIFFUSION, "PLMS (PNDM without Runge-Kutta warm-up)",
                   {"skip_prk_steps": True}, calls="N+1"),
    "pndm": Solver("PNDMScheduler", DIFFUSION, "PNDM: 3 Runge-Kutta steps, then PLMS",
                   {"skip_prk_steps": False}, calls="N+9"),
    "euler": Solver("EulerDiscreteScheduler", DIFFUSION, "Euler (deterministic), the schedule's own sigmas"),
    "euler-karras": Solver("EulerDiscreteScheduler", DIFFUSION, "Euler on Karras sigmas (rho 7)",
                           {"use_karras_sigmas": True}),
    "heun-karras": Solver("HeunDiscreteScheduler", DIFFUSION, "Heun (2nd order) on Karras sigmas",
                          {"use_karras_sigmas": True, "clip_sample": False}, calls="2N-1"),
    "flow-euler": Solver("FlowMatchEulerDiscreteScheduler", FLOW, "flow-matching Euler (SD3, Flux)",
                         {"stochastic_sampling": False}),
    "flow-heun": Solver("FlowMatchHeunDiscreteScheduler", FLOW, "flow-matching Heun", calls="2N-1"),
    "flow-unipc": Solver("UniPCMultistepScheduler", FLOW, "UniPC bh2 order 2 on flow sigmas",
                         {**_FLOW_SIGMAS, "solver_type": "bh2", "solver_order": 2, "predict_x0": True,
                          **_NO_THRESHOLD}, renames={"shift": "flow_shift"}),
    "flow-dpm++2m": Solver("DPMSolverMultistepScheduler", FLOW, "DPM-Solver++(2M) on flow sigmas",
                           {**_FLOW_SIGMAS, "algorithm_type": "dpmsolver++", "solver_order": 2, **_NO_THRESHOLD},
                           build=traced_calls, renames={"shift": "flow_shift"}),
}


DEFAULT_SOLVER = {DIFFUSION: "ddim", FLOW: "flow-euler"}  # what a default --sampler means per schedule family


def solver_for(sampler: str, schedule_family: str) -> str:
    """``sampler`` when it runs this schedule family, else the family's default (the CLI's unset --sampler)."""
    return sampler if SOLVERS[sampler].family == schedule_family else DEFAULT_SOLVER[schedule_family]


def names(family: str | None = None) -> list[str]:
    return [n for n, s in SOLVERS.items() if family is None or s.family == family]


def table_rows(calls) -> list[dict]:
    """The call table as compact rows (for ``dmc inspect``): only the terms a call uses."""
    rows = []
    for k, c in enumerate(calls):
        row = {"call": k, "timestep": round(c.timestep, 3)}
        for key in ("a", "b", "o", "scale_in", "noise"):
            value = getattr(c, key)
            if value != (1.0 if key == "scale_in" else 0.0):
                row[key] = value
        for key in ("c", "x_hist", "out_hist"):
            if any(getattr(c, key)):
                row[key] = list(getattr(c, key))
        for key, value in (c.channel or {}).items():
            if value:
                row[f"ch.{key}"] = _channel_summary(value)
        rows.append(row)
    return rows


def _channel_summary(value) -> str:
    """A per-channel term (DPM-Solver-v3) in a few characters: its channel count, the terms it
    weights (one per history entry for c/x_hist), and the range of its values."""
    nested = bool(value) and isinstance(value[0], list)
    flat = [v for term in value for v in term] if nested else list(value)
    if not flat:
        return "[]"
    shape = f"{len(value)}x{len(value[0])}ch" if nested else f"{len(value)}ch"
    lo, hi = min(flat), max(flat)
    return f"{shape}[{lo:.4g}]" if lo == hi else f"{shape}[{lo:.4g}..{hi:.4g}]"


def table_lines(rows: list[dict]) -> list[str]:
    """x' = a x + b eps + o out + c.D + x_hist.x_{k-1..} + out_hist.out_{k-1..}, one line per call."""
    lines = ["sampler    call  timestep  coefficients (x' = a x + b eps + o out + c.D_k.. + xh.x_k-1.. + oh.out_k-1.."
             " + noise z;" " ch.*: per-channel terms added, terms x channels [range])"]
    names = {"x_hist": "xh", "out_hist": "oh"}
    for r in rows:
        terms = []
        for key, value in r.items():
            if key in ("call", "timestep"):
                continue
            if isinstance(value, str):
                shown = value
            elif isinstance(value, list):
                shown = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
            else:
                shown = f"{value:.6g}"
            terms.append(f"{names.get(key, key)}={shown}")
        lines.append(f"  {r['call']:>12}  {r['timestep']:8.2f}  {' '.join(terms)}")
    return lines
