"""Which calls refresh each cached tensor: one handler per ``--cache-schedule``, in a registry.

The cache pass describes its family's cache points (``CachePoints``: DeepCache's one deep
feature of a UNet, the 2L pre-gate branch outputs of a DiT) and asks the registered handler of
``cfg.schedule`` for a ``[K, P]`` refresh mask (True = compute and store). Handlers:

- ``uniform``: every ``interval``-th call (DeepCache),
- ``dp``: CacheQuant's DPS, one schedule shared by every point,
- ``bac``: BAC's ACS per point plus Bubbling Union on the FFN points (one point: ACS alone),
- ``router``: HarmoniCa's learned router (``router.py``, registered on import).

A new schedule is a function registered here, not a branch in the pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from dmc.errors import DmcError


@dataclass
class CachePoints:
    """The cached tensors of one family, in depth order.

    ``modules``: ``() -> the torch modules whose outputs are the cached tensors`` (the router hooks them);
    ``record``: ``() -> [K, P, samples, ...]`` features on the uncached FP trajectory, recorded once
    on first use (schedules that need no features never pay for them).
    """

    labels: list[str]
    ffn: list[int] = field(default_factory=list)
    modules: Callable[[], list] | None = None
    record: Callable[[], np.ndarray] | None = None
    _features: np.ndarray | None = None

    def features(self) -> np.ndarray:
        if self._features is None:
            if self.record is None:
                raise DmcError("this cache schedule needs recorded features, and none can be recorded here")
            self._features = self.record()
        return self._features


@dataclass
class Schedule:
    refresh: np.ndarray  # [K, P] bool
    record: dict = field(default_factory=dict)  # what the handler adds to the cache pass's manifest record


SCHEDULE_HANDLERS: dict[str, Callable] = {}


def register_schedule(name: str):
    """``handler(ctx, cfg, points, num_calls, full_first, seed) -> Schedule``."""
    def wrap(fn):
        SCHEDULE_HANDLERS[name] = fn
        return fn
    return wrap


def choose(ctx, cfg, points: CachePoints, num_calls: int, full_first: int, seed: int) -> Schedule:
    if cfg.schedule == "router":
        from dmc.cache import router  # noqa: F401  (registers "router"; imports torch)
    handler = SCHEDULE_HANDLERS.get(cfg.schedule)
    if handler is None:
        raise DmcError(f"unknown cache schedule {cfg.schedule!r} (choose from {', '.join(sorted(SCHEDULE_HANDLERS))})")
    out = handler(ctx, cfg, points, num_calls, full_first, seed)
    out.refresh = np.asarray(out.refresh, dtype=bool)
    if out.refresh.shape != (num_calls, len(points.labels)) or not out.refresh[:full_first].all():
        raise DmcError(f"cache schedule {cfg.schedule} is malformed: shape {list(out.refresh.shape)}, "
                       f"expected [{num_calls}, {len(points.labels)}] with the first {full_first} call(s) full")
    return out


def budget_of(cfg, num_calls: int) -> int:
    """Refreshes per point for the budgeted schedules: ``cfg.budget`` or ceil(K / interval)."""
    return cfg.budget or math.ceil(num_calls / cfg.interval)


def _every_point(one: np.ndarray, points: CachePoints) -> np.ndarray:
    return np.repeat(np.asarray(one, dtype=bool)[:, None], len(points.labels), axis=1)


@register_schedule("uniform")
def _uniform(ctx, cfg, points, num_calls, full_first, seed) -> Schedule:
    from dmc.cache.schedules import uniform

    return Schedule(_every_point(uniform(num_calls, cfg.interval, full_first), points))


@register_schedule("dp")
def _dp(ctx, cfg, points, num_calls, full_first, seed) -> Schedule:
    from dmc.cache.schedules import cachequant_dp

    feats = points.features()
    return Schedule(_every_point(cachequant_dp(feats.reshape(num_calls, -1), cfg.interval, full_first), points))


@register_schedule("bac")
def _bac(ctx, cfg, points, num_calls, full_first, seed) -> Schedule:
    from dmc.cache.schedules import bac

    from dmc.cache.schedules import bubbling_blocks

    n_bubbling = cfg.n_bubbling if points.ffn else 0
    budget = budget_of(cfg, num_calls)
    record = {"budget": budget}
    if n_bubbling:
        upstream = bubbling_blocks(points.features(), n_bubbling)
        record["bubbling"] = {"blocks": upstream, "labels": [points.labels[i] for i in upstream]}
    return Schedule(bac(points.features(), budget, points.ffn, n_bubbling, full_first,
                        max_variants=cfg.max_variants), record)
