"""Sources that are not a diffusion backbone compile through their own entry point (a registry).

``compile_model`` asks ``compiler_for(source)`` first: a LeRobot policy folder goes to
``dmc.policies.compile.compile_policy``; everything else is a diffusers backbone or pipeline.
"""

from __future__ import annotations

import importlib
from typing import Callable

# (module, predicate(source) -> bool, module, compile(source, out, options) -> Path)
SOURCE_COMPILERS = (
    ("dmc.policies.lerobot", "is_lerobot_policy", "dmc.policies.compile", "compile_policy"),
)


def compiler_for(source: str) -> Callable | None:
    for module, predicate, compiler_module, compiler in SOURCE_COMPILERS:
        if getattr(importlib.import_module(module), predicate)(str(source)):
            return getattr(importlib.import_module(compiler_module), compiler)
    return None
