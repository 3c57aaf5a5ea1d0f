"""``CacheConfig``: what ``dmc compress --cache`` asks of the cache pass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dmc.errors import DmcError

SCHEDULES = ("auto", "uniform", "dp", "bac", "router")
METHODS = ("reuse", "forecast")


@dataclass
class CacheConfig:
    """Feature caching (DeepCache for UNets, block caching for DiTs).

    - ``schedule``: "auto" ("dp" for UNets, "bac" for DiTs), "uniform" (every ``interval``-th call
      refreshes), "dp" (CacheQuant's DPS on the recorded FP features, ``algorithms.md`` §5.2) or
      "bac" (DiT: per-block ACS + Bubbling Union, §6; for a UNet, which has one cache point, "bac"
      runs ACS on that point).
    - ``interval``: N of DeepCache's 1:N; about K/N calls refresh.
    - ``branch``: UNet skip branch kept live (0 = the shallowest: only conv_in, the first down
      block's resnets and the last up block run on cached calls).
    - ``correction``: CacheQuant's DEC cache correction a1[k], b1[k] (per channel, per call).
    - ``full_first``: leading calls that always refresh; None = the sampler's order (2 for dpm++2m).
    - ``budget``/``n_bubbling``/``max_variants``: BAC refreshes per block, bubbled blocks, and the cap
      on distinct per-call graphs (DiT). ``budget`` None = ceil(K / interval).
    - ``router_*``: HarmoniCa's learned router (``schedule="router"``, ``router.py``): training
      iterations, batch, Adam lr, α (weight of the compute term: larger caches more), the
      IEPO λ refresh period, and ``router_threshold`` θ: None keeps each point's ``budget`` best
      calls (equal compute to uniform at ``interval``), a value keeps the calls whose score r > θ.
    - ``seed``/``num_samples``: the seeded FP trajectory whose features drive the schedule search and
      the correction fit (None seed = the recipe's seed).
    """

    schedule: str = "auto"
    interval: int = 3
    branch: int = 0
    correction: bool = True
    full_first: int | None = None
    max_variants: int | None = 4
    budget: int | None = None
    n_bubbling: int = 3
    seed: int | None = None
    num_samples: int = 8
    method: str = "reuse"  # "forecast": TaylorSeer extrapolation of cached features (forecast.py)
    order: int = 1  # forecast order (1 or 2)
    router_iterations: int = 30
    router_batch: int = 4
    router_lr: float = 0.1
    router_alpha: float = 1e-3
    router_lambda_every: int = 10
    router_threshold: float | None = None
    router_init_std: float = 1.0  # HarmoniCa draws the logits from N(0, 1)

    def __post_init__(self):
        if self.method not in METHODS:
            raise DmcError(f"unknown cache method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.order not in (1, 2):
            raise DmcError(f"forecast order must be 1 or 2, got {self.order}")
        if self.schedule not in SCHEDULES:
            raise DmcError(f"unknown cache schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        if self.interval < 1:
            raise DmcError(f"cache interval must be >= 1, got {self.interval}")
        if self.branch < 0:
            raise DmcError(f"cache branch must be >= 0, got {self.branch}")
        if self.full_first is not None and self.full_first < 1:
            raise DmcError(f"full_first must be >= 1 (the first call has nothing cached), got {self.full_first}")
        if self.num_samples < 1:
            raise DmcError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.router_iterations < 1 or self.router_batch < 1 or self.router_lambda_every < 1:
            raise DmcError("router iterations, batch and lambda period must be >= 1")
        if self.router_lr <= 0 or self.router_alpha < 0:
            raise DmcError(f"router lr must be > 0 and alpha >= 0, got {self.router_lr}, {self.router_alpha}")
        if self.router_threshold is not None and not 0.0 < self.router_threshold < 1.0:
            raise DmcError(f"router threshold must be in (0, 1), got {self.router_threshold}")
        if self.max_variants is not None and self.max_variants < 1:
            raise DmcError(f"max_variants must be >= 1, got {self.max_variants}")

    def to_json(self) -> dict:
        return asdict(self)
