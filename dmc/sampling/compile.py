"""Derive the per-call coefficients of a sampler from diffusers' own schedulers (compile side).

The scheduler named by the solver registry (``dmc.sampling.solvers``) is configured from the
model's training schedule plus the solver's forced settings; it computes its timesteps and
noise levels, and the solver's table builder writes each call as a :class:`SamplerCall`.
Tests check every table against diffusers' ``scheduler.step`` loop.
"""

from __future__ import annotations

import inspect
import warnings

from dmc.errors import DmcError
from dmc.sampling import schedules
from dmc.sampling.calls import SamplerCall
from dmc.sampling.recipe import Recipe
from dmc.sampling.solvers import SOLVERS, names


def flow_mu(schedule: dict, sample_shape: tuple | None) -> float:
    """Dynamic shift (Flux): mu interpolated linearly in the packed image sequence length,
    (H/2)*(W/2) tokens of the latent, between (base_image_seq_len, base_shift) and (max_*, max_*)."""
    if not sample_shape:
        raise DmcError("this schedule shifts with the image size (use_dynamic_shifting); the sample shape is unknown")
    seq = (sample_shape[-2] // 2) * (sample_shape[-1] // 2)
    base_len, max_len = schedule.get("base_image_seq_len", 256), schedule.get("max_image_seq_len", 4096)
    base, top = schedule.get("base_shift", 0.5), schedule.get("max_shift", 1.15)
    return base + (top - base) * (seq - base_len) / (max_len - base_len)


def build_scheduler(recipe: Recipe, training_schedule: dict | None, sample_shape: tuple | None = None,
                    sigmas=None):
    """The diffusers scheduler for ``recipe``, configured from the training schedule, timesteps set.
    ``sigmas``: a pipeline's own spacing (``Adapter.pipeline_sigmas``), where the scheduler takes one."""
    import diffusers

    if training_schedule is None:
        raise DmcError("no training schedule; pass --scheduler-config FILE or --scheduler-preset NAME")
    solver = SOLVERS[recipe.sampler]
    kind = schedules.family(training_schedule)
    if kind != solver.family:
        raise DmcError(f"sampler {recipe.sampler!r} runs {solver.family} models, but this model's training "
                       f"schedule is {kind} (choose from {', '.join(names(kind))})")
    cls = getattr(diffusers, solver.scheduler)
    accepted = set(inspect.signature(cls.__init__).parameters)
    base = {solver.renames.get(k, k): v for k, v in training_schedule.items() if not k.startswith("_")}
    kwargs = {k: v for k, v in base.items() if k in accepted}
    kwargs.update(solver.forced)
    if kwargs.get("thresholding"):
        raise DmcError("dynamic thresholding is not supported by the compiled sampler")
    timestep_kwargs = {}
    if training_schedule.get("use_dynamic_shifting"):
        if "mu" not in inspect.signature(cls.set_timesteps).parameters:
            raise DmcError(f"sampler {recipe.sampler!r} cannot follow a dynamically shifted schedule "
                           f"(choose from {', '.join(n for n in names(kind) if n != recipe.sampler)})")
        timestep_kwargs["mu"] = flow_mu(training_schedule, sample_shape)
    if sigmas is not None and not kwargs.get("use_flow_sigmas"):  # flow-sigma solvers space their own
        if "sigmas" in inspect.signature(cls.set_timesteps).parameters:
            timestep_kwargs["sigmas"] = list(sigmas)
        else:
            warnings.warn(f"{solver.scheduler} takes no custom sigmas: sampler {recipe.sampler!r} uses its own "
                          "spacing, not the model's pipeline's (diffusers' pipeline would refuse it)", stacklevel=2)
    try:
        sched = cls(**kwargs)
        sched.set_timesteps(recipe.steps, **timestep_kwargs)
    except (ValueError, NotImplementedError, TypeError) as e:
        raise DmcError(f"{solver.scheduler} refuses this schedule for {recipe.steps} steps: {e}") from None
    return sched


def compile_calls(recipe: Recipe, training_schedule: dict | None,
                  sample_shape: tuple | None = None, sigmas=None) -> list[SamplerCall]:
    sched = build_scheduler(recipe, training_schedule, sample_shape, sigmas)
    try:
        return SOLVERS[recipe.sampler].build(sched)
    except (ValueError, NotImplementedError) as e:  # e.g. PNDM refusing prediction_type="sample"
        raise DmcError(f"sampler {recipe.sampler!r} cannot run this training schedule: {e}") from None
