"""ONNX Runtime executor: one session per graph variant of the artifact."""

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


class OnnxRuntimeExecutor:
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, providers: list[str] | None = None, threads: int | None = None):
        ort = _ort()
        requested = providers or default_providers()
        unknown = [p for p in requested if p not in ort.get_available_providers()]
        if unknown:
            raise DmcError(f"requested provider(s) {unknown} not available; available: "
                           f"{ort.get_available_providers()}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
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
        missing = [p for p in requested if p not in active]
        if missing:
            warnings.warn(f"ONNX Runtime fell back from {missing} to {active}", stacklevel=2)
        self.providers = active

    def output_names(self, graph: str) -> list[str]:
        return [o.name for o in self.sessions[graph].get_outputs()]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.sessions[graph]
        names = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in feeds.items() if k in names})
