"""What to build: one engine per graph variant, shapes fixed by the artifact's recipe.

Every dimension is static except the batch, which gets one optimisation profile per variant:
``min`` = one image, ``opt`` = ``max`` = ``images`` images per call. Under classifier-free
guidance a call's batch is ``2 x images`` ([unconditional; conditional]), so the batch axis of
every input runs from ``k`` to ``k x images`` with ``k`` = 2 (guidance) or 1. ``dmc run`` on the
TensorRT backend samples in chunks of ``images``, so every call but a final partial chunk runs at
the ``opt`` shape (the one TensorRT tunes for, and the one a CUDA graph can be captured at).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dmc.artifact import Manifest
from dmc.errors import DmcError


@dataclass
class EnginePlan:
    variant: str
    onnx_path: str
    source_file: str
    int8: bool  # a Q/DQ graph (explicit quantization)
    shapes: dict[str, tuple[tuple, tuple, tuple]] = field(default_factory=dict)  # name -> (min, opt, max)

    def to_json(self) -> dict:
        return {"variant": self.variant, "source_graph": self.source_file, "int8": self.int8,
                "profile": {k: {"min": list(a), "opt": list(b), "max": list(c)} for k, (a, b, c) in self.shapes.items()}}


def batch_multiplier(manifest: Manifest) -> int:
    return 2 if float(manifest.recipe.guidance) > 1 else 1


def plan_engines(manifest: Manifest, images: int = 4) -> list[EnginePlan]:
    if images < 1:
        raise DmcError(f"--images must be >= 1 (got {images})")
    k = batch_multiplier(manifest)
    plans = []
    for name, g in manifest.graphs.items():
        shapes = {}
        for spec in g["inputs"]:
            dims = list(spec["shape"])
            if not dims:
                raise DmcError(f"graph {name}: input {spec['name']} is a scalar; dmc graphs batch every input")
            if any(isinstance(d, str) for d in dims[1:]):
                raise DmcError(f"graph {name}: input {spec['name']} has a dynamic non-batch dimension {dims}; "
                               "TensorRT engines need static shapes")
            rest = tuple(int(d) for d in dims[1:])
            shapes[spec["name"]] = ((k,) + rest, (k * images,) + rest, (k * images,) + rest)
        plans.append(EnginePlan(name, str(manifest.graph_path(name)), g["file"],
                                g.get("precision") == "int8", shapes))
    return plans
