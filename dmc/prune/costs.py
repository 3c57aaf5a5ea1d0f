"""What removing one unit saves: parameters, or multiply-accumulates per model call.

``--prune-target params`` counts a unit's weights (``Unit.params_per_unit``). A parameter budget is
not a compute budget: a UNet's parameters sit in its low-resolution blocks and its time in the
high-resolution ones, so parameter-targeted masks cut the cheap layers (BENCHMARKS.md, issue #12:
1.01-1.04x per call at 20-30 % on the mid-size UNet). ``--prune-target macs`` weights each unit
by the MACs one call spends on it, measured, not modelled: one forward records each structure's
inputs, then the structure is run whole and sliced by one unit (its own ``slice`` handler), and
the difference is the unit's MACs. MACs are linear in the number of units of every structure
here (projections, attention matmuls per head, convolutions per channel group), so one
difference is exact for all of its units.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dmc.prune.config import TARGETS
from dmc.prune.structures import STRUCTURES, Unit


def count_macs(fn, *args, **kwargs) -> int:
    """Multiply-accumulates of ``fn(*args, **kwargs)`` (convs, matmuls, attention), torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops() // 2)


def _record_inputs(model: nn.Module, units: list[Unit], forward) -> dict[str, tuple]:
    """(args, kwargs) each unit's module of ``model`` receives in ``forward()`` (its first call)."""
    seen: dict[str, tuple] = {}
    hooks = []
    for u in units:
        def hook(_m, args, kwargs, path=u.path):
            seen.setdefault(path, (args, kwargs))
        hooks.append(model.get_submodule(u.path).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            forward()
    finally:
        for h in hooks:
            h.remove()
    return seen


def unit_costs(model: nn.Module, units: list[Unit], target: str, forward) -> tuple[list[float], float]:
    """(cost of one unit per structure, the whole model's cost) for ``target``. ``forward()`` runs
    ``model`` once on a single sample (so MACs are per image and call)."""
    if target == "params":
        return [float(u.params_per_unit) for u in units], float(sum(p.numel() for p in model.parameters()))
    if target != "macs":
        raise ValueError(f"unknown prune target {target!r} (have: {', '.join(TARGETS)})")
    inputs = _record_inputs(model, units, forward)
    costs = []
    for u in units:
        if u.path not in inputs:  # never run in this forward (e.g. an unused branch): costs nothing
            costs.append(0.0)
            continue
        args, kwargs = inputs[u.path]
        module = model.get_submodule(u.path)
        whole = count_macs(module, *args, **kwargs)
        one_less = STRUCTURES[u.kind].slice(copy.deepcopy(module), torch.arange(u.units - 1))
        costs.append(float(max(0, whole - count_macs(one_less, *args, **kwargs))))
    return costs, float(count_macs(forward))
