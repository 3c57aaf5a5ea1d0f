"""A recording stand-in for the TensorRT and Polygraphy APIs dmc uses (TensorRT is not installable here).

``make_fake(version)`` returns ``(trt, loaders, record)``: ``trt`` mimics the ``tensorrt`` module
(enums, ``Runtime``, engines, execution contexts), ``loaders`` mimics ``polygraphy.backend.trt``
(``NetworkFromOnnxPath``, ``CreateConfig``, ``EngineFromNetwork``, ``SaveEngine``, ``Profile``), and
``record`` holds every call. Version "11.x" drops what TensorRT 11 removed (``BuilderFlag.FP16``/
``INT8``, ``device_memory_size``, the inspector's ``Bindings``). A fake engine is a JSON "plan" that
names its ONNX graph; executing it runs that graph with ONNX Runtime on the CPU over a fake device
memory, so executor tests compare real numbers. It is *not* TensorRT: no kernels, no tactics.
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np
import onnx

from dmc.engines.precision import LAYER_OPS, intended_int8_layers


class Record:
    def __init__(self):
        self.networks: list[dict] = []
        self.configs: list[dict] = []
        self.saved: list[str] = []
        self.contexts: list["FakeContext"] = []
        self.float_layers: set[str] = set()  # ONNX nodes the fake "builder" leaves in float
        self.fail_build: str | None = None


class FakeDeviceMemory:
    """Host memory standing in for device memory: pointers are ints, allocations numpy byte arrays."""

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}
        self._next = 1 << 20
        self.allocations = 0
        self.stream_handle = 0

    def malloc(self, nbytes: int) -> int:
        ptr = self._next
        self._next += max(int(nbytes), 1) + 256
        self.blocks[ptr] = np.zeros(max(int(nbytes), 1), np.uint8)
        self.allocations += 1
        return ptr

    def free(self, ptr: int) -> None:
        self.blocks.pop(ptr, None)

    def view(self, ptr: int, dtype, shape) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.blocks[ptr][:n].view(dtype).reshape(shape)

    def htod(self, ptr: int, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self.blocks[ptr][:a.nbytes] = a.reshape(-1).view(np.uint8)

    def dtoh(self, ptr: int, dtype, shape) -> np.ndarray:
        return self.view(ptr, dtype, shape).copy()


def make_fake(version: str = "10.3.0"):
    major = int(version.split(".")[0])
    record = Record()
    trt = types.SimpleNamespace(__version__=version)
    flags = ["TF32", "REFIT", "STRIP_PLAN"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"] if major < 11 else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", flags)
    trt.NetworkDefinitionCreationFlag = enum.Enum("NetworkDefinitionCreationFlag", ["STRONGLY_TYPED"])
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", ["WORKSPACE", "TACTIC_SHARED_MEMORY"])
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "DETAILED", "NONE"])
    trt.LayerInformationFormat = enum.Enum("LayerInformationFormat", ["ONELINE", "JSON"])
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy",
                                                       ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    trt.TensorIOMode = enum.Enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
    # Engines report tensor types as trt.DataType, not numpy types; trt.nptype converts.
    trt.DataType = enum.Enum("DataType", list(_TRT_NP))
    trt.nptype = lambda dt: _TRT_NP[dt.name]
    trt.Logger = lambda *a, **k: types.SimpleNamespace()
    trt.Runtime = lambda logger=None: types.SimpleNamespace(
        deserialize_cuda_engine=lambda data: FakeEngine(json.loads(bytes(data)), trt, record))
    trt.record = record

    class Profile(dict):
        def add(self, name, min, opt, max):
            self[name] = (tuple(min), tuple(opt), tuple(max))
            return self

    def NetworkFromOnnxPath(path, strongly_typed=None, flags=None):
        entry = {"path": path, "strongly_typed": bool(strongly_typed),
                 "creation_flags": [trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED] if strongly_typed else []}
        record.networks.append(entry)
        return lambda: entry

    def CreateConfig(**kwargs):
        # Polygraphy maps fp16=/int8= to BuilderFlag.FP16/INT8: absent in TensorRT 11.
        if kwargs.get("fp16"):
            trt.BuilderFlag.FP16  # noqa: B018 - raises AttributeError on 11.x like the real module
        if kwargs.get("int8"):
            trt.BuilderFlag.INT8  # noqa: B018
        record.configs.append(kwargs)
        return kwargs

    def EngineFromNetwork(network, config=None, save_timing_cache=None):
        def build():
            net = network()
            if net["strongly_typed"] and (config.get("fp16") or config.get("int8")):
                raise RuntimeError("precision builder flags are not allowed on a strongly typed network")
            if record.fail_build:
                raise RuntimeError(record.fail_build)
            if save_timing_cache:
                with open(save_timing_cache, "ab") as f:
                    f.write(b"t")
            return FakeEngine({"onnx": net["path"], "strongly_typed": net["strongly_typed"],
                               "fp16": bool(config.get("fp16")), "profile": {k: [list(s) for s in v] for k, v in
                                                                             config["profiles"][0].items()}},
                              trt, record)
        return build

    def SaveEngine(engine, path):
        def save():
            e = engine() if callable(engine) else engine
            with open(path, "wb") as f:
                f.write(e.serialize())
            record.saved.append(path)
            return e
        return save

    loaders = types.SimpleNamespace(NetworkFromOnnxPath=NetworkFromOnnxPath, CreateConfig=CreateConfig,
                                    EngineFromNetwork=EngineFromNetwork, SaveEngine=SaveEngine, Profile=Profile)
    return trt, loaders, record


_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.FLOAT16: np.float16}
_TRT_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


class FakeEngine:
    def __init__(self, plan: dict, trt, record: Record):
        self.plan, self.trt, self.record = plan, trt, record
        model = onnx.load(plan["onnx"], load_external_data=False)
        self._model = model
        inits = {i.name for i in model.graph.initializer}
        self.inputs = [(v.name, _NP[v.type.tensor_type.elem_type]) for v in model.graph.input if v.name not in inits]
        self.outputs = [(v.name, _NP[v.type.tensor_type.elem_type]) for v in model.graph.output]
        if int(trt.__version__.split(".")[0]) < 11:
            self.device_memory_size = 4096
        self.device_memory_size_v2 = 4096 + 512 * len(self.outputs)
        self._session = None

    # --- the ICudaEngine surface the executor uses
    @property
    def num_io_tensors(self):
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i):
        return (self.inputs + self.outputs)[i][0]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name in dict(self.inputs) else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        np_type = dict(self.inputs + self.outputs)[name]
        return next(dt for dt in self.trt.DataType if _TRT_NP[dt.name] is np_type)

    def serialize(self):
        return json.dumps(self.plan).encode()

    def create_execution_context(self, strategy=None):
        ctx = FakeContext(self, strategy)
        self.record.contexts.append(ctx)
        return ctx

    def create_engine_inspector(self):
        return types.SimpleNamespace(get_engine_information=self._information)

    def _information(self, fmt):
        assert fmt == self.trt.LayerInformationFormat.JSON
        intended = set(intended_int8_layers(self._model))
        layers = []
        for node in self._model.graph.node:
            if node.op_type not in LAYER_OPS:
                continue
            if node.name in intended and node.name not in self.record.float_layers:
                fmt_in = "Int8 NC/32HW32"
            elif self.plan["fp16"]:
                fmt_in = "Channel major FP16 format where channel % 8 == 0"
            else:
                fmt_in = "Row major linear FP32"
            layers.append({"Name": node.name, "LayerType": "CaskConvolution" if "Conv" in node.op_type else "CaskGemm",
                           "Inputs": [{"Name": node.input[0], "Location": "Device", "Format/Datatype": fmt_in}],
                           "Outputs": [{"Name": node.output[0], "Location": "Device",
                                        "Format/Datatype": "Row major linear FP32"}],
                           "TacticName": "fake", "Metadata": f"[ONNX Layer: {node.name}]"})
        names = [n for n, _ in self.inputs + self.outputs]
        if int(self.trt.__version__.split(".")[0]) >= 11:
            return json.dumps({"Layers": layers, "I/O Tensors": [{"Name": n} for n in names]})
        return json.dumps({"Layers": layers, "Bindings": names})

    def session(self):
        if self._session is None:
            import onnxruntime as ort
            self._session = ort.InferenceSession(self.plan["onnx"], providers=["CPUExecutionProvider"])
        return self._session


class FakeContext:
    """IExecutionContext: shapes, tensor addresses, user-managed device memory, enqueue."""

    def __init__(self, engine: FakeEngine, strategy):
        self.engine, self.strategy = engine, strategy
        self.shapes, self.addresses, self.device_memory = {}, {}, None
        self.memory: FakeDeviceMemory | None = None  # set by the test's fake CUDA layer
        self.enqueues = 0
        self.address_sets = 0

    def set_device_memory(self, ptr, size):
        if size < self.engine.device_memory_size_v2:
            raise RuntimeError("device memory too small")
        self.device_memory = (ptr, size)

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.plan["profile"][name]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise RuntimeError(f"shape {shape} of {name} outside the profile {lo}..{hi}")
        self.shapes[name] = tuple(shape)
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = int(ptr)
        self.address_sets += 1
        return True

    def execute_async_v3(self, stream_handle):
        if self.strategy == self.engine.trt.ExecutionContextAllocationStrategy.USER_MANAGED and self.device_memory is None:
            raise RuntimeError("USER_MANAGED context without device memory")
        mem = self.memory
        feeds = {n: mem.view(self.addresses[n], dt, self.shapes[n]) for n, dt in self.engine.inputs}
        outs = self.engine.session().run(None, feeds)
        for (name, _), value in zip(self.engine.outputs, outs):
            mem.htod(self.addresses[name], value)
        self.enqueues += 1
        return True
