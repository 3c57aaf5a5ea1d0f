"""Run graph variants as torch modules, so the runtime's own sampler loop drives the torch model.

Conforms to ``dmc.runtimes.executor.Executor``; on CPU its native values are numpy arrays
sharing memory with torch's outputs (``Tensor.numpy`` does not copy).
"""

from __future__ import annotations

import numpy as np
import torch


class TorchExecutor:
    name = "torch"
    providers = ["cpu"]

    def __init__(self, modules: dict[str, torch.nn.Module], input_names: dict[str, list[str]],
                 output_names: dict[str, list[str]]):
        self.modules = modules
        self._input_names = input_names
        self._output_names = output_names

    def input_names(self, graph: str) -> list[str]:
        return self._input_names[graph]

    def output_names(self, graph: str) -> list[str]:
        return self._output_names[graph]

    def to_numpy(self, value) -> np.ndarray:
        return np.asarray(value)

    @torch.inference_mode()
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        module = self.modules[graph]
        device = next(module.parameters(), torch.empty(0)).device  # --device cuda moves the modules
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(device) for n in self._input_names[graph]]
        out = module(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        return [o.detach().float().cpu().numpy() for o in outs]
