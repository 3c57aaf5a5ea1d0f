"""The executor contract: every backend in the table conforms, runs the same artifact, and agrees."""

import importlib.util

import numpy as np
import pytest

from dmc.errors import DmcError
from dmc.runtimes import BACKENDS, Executor, load
from dmc.runtimes.executor import backend_class
from dmc.runtimes.pipeline import Pipeline
from dmc.sampling import Recipe
from dmc.sampling.calls import SamplerCall

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None


def available_backends():
    """Every backend installed here; TensorRT's case also needs a GPU (the ``gpu`` marker skips it without)."""
    have_trt = importlib.util.find_spec("tensorrt") is not None
    return [pytest.param(b, marks=pytest.mark.gpu) if b == "tensorrt" else b for b in BACKENDS
            if (b != "openvino" or HAVE_OPENVINO) and (b != "tensorrt" or have_trt)]


class _Opaque:
    """A stand-in for a device buffer: only its own executor can read it."""

    def __init__(self, array):
        self.array = array


class FakeDeviceExecutor:
    """Graph "write" returns its cache as an opaque native value; graph "read" needs it back untouched."""

    name = "fake"
    providers = ["fake-device"]

    def __init__(self):
        self.host_reads = 0

    def input_names(self, graph):
        return ["sample", "timestep"] + (["cache"] if graph == "read" else [])

    def output_names(self, graph):
        return ["prediction"] + (["cache"] if graph == "write" else [])

    def run(self, graph, feeds):
        x = feeds["sample"]
        if graph == "write":
            return [_Opaque(0.1 * x), _Opaque(x + 1.0)]
        assert isinstance(feeds["cache"], _Opaque), "the pipeline must pass native values back untouched"
        return [_Opaque(0.1 * x + 0.0 * feeds["cache"].array)]

    def to_numpy(self, value):
        self.host_reads += 1
        return value.array


def _call(graph):
    return SamplerCall(timestep=1.0, d_x=1.0, d_out=-1.0, e_x=1.0, e_out=0.0, a=0.0, b=0.0, c=[1.0], graph=graph)


def test_pipeline_keeps_native_buffers_and_reads_only_predictions():
    ex = FakeDeviceExecutor()
    assert isinstance(ex, Executor)
    calls = [_call("write"), _call("read"), _call("read")]
    pipe = Pipeline(Recipe(steps=3), calls, (1, 2, 2), {"kind": "none"}, ex)
    seen = []
    x = pipe.sample(2, seed=0, on_call=lambda k, feeds, raw, xn: seen.append(type(feeds.get("cache"))))
    assert ex.host_reads == 3 + 2  # one prediction per call, plus the hook's host copy of the cache on 2 calls
    assert seen == [type(None), np.ndarray, np.ndarray]  # hooks see host arrays
    assert x.shape == (2, 1, 2, 2) and np.isfinite(x).all()


def test_unknown_backend_is_a_clean_error(demo_artifact, run_cli):
    with pytest.raises(DmcError, match="unknown backend 'tpu'"):
        load(demo_artifact, backend="tpu")
    code, _, err = run_cli("run", demo_artifact, "--backend", "tpu")
    assert code != 0 and "tpu" in err and "Traceback" not in err


@pytest.mark.parametrize("backend", available_backends())
def test_backend_conforms_and_matches_onnxruntime_fp32(demo_artifact, backend, tmp_path):
    ref = load(demo_artifact, providers=["CPUExecutionProvider"], threads=1)
    if backend == "tensorrt":  # engines are built on the machine that runs them, into a copy of the artifact
        import shutil

        from dmc.engines.builder import BuildOptions, build_engines

        demo_artifact = shutil.copytree(demo_artifact, tmp_path / "demo.dmc")
        build_engines(demo_artifact, BuildOptions(images=3))
    pipe = load(demo_artifact, backend=backend, threads=1)
    assert isinstance(pipe.executor, Executor) and isinstance(pipe.executor, backend_class(backend))
    assert pipe.executor.providers and pipe.executor.output_names("full")[0] == "prediction"
    assert set(pipe.executor.input_names("full")) == set(ref.executor.input_names("full"))
    a, b = ref.sample(3, seed=1), pipe.sample(3, seed=1)
    # measured 2e-6 (openvino, f32 hint); TensorRT's FP32 layers may run TF32 (10-bit mantissa) on Ampere and later
    assert np.abs(a - b).max() < (2e-2 if backend == "tensorrt" else 1e-4), np.abs(a - b).max()


def test_openvino_missing_is_a_clean_error(demo_artifact, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("no openvino")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(DmcError, match="pip install openvino"):
        load(demo_artifact, backend="openvino")


def test_onnxruntime_io_binding_returns_ortvalues_and_same_samples(demo_artifact):
    import onnxruntime as ort

    plain = load(demo_artifact, threads=1)
    bound = load(demo_artifact, threads=1)
    bound.executor.io_binding = True  # the device path (CUDA/TensorRT providers), exercised on the CPU
    feeds = {"sample": np.zeros((2, 1, 16, 16), np.float32), "timestep": np.full(2, 500.0, np.float32),
             "class_labels": np.array([10, 3])}
    out = bound.executor.run("full", feeds)
    assert isinstance(out[0], ort.OrtValue)
    np.testing.assert_array_equal(bound.executor.to_numpy(out[0]), plain.executor.run("full", feeds)[0])
    np.testing.assert_array_equal(plain.sample(2, seed=4), bound.sample(2, seed=4))


def test_torch_executor_conforms():
    torch = pytest.importorskip("torch")
    from dmc.compress.torch_executor import TorchExecutor

    ex = TorchExecutor({"g": torch.nn.Identity()}, {"g": ["sample"]}, {"g": ["prediction"]})
    assert isinstance(ex, Executor) and ex.input_names("g") == ["sample"]
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_array_equal(ex.to_numpy(ex.run("g", {"sample": x, "unused": x})[0]), x)
