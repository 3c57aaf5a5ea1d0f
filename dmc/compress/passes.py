"""Pass registry: a pass is a config dataclass plus one handler registered for its type.

Passes run in the fixed order of ``algorithms.md`` §10 (steps -> prune -> cache -> quantize ->
correct), whatever order the user lists them in; each appends what it did to
``ctx.passes`` for the manifest.
"""

from __future__ import annotations

from typing import Callable

ORDER = ("steps", "prune", "cache", "quantize", "correct")
_HANDLERS: dict[type, tuple[str, Callable]] = {}


def register_pass(stage: str, config_type: type):
    """``@register_pass("quantize", QuantizeConfig)`` over ``def handler(ctx, config)``."""
    if stage not in ORDER:
        raise ValueError(f"unknown stage {stage!r}")

    def deco(handler: Callable) -> Callable:
        _HANDLERS[config_type] = (stage, handler)
        return handler
    return deco


def stage_of(cfg) -> str:
    """The stage a pass config runs in ("cache", "quantize", ...)."""
    if type(cfg) not in _HANDLERS:
        raise TypeError(f"no pass registered for {type(cfg).__name__}")
    return _HANDLERS[type(cfg)][0]


def run_passes(ctx, configs: list) -> None:
    staged = []
    for cfg in configs:
        if type(cfg) not in _HANDLERS:
            raise TypeError(f"no pass registered for {type(cfg).__name__}")
        stage, handler = _HANDLERS[type(cfg)]
        staged.append((ORDER.index(stage), stage, handler, cfg))
    for _, _, handler, cfg in sorted(staged, key=lambda s: s[0]):
        handler(ctx, cfg)
