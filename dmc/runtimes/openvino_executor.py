"""OpenVINO executor: each graph variant read from the artifact's ONNX and compiled for one device.

FP32 graphs run with ``INFERENCE_PRECISION_HINT=f32`` so OpenVINO does not trade accuracy for
bf16 on CPUs that have it; Q/DQ graphs are lowered by OpenVINO's low-precision transformations
(they reproduce ONNX Runtime's results only for the symmetric ``ov-cpu`` profile, see
``dmc.quantize.profiles``). Dynamic quantization is off: by default OpenVINO's CPU plugin
quantizes the *activations* of layers with int8-stored weights on the fly (the float islands'
weight-only int8 Gemms), which moved the demo's per-call output 42 dB away from the graph's
semantics. Native values are numpy arrays: the infer request's output
tensors are reused by the next call, so each output is copied once.
"""

from __future__ import annotations

import numpy as np

from dmc.artifact import Manifest
from dmc.errors import DmcError


def _ov():
    try:
        import openvino
    except ImportError:
        raise DmcError("openvino is not installed: `pip install openvino` (or `pip install dmc[openvino]`)") from None
    return openvino


class OpenVinoExecutor:
    name = "openvino"

    def __init__(self, manifest: Manifest, providers: list[str] | None = None, threads: int | None = None,
                 config: dict | None = None):
        ov = _ov()
        core = ov.Core()
        device = (providers or ["CPU"])[0]
        if len(providers or []) > 1:
            raise DmcError(f"the openvino backend runs on one device, got {providers}")
        if device not in core.available_devices:
            raise DmcError(f"OpenVINO device {device!r} not available; available: {core.available_devices}")
        settings = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                    "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0, **(config or {})}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = int(threads)
        self.requests, self._inputs, self._outputs = {}, {}, {}
        for name in manifest.graphs:
            path = manifest.graph_path(name)
            try:
                compiled = core.compile_model(core.read_model(str(path)), device, settings)
            except Exception as e:
                raise DmcError(f"{path}: OpenVINO cannot compile this graph "
                               f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
            self._inputs[name] = [i.get_any_name() for i in compiled.inputs]
            self._outputs[name] = [o.get_any_name() for o in compiled.outputs]
            self.requests[name] = compiled.create_infer_request()
        self.providers = [device]
        self.compiled_config = settings

    def input_names(self, graph: str) -> list[str]:
        return self._inputs[graph]

    def output_names(self, graph: str) -> list[str]:
        return self._outputs[graph]

    def run(self, graph: str, feeds: dict) -> list[np.ndarray]:
        request = self.requests[graph]
        missing = [k for k in self._inputs[graph] if k not in feeds]
        if missing:
            raise DmcError(f"graph {graph!r} needs input(s) {missing}")
        request.infer({k: np.ascontiguousarray(feeds[k]) for k in self._inputs[graph]})
        return [request.get_output_tensor(i).data.copy() for i in range(len(self._outputs[graph]))]

    def to_numpy(self, value) -> np.ndarray:
        return value

    def profile(self, graph: str) -> list:
        """Per-node performance counters of the last call (needs ``{"PERF_COUNT": True}`` in ``config``)."""
        return self.requests[graph].get_profiling_info()
