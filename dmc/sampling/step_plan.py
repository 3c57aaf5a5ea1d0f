"""The step plan: ``--sampler dpm-v3`` and ``--steps auto --calls N`` (issue #15).

It runs first (``passes.ORDER``): it replaces the recipe's call table by one built from the model
itself, and every later pass (pruning, cache schedule, INT8 calibration, the correction) works on
the table that results. Both methods produce ordinary ``SamplerCall`` rows, so the runtime needs
nothing new.

- ``dpm-v3``: DPM-Solver-v3 at the recipe's DPM-Solver++ timesteps, its empirical model statistics
  computed from the model's own predictions (``v3.compute_stats``; cost bounded by
  ``ems_samples x ems_grid`` and recorded).
- ``search``: ``search.ScheduleSearch`` over timesteps and per-call order/corrector for a budget of
  ``calls`` model calls, against a many-step reference of the model from the same noise and
  labels; the recipe's own fixed table is one of the baselines it must beat. The result is checked
  on held-out seeds (relative error against the reference), and kept only if it is no worse there.

Only variance-preserving diffusion schedules (epsilon, v or sample prediction) are planned; flow
models are refused with a one-line error. The FP32 table is recorded (``base_calls``) so that
``dmc eval`` compares the artifact with the uncompressed model under the same sampler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dmc.errors import DmcError
from dmc.sampling.calls import SamplerCall

METHODS = ("dpm-v3", "search")
BASE_SAMPLER = "dpm++2m"  # the recipe's sampler under a step plan: its timesteps start every table


@dataclass
class StepsConfig:
    """``method``: "dpm-v3" or "search". ``calls``: the search's budget (None: the recipe's steps).
    ``ems_samples`` x ``ems_grid``: trajectories and log-SNR points of the EMS (3 model evaluations
    each). ``search_samples``/``held_out``: images the search scores / the check runs on (own seeds).
    ``candidates``: most tables the search evaluates. ``reference_calls``: the reference's calls.
    ``ems_in_search``: search over DPM-Solver-v3 tables with the model's EMS instead of DPM-Solver++."""

    method: str = "search"
    calls: int | None = None
    ems_samples: int = 8
    ems_grid: int = 24
    search_samples: int = 16
    held_out: int = 8
    candidates: int = 60
    reference_calls: int = 200
    ems_in_search: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise DmcError(f"unknown step plan {self.method!r} (choose from {', '.join(METHODS)})")
        if self.calls is not None and not 2 <= self.calls <= 100:
            raise DmcError(f"--calls must be between 2 and 100, got {self.calls}")
        for name in ("ems_samples", "ems_grid", "search_samples", "held_out", "candidates"):
            if getattr(self, name) < 1:
                raise DmcError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ems_grid < 3:
            raise DmcError(f"ems_grid must be at least 3, got {self.ems_grid}")

    def to_json(self) -> dict:
        return asdict(self)


def _record(manifest_data: dict) -> dict | None:
    return next((p for p in manifest_data.get("passes", []) if p.get("name") == "steps"), None)


def base_calls(manifest_data: dict) -> list[SamplerCall] | None:
    """The FP32 call table a step plan wrote (None without one): what the uncompressed reference runs."""
    record = _record(manifest_data)
    return None if record is None else [SamplerCall.from_json(c) for c in record["base_calls"]]


def describe(manifest_data: dict) -> str | None:
    """One line for ``dmc inspect`` (no torch)."""
    record = _record(manifest_data)
    if record is None:
        return None
    if record["method"] == "dpm-v3":
        e = record["ems"]
        return (f"steps      DPM-Solver-v3, {record['calls']} calls; EMS from the model: {e['samples']} samples x "
                f"{e['grid']} log-SNR points, {e['model_evaluations']} evaluations, {e['seconds']} s")
    s = record["search"]
    plan = record["plan"]
    return (f"steps      searched for {record['calls']} calls from t={record['start']}: kept {record['kept']}; "
            f"timesteps {plan['timesteps']}, orders {plan['orders']}, correctors "
            f"{''.join('C' if c else '.' for c in plan['correctors'])}; objective {s['objective']:.3g} vs "
            f"{s['best_fixed']} {s['baselines'][s['best_fixed']]:.3g}; {s['candidates']} candidates, "
            f"{s['seconds']} s")


try:  # registering the pass imports the compile side; a runtime-only install can still describe()
    from dmc.sampling import steps_pass  # noqa: F401,E402  (registers the "steps" pass)
except ImportError:  # pragma: no cover
    pass
