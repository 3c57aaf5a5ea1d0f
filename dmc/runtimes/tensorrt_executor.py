"""TensorRT executor: runs the engines ``dmc build-engine`` built for this machine.

- One device allocation for activations shared by every engine of the artifact: each context is
  created with ``ExecutionContextAllocationStrategy.USER_MANAGED`` and given the same buffer with
  ``set_device_memory`` (sized by the largest ``device_memory_size_v2``); calls never overlap.
- Outputs live in device buffers owned by the executor and are returned as ``DeviceTensor``s, so
  cached tensors feed the next graph without a host round trip; a variant's input/output addresses
  are bound once per buffer set and reused (``set_tensor_address`` only when a pointer changes).
- Not done yet: CUDA-graph capture. Shapes are static for every full chunk of ``images_per_call``,
  so each variant's ``execute_async_v3`` could be captured once and replayed; the numpy sampler
  update runs on host between calls, so capture could only be per call, not of the whole loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dmc.engines import keys, trt_api
from dmc.errors import DmcError


@dataclass
class DeviceTensor:
    ptr: int
    dtype: np.dtype
    shape: tuple


class PolygraphyCuda:
    """Device memory and a stream through ``polygraphy.cuda`` (ctypes over libcudart; no torch)."""

    def __init__(self):
        from polygraphy import cuda

        self._cuda, self.stream = cuda, cuda.Stream()
        self._arrays = {}

    def malloc(self, nbytes: int) -> int:
        arr = self._cuda.DeviceArray(shape=(max(int(nbytes), 1),), dtype=np.uint8)
        self._arrays[arr.ptr] = arr
        return arr.ptr

    def htod(self, ptr: int, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self._cuda.wrapper().memcpy(ptr, a.ctypes.data, a.nbytes, self._cuda.MemcpyKind.HostToDevice, self.stream.ptr)

    def dtoh(self, ptr: int, dtype, shape) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._cuda.wrapper().memcpy(out.ctypes.data, ptr, out.nbytes, self._cuda.MemcpyKind.DeviceToHost, self.stream.ptr)
        self.stream.synchronize()
        return out

    @property
    def stream_handle(self) -> int:
        return self.stream.ptr


class TensorRtExecutor:
    name = "tensorrt"

    def __init__(self, manifest, providers=None, threads=None, backend=None, cuda=None, key=None):
        trt = backend[0] if backend else trt_api.import_tensorrt()[0]
        if key is None:
            cc, dev = trt_api.compute_capability()
            key = keys.EngineKey(cc, trt.__version__, dev)
        folder, data = keys.find_engines(manifest.root, key)
        self.images_per_call = int(data.get("images_per_call", 1))
        self.cuda = cuda or PolygraphyCuda()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING) if hasattr(trt.Logger, "WARNING") else None)
        self.engines, self.contexts, self._io = {}, {}, {}
        for variant, e in data["engines"].items():
            engine = runtime.deserialize_cuda_engine((folder / e["file"]).read_bytes())
            if engine is None:
                raise DmcError(f"{folder / e['file']}: TensorRT cannot load this engine; rebuild with "
                               f"`{keys.rebuild_command(manifest.root)}`")
            self.engines[variant] = engine
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._io[variant] = (ins, [n for n in names if n not in ins])
        missing = [g for g in manifest.graphs if g not in self.engines]
        if missing:
            raise DmcError(f"{folder}: no engine for graph(s) {missing}; rebuild with `{keys.rebuild_command(manifest.root)}`")
        size = max(trt_api.device_memory_size(e) for e in self.engines.values())
        self.shared_memory = (self.cuda.malloc(size), size)  # one activation buffer for all engines
        for variant, engine in self.engines.items():
            ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            ctx.set_device_memory(*self.shared_memory)
            self.contexts[variant] = ctx
        self._manifest_outputs = {g: spec["outputs"] for g, spec in manifest.graphs.items()}
        self._bound: dict[str, dict] = {v: {} for v in self.engines}
        self._buffers: dict[tuple, DeviceTensor] = {}
        self.providers = [f"TensorRT {trt.__version__} ({key.describe()})"]
        self._nptype = trt.nptype  # engines report trt.DataType, numpy needs its own type

    def input_names(self, graph: str) -> list[str]:
        return self._io[graph][0]

    def output_names(self, graph: str) -> list[str]:
        return self._io[graph][1]

    def _buffer(self, graph: str, name: str, dtype, shape) -> DeviceTensor:
        key = (graph, name, tuple(shape))
        if key not in self._buffers:
            self._buffers[key] = DeviceTensor(self.cuda.malloc(int(np.prod(shape)) * np.dtype(dtype).itemsize),
                                              np.dtype(dtype), tuple(shape))
        return self._buffers[key]

    def _dtype(self, engine, name: str) -> np.dtype:
        return np.dtype(self._nptype(engine.get_tensor_dtype(name)))

    def _bind(self, graph: str, name: str, ptr: int) -> None:
        if self._bound[graph].get(name) != ptr:  # re-bind only when the pointer changes
            self.contexts[graph].set_tensor_address(name, ptr)
            self._bound[graph][name] = ptr

    def run(self, graph: str, feeds: dict) -> list:
        ctx, engine = self.contexts[graph], self.engines[graph]
        ins, outs = self._io[graph]
        batch = None
        for name in ins:
            value = feeds[name]
            if isinstance(value, DeviceTensor):
                tensor = value
            else:
                arr = np.ascontiguousarray(value, dtype=self._dtype(engine, name))
                tensor = self._buffer(graph, "in:" + name, arr.dtype, arr.shape)
                self.cuda.htod(tensor.ptr, arr)
            batch = tensor.shape[0]
            ctx.set_input_shape(name, tensor.shape)
            self._bind(graph, name, tensor.ptr)
        results = []
        for name in outs:
            shape = self._output_shape(graph, name, batch)
            tensor = self._buffer(graph, name, self._dtype(engine, name), shape)
            self._bind(graph, name, tensor.ptr)
            results.append(tensor)
        if not ctx.execute_async_v3(self.cuda.stream_handle):
            raise DmcError(f"TensorRT failed to run {graph}")
        return results

    def _output_shape(self, graph: str, name: str, batch: int) -> tuple:
        ctx = self.contexts[graph]
        if hasattr(ctx, "get_tensor_shape"):
            return tuple(int(d) for d in ctx.get_tensor_shape(name))
        spec = next(o for o in self._manifest_outputs[graph] if o["name"] == name)
        return (batch,) + tuple(int(d) for d in spec["shape"][1:])

    def to_numpy(self, value) -> np.ndarray:
        return self.cuda.dtoh(value.ptr, value.dtype, value.shape) if isinstance(value, DeviceTensor) else value
