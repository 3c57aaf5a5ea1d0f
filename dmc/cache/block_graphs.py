"""Graphs for per-sub-block caching, shared by every family whose cache points are residual branches
(DiT's attention/MLP branches, DP-T's self-/cross-attention/FFN sub-blocks).

A family supplies a *cached step*: a module built from ``(adapter, pattern, outputs)`` that computes
the branches ``pattern`` marks, reads the others from graph inputs ``cache.<label>`` and returns
the prediction followed by the computed branches ``outputs`` marks. This module exports one graph
per distinct refresh row and writes the call table's ``graph`` and ``extra["cache"]`` columns; the
runtime feeds cache inputs by name from what earlier calls wrote.
"""

from __future__ import annotations

import numpy as np

from dmc.cache.schedules import distinct_rows
from dmc.errors import DmcError

_FLAT: dict[tuple, type] = {}


def with_flat_forward(base: type, base_inputs: tuple[str, ...], n: int) -> type:
    """A subclass of ``base`` whose ``forward`` takes ``base_inputs`` and exactly ``n`` cache tensors.

    The ONNX exporter maps graph input names onto ``forward``'s named parameters, so the signature
    must be flat (no ``*args``); the number of cache inputs depends on the pattern. ``forward``
    calls ``self.step(*base_inputs, [caches])``.
    """
    key = (base, base_inputs, n)
    if key not in _FLAT:
        params = ", ".join(base_inputs)
        caches = ", ".join(f"c{i}" for i in range(n))
        src = (f"def forward(self, {params}{', ' if n else ''}{caches}):\n"
               f"    return self.step({params}, [{caches}])\n")
        scope: dict = {}
        exec(src, scope)  # noqa: S102 - generated from identifiers and integers only
        _FLAT[key] = type(f"{base.__name__}{n}", (base,), {"forward": scope["forward"]})
    return _FLAT[key]


def graph_names(patterns: list[tuple], prefix: str) -> list[str]:
    """``full`` for the all-computed pattern, ``<prefix>.p0``, ``<prefix>.p1``, ... for the others."""
    names, j = [], 0
    for pat in patterns:
        if all(pat):
            names.append("full")
        else:
            names.append(f"{prefix}.p{j}")
            j += 1
    return names


def opset_of(ctx) -> int:
    from dmc.export.onnx_export import DEFAULT_OPSET

    full = ctx.graphs.get("full")
    if full is not None:
        for imp in full.onnx.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
    return DEFAULT_OPSET


def install_block_graphs(ctx, refresh: np.ndarray, make_step, example_inputs, prefix: str) -> None:
    """``refresh``: ``[K, P]`` bool (K model calls, P branches in the family's label order).

    One graph per distinct row, every one on the original parameters (``write_graphs`` stores the
    weights once). A computed branch is a cache output only when some call reads it from cache.
    ``make_step(pattern, outputs)`` builds the cached step; ``example_inputs(step)`` its export inputs.
    """
    from dmc.compress.context import GraphVariant
    from dmc.export.onnx_export import export_onnx

    refresh = np.asarray(refresh, dtype=bool)
    if not refresh[0].all():
        raise DmcError("the first model call must compute every branch (nothing is cached before it)")
    patterns, index = distinct_rows(refresh)
    read_somewhere = (~refresh).any(axis=0)
    names = graph_names(patterns, prefix)
    opset = opset_of(ctx)
    variants = {}
    for name, pattern in zip(names, patterns):
        step = make_step(pattern, tuple(p and r for p, r in zip(pattern, read_somewhere)))
        graph = export_onnx(step, example_inputs(step), step.input_names, step.output_names, opset)
        variants[name] = GraphVariant(graph, step, step.input_names, step.output_names, step.describe())
    ctx.graphs.update(variants)  # replaces the plain "full" graph with the one that writes caches
    for k, call in enumerate(ctx.calls):
        call.graph = names[index[k]]
        call.extra["cache"] = {"refresh": [bool(v) for v in refresh[k]]}
