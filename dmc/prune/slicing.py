"""Binary masks from scores (aligned widths, a parameter or MAC target), and physical slicing."""

from __future__ import annotations

import copy
import heapq
import math

import torch
from torch import nn

from dmc.errors import DmcError
from dmc.prune.structures import STRUCTURES, Unit, replace_module


def allowed_keeps(unit: Unit, align: int) -> list[int]:
    """Kept-unit counts whose width is a multiple of ``align`` (plus all, and none if removable), descending."""
    q = align // math.gcd(align, unit.unit_width)  # units per aligned step
    keeps = {unit.units} | {n for n in range(q, unit.units, q)}
    if unit.removable:
        keeps.add(0)
    return sorted(keeps, reverse=True)


def binarize(units: list[Unit], scores: list[torch.Tensor], remove: float, align: int,
             costs: list[float] | None = None) -> list[torch.Tensor]:
    """Keep masks (bool per unit) removing at least ``remove`` of the target: parameters, or the
    cost of each structure's unit in ``costs`` (``costs.py``: MACs per call).

    Greedy over aligned chunks: every structure offers its next chunk (the lowest-scored units
    still kept, down to the next allowed width); the chunk of lowest mean score goes first, until
    the target is met. Widths stay multiples of ``align`` (or zero: a constant branch).
    """
    orders = [torch.argsort(s.detach().float(), stable=True) for s in scores]  # lowest score first
    keeps = [allowed_keeps(u, align) for u in units]
    pos = [0] * len(units)  # index into keeps[i]: current kept count is keeps[i][pos[i]]
    heap = []

    def push(i):
        if pos[i] + 1 < len(keeps[i]):
            cur, nxt = keeps[i][pos[i]], keeps[i][pos[i] + 1]
            gone = orders[i][units[i].units - cur: units[i].units - nxt]  # the next chunk to go
            heapq.heappush(heap, (float(scores[i].detach().float()[gone].mean()), i))

    for i in range(len(units)):
        push(i)
    per_unit = costs if costs is not None else [u.params_per_unit for u in units]
    what = "parameters" if costs is None else "of the target"
    removed = 0.0
    while removed < remove:
        if not heap:
            raise DmcError(f"--prune: the maskable structures hold only {removed:.0f} {what}; cannot remove "
                           f"{remove:.0f} (lower the ratio)")
        _, i = heapq.heappop(heap)
        cur, nxt = keeps[i][pos[i]], keeps[i][pos[i] + 1]
        removed += (cur - nxt) * per_unit[i]
        pos[i] += 1
        push(i)
    out = []
    for i, u in enumerate(units):
        keep = torch.ones(u.units, dtype=torch.bool)
        keep[orders[i][: u.units - keeps[i][pos[i]]]] = False
        out.append(keep)
    return out


def slice_model(model: nn.Module, units: list[Unit], keep: list[torch.Tensor]) -> tuple[nn.Module, list[dict]]:
    """A physically pruned copy of ``model`` and one record per structure for the manifest."""
    pruned = copy.deepcopy(model)
    records = []
    for unit, k in zip(units, keep):
        idx = torch.nonzero(k).reshape(-1)
        before = sum(p.numel() for p in pruned.get_submodule(unit.path).parameters())
        new = STRUCTURES[unit.kind].slice(pruned.get_submodule(unit.path), idx)
        replace_module(pruned, unit.path, new)
        after = sum(p.numel() for p in new.parameters())
        records.append({"module": unit.path, "kind": unit.kind, "units": unit.units, "kept": int(len(idx)),
                        "width": unit.units * unit.unit_width, "kept_width": int(len(idx)) * unit.unit_width,
                        "constant": len(idx) == 0, "params_removed": int(before - after)})
    return pruned.eval().requires_grad_(False), records
