"""The plan of passes, decided in one place for the CLI and the Python API.

``plan_passes`` turns high-level options into pass configs; ``complete_plan`` adds the passes that
others imply (INT8 with a cache adds CacheQuant's decoupled error correction), so a Python caller that
lists only a cache and a quantize config gets the same artifact as ``dmc compress --int8 --cache``.
The execution order itself is the registry's (``passes.ORDER``).
"""

from __future__ import annotations

import dataclasses


def plan_passes(int8: bool = False, cache: bool = False, seed: int = 0, prune: float | None = None,
                prune_align: int | None = None, prune_method: str | None = None,
                prune_iterations: int | None = None, prune_samples: int | None = None,
                prune_target: str | None = None,
                cache_schedule: str | None = None, cache_interval: int | None = None,
                cache_method: str | None = None, forecast_order: int | None = None,
                router_iterations: int | None = None, router_alpha: float | None = None,
                router_threshold: float | None = None, cache_budget: int | None = None,
                bac_bubbling: int | None = None, cache_variants: int | None = None,
                calibration: str = "ndtc", calib_samples: int = 256, calib_budget: float | None = None,
                scale_groups: int = 1, profile: str = "ort-cpu", step_plan: str | None = None,
                calls: int | None = None, search_candidates: int | None = None,
                ems_in_search: bool | None = None, int8_attention: bool | None = None,
                int8_stream: bool = False, keep_float: str | None = None) -> list:
    """Pass configs for the high-level options (``None``: the config's own default)."""
    passes = []
    if step_plan is not None:
        from dmc.sampling.step_plan import StepsConfig

        kw = {"method": step_plan, "calls": calls, "candidates": search_candidates, "seed": seed,
              "ems_in_search": ems_in_search}
        passes.append(StepsConfig(**{k: v for k, v in kw.items() if v is not None}))
    if prune is not None:
        from dmc.prune import PruneConfig

        kw = {"ratio": prune, "align": prune_align, "method": prune_method, "iterations": prune_iterations,
              "samples": prune_samples, "target": prune_target}
        passes.append(PruneConfig(**{k: v for k, v in kw.items() if v is not None}))
    if cache:
        from dmc.cache import CacheConfig

        kw = {"schedule": cache_schedule, "interval": cache_interval, "method": cache_method,
              "order": forecast_order, "router_iterations": router_iterations, "router_alpha": router_alpha,
              "router_threshold": router_threshold, "budget": cache_budget, "n_bubbling": bac_bubbling,
              "max_variants": cache_variants}
        passes.append(CacheConfig(**{k: v for k, v in kw.items() if v is not None}))
    if int8:
        from dmc.quantize import QuantizeConfig

        islands = {} if keep_float is None else {"keep_float": parse_keep_float(keep_float)}
        passes.append(QuantizeConfig(calibration=calibration, num_samples=calib_samples,
                                     scale_groups=scale_groups, profile=profile, seed=seed,
                                     calibration_budget_s=calib_budget or None,
                                     attention_matmuls=int8_attention, residual_stream=int8_stream, **islands))
    return complete_plan(passes)


def parse_keep_float(text: str) -> tuple:
    """``--keep-float``'s comma list (``none``: every layer is quantized)."""
    words = tuple(w.strip() for w in text.split(",") if w.strip())
    return () if words == ("none",) else words


def plan_from_options(int8: bool, cache: bool, seed: int, options: dict) -> list:
    """``plan_passes`` over the subset of ``options`` (e.g. a CLI's) that names its parameters."""
    import inspect

    names = set(inspect.signature(plan_passes).parameters) - {"int8", "cache", "seed"}
    return plan_passes(int8=int8, cache=cache, seed=seed, **{k: v for k, v in options.items() if k in names})


def complete_plan(configs: list) -> list:
    """``configs`` plus the passes they imply (each added once)."""
    from dmc.cache import CacheConfig
    from dmc.cache.correction import CorrectConfig
    from dmc.quantize import QuantizeConfig

    kinds = {type(c) for c in configs}
    if CacheConfig in kinds and QuantizeConfig in kinds and CorrectConfig not in kinds:
        configs = [*configs, CorrectConfig()]  # CacheQuant's correction, fitted after both passes
    return configs


def with_seed(configs: list, seed: int) -> list:
    """Configs whose ``seed`` is left at the default 0 follow the recipe's seed (``--seed``)."""
    return [dataclasses.replace(c, seed=seed) if dataclasses.is_dataclass(c) and hasattr(c, "seed")
            and c.seed == 0 else c for c in configs]
