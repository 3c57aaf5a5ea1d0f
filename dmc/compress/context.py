"""What the passes share while an artifact is being compiled."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from dmc.models.adapters import Adapter
from dmc.models.loading import LoadedModel
from dmc.sampling.calls import SamplerCall
from dmc.sampling.recipe import Recipe


@dataclass
class GraphVariant:
    """One graph of the artifact and the torch module that computes the same thing."""

    onnx: onnx.ModelProto | None  # None only inside the quantize pass, once its weights are on disk
    module: torch.nn.Module  # torch reference of this graph's computation (FP32)
    input_names: list[str]
    output_names: list[str]
    computes: str  # one line for humans, recorded in the manifest
    precision: str = "fp32"
    reference: torch.nn.Module | None = None  # set by passes that change the math (e.g. fake-quant torch model)


@dataclass
class CompileContext:
    loaded: LoadedModel
    adapter: Adapter
    recipe: Recipe
    calls: list[SamplerCall]
    graphs: dict[str, GraphVariant] = field(default_factory=dict)
    passes: list[dict] = field(default_factory=list)  # what each pass did, for the manifest
    precision: str = "fp32"
    target: str = "ort-cpu"
    backend: str = "onnxruntime"  # the runtime the graphs are written for (the INT8 profile's)
    fidelity_floor_psnr: float = 60.0  # verify refuses an artifact whose samples fall below this
    extra_files: dict[str, bytes] = field(default_factory=dict)  # path in artifact -> bytes
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # per-call constants, written to tables.npz
    warnings: list[str] = field(default_factory=list)
    progress: bool = False  # tqdm bars on stderr for long stages
    device: str = "cpu"  # where torch runs calibration and references ("cuda" where torch sees a GPU)
    prompt_conditions: object | None = None  # text-to-image: calibration trajectories run under these prompts
    verify_conditions: object | None = None  # ... and verification under these (held out from calibration)
    build_facts: dict = field(default_factory=dict)  # timings etc.: to build.json, never the manifest

    def torch_pipeline(self, reference: bool = False):
        """The runtime's sampler loop around torch modules (FP32, or each graph's reference)."""
        from dmc.compress.torch_executor import TorchExecutor
        from dmc.runtimes.pipeline import Pipeline

        modules = {n: (g.reference if reference and g.reference is not None else g.module)
                   for n, g in self.graphs.items()}
        executor = TorchExecutor(modules, {n: g.input_names for n, g in self.graphs.items()},
                                 {n: g.output_names for n, g in self.graphs.items()})
        cond = self.adapter.conditioning().to_json()
        pipe = Pipeline(self.recipe, self.calls, self.sample_shape, cond, executor, tables=self.tables)
        conditions = self.verify_conditions if reference else self.prompt_conditions
        return pipe if conditions is None else conditions.wrap(pipe)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of an image model (``--size`` applied); a policy's ``(horizon, action_dim)``."""
        shape = tuple(self.adapter.sample_shape)
        if self.recipe.resolution and len(shape) == 3:
            return (shape[0], *self.recipe.resolution)
        return shape
