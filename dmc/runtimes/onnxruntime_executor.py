"""ONNX Runtime executor: one session per graph variant of the artifact.

On the CPU provider native values are numpy arrays (``session.run``, the fastest path there).
On a device provider (CUDA, TensorRT) the executor binds inputs and outputs with IO binding
and returns ``OrtValue``s on the device, so cached tensors never cross to host between calls.
"""

from __future__ import annotations

import warnings

import numpy as np

from dmc.artifact import Manifest
from dmc.errors import DmcError


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise DmcError("onnxruntime is not installed: `pip install onnxruntime` "
                       "(or onnxruntime-gpu, never both in one environment)") from None
    return onnxruntime


def default_providers() -> list[str]:
    available = _ort().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


_DEVICE_OF_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}

# ONNX Runtime's memory pattern plans one block for a whole run's activations after the first
# run. At SD scale that block comes on top of the arena already grown: SD 1.5 at batch 2 peaks
# at 9.6 GB with it and 6.8 GB without, at the same speed (BENCHMARKS.md, issue 10). On small
# models it is a few per cent faster, so it stays on below this many bytes of weights.
MEM_PATTERN_MAX_WEIGHT_BYTES = 1 << 30


# ONNX Runtime gives each session its own intra-op pool, whose threads spin after a run waiting for
# more work. When the call table alternates between graphs (a cache schedule's full and retrieve
# variants), the idle session's spinners take the cores the running one needs: the demo's
# --int8 --cache at 2 threads ran 102 ms per 2 images spinning, 67 ms not (CPU 203 -> 83 ms); a
# one-graph table is faster spinning (84 vs 100 ms). BENCHMARKS.md, issue #17 item 3.
SPIN = "session.intra_op.allow_spinning"


def _alternating_graphs(manifest: Manifest) -> bool:
    calls = (manifest.data.get("sampler") or {}).get("calls") or []
    return len({c.get("graph", "full") for c in calls}) > 1


def _graph_bytes(manifest: Manifest) -> int:
    folders = {manifest.graph_path(name).parent for name in manifest.graphs}
    return sum(f.stat().st_size for folder in folders for f in folder.iterdir() if f.is_file())


class OnnxRuntimeExecutor:
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, providers: list[str] | None = None, threads: int | None = None,
                 io_binding: bool | None = None, session_config: dict[str, str] | None = None):
        ort = _ort()
        requested = providers or default_providers()
        from dmc.runtimes.ort_providers import fallbacks, provider_name

        unknown = [provider_name(p) for p in requested if provider_name(p) not in ort.get_available_providers()]
        if unknown:
            raise DmcError(f"requested provider(s) {unknown} not available; available: "
                           f"{ort.get_available_providers()}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.enable_mem_pattern = _graph_bytes(manifest) < MEM_PATTERN_MAX_WEIGHT_BYTES
        session_config = dict(session_config or {})
        if threads != 1 and _alternating_graphs(manifest):
            session_config.setdefault(SPIN, "0")
        self.spinning = session_config.get(SPIN, "1") != "0"
        for key, value in session_config.items():
            options.add_session_config_entry(key, value)
        self.sessions = {}
        for name in manifest.graphs:
            try:
                session = ort.InferenceSession(str(manifest.graph_path(name)), options, providers=requested)
            except Exception as e:
                raise DmcError(f"{manifest.graph_path(name)}: ONNX Runtime cannot load this graph "
                               f"({str(e).splitlines()[0]})") from None
            self.sessions[name] = session
        # A provider that fails to load (missing CUDA libraries) falls back silently: say so.
        active = next(iter(self.sessions.values())).get_providers() if self.sessions else []
        for graph, missing in fallbacks(requested, self.sessions).items():  # checked for every part
            warnings.warn(f"ONNX Runtime fell back from {missing} to {self.sessions[graph].get_providers()} "
                          f"for graph {graph}", stacklevel=2)
        self.providers = active
        self.device = next((_DEVICE_OF_PROVIDER[p] for p in active if p in _DEVICE_OF_PROVIDER), "cpu")
        self.io_binding = self.device != "cpu" if io_binding is None else io_binding
        self._inputs = {g: [i.name for i in s.get_inputs()] for g, s in self.sessions.items()}
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}
        self._ortvalue = ort.OrtValue

    def input_names(self, graph: str) -> list[str]:
        return self._inputs[graph]

    def output_names(self, graph: str) -> list[str]:
        return self._outputs[graph]

    def run(self, graph: str, feeds: dict) -> list:
        if self.io_binding:
            return self._run_bound(graph, feeds)
        return self.sessions[graph].run(None, {k: feeds[k] for k in self._inputs[graph] if k in feeds})

    def _run_bound(self, graph: str, feeds: dict) -> list:
        session = self.sessions[graph]
        binding = session.io_binding()
        for name in self._inputs[graph]:
            value = feeds[name]
            if isinstance(value, self._ortvalue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._outputs[graph]:
            binding.bind_output(name, self.device)
        session.run_with_iobinding(binding)
        return binding.get_outputs()

    def to_numpy(self, value) -> np.ndarray:
        return value.numpy() if isinstance(value, self._ortvalue) else value
