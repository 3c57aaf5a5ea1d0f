"""The executor contract: the only way the runtime touches a backend.

An executor opens the graph set of one artifact and runs one graph at a time. Values it
returns are *backend-native* (a numpy array for CPU backends; an ``OrtValue``, a device
buffer or a tensor elsewhere): the sampler loop passes cached tensors back to ``run``
untouched, so they can stay on the backend's device between calls, and asks ``to_numpy``
only for what its numpy arithmetic needs (output 0, the prediction). ``run`` accepts
numpy arrays and the executor's own native values in ``feeds``.

Backends are listed in ``BACKENDS`` as ``"module:Class"`` and imported only when opened,
so an installed-but-unused runtime costs nothing and a missing one gives a clear error.
Every backend class is built as ``Class(manifest, providers=None, threads=None)``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dmc.errors import DmcError

BACKENDS: dict[str, str] = {
    "onnxruntime": "dmc.runtimes.onnxruntime_executor:OnnxRuntimeExecutor",
    "openvino": "dmc.runtimes.openvino_executor:OpenVinoExecutor",
    "tensorrt": "dmc.runtimes.tensorrt_executor:TensorRtExecutor",
}


# Backends chosen without being asked when the artifact was compiled for them (the manifest's
# "backend", from its INT8 profile) and their package is installed: the ov-cpu profile's Q/DQ graphs
# are written for OpenVINO's kernels (ONNX Runtime runs them mostly in float). TensorRT is never
# chosen implicitly: its engines are built on the target first (``dmc build-engine``).
IMPLICIT_BACKENDS = ("openvino",)  # backend name = its Python package


def default_backend(manifest) -> str:
    """The backend ``load`` uses when none is named: the artifact's own where installed, else onnxruntime."""
    wanted = manifest.data.get("backend")
    if wanted in IMPLICIT_BACKENDS and importlib.util.find_spec(wanted) is not None:
        return wanted
    return "onnxruntime"


def cpu_providers(backend: str) -> list[str] | None:
    """The providers argument that pins ``backend`` to the host CPU (None: its default device)."""
    return ["CPUExecutionProvider"] if backend == "onnxruntime" else None


@runtime_checkable
class Executor(Protocol):
    name: str  # backend name, e.g. "onnxruntime"
    providers: list[str]  # the provider(s) / device(s) that really run the graphs, after any fallback

    def input_names(self, graph: str) -> list[str]: ...

    def output_names(self, graph: str) -> list[str]: ...

    def run(self, graph: str, feeds: dict[str, Any]) -> list[Any]:
        """Run ``graph``; feeds it has no input for are ignored. Returns native values, in output order."""
        ...

    def to_numpy(self, value: Any) -> np.ndarray:
        """A host numpy array of a value returned by ``run`` (no copy where it already is one)."""
        ...


def backend_class(backend: str) -> type:
    """The executor class registered as ``backend``, imported now."""
    if backend not in BACKENDS:
        raise DmcError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    module, _, cls = BACKENDS[backend].partition(":")
    return getattr(importlib.import_module(module), cls)


def open_executor(backend: str, manifest, providers: list[str] | None = None,
                  threads: int | None = None) -> Executor:
    return backend_class(backend)(manifest, providers=providers, threads=threads)


def host_feeds(executor: Executor, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    """``feeds`` with every native value brought to host (for hooks that keep or inspect them)."""
    return {k: v if isinstance(v, np.ndarray) else executor.to_numpy(v) for k, v in feeds.items()}
