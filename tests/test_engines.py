"""TensorRT engines and GPU providers, against a recording stand-in (tests/fakes/fake_tensorrt.py).

TensorRT cannot be installed in this workplace, so these tests check what dmc asks TensorRT and
Polygraphy to do (network flags, precision flags, profile shapes), how it keys and verifies engines,
and how it parses the inspector's JSON. The ``gpu`` tests run only where a CUDA device and TensorRT exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from dmc.artifact.manifest import MANIFEST, sha256_path
from dmc.engines import keys, precision
from dmc.engines.builder import BuildOptions, build_engines
from dmc.errors import DmcError
from tests.fakes.fake_tensorrt import make_fake

FIXTURES = Path(__file__).parent / "fixtures"
KEY = keys.EngineKey("8.7", "10.3.0", "Orin (fake)")


def _tiny_qdq_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (4, 1, 3, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
             numpy_helper.from_array(np.array(0.05, np.float32), "a_s"), numpy_helper.from_array(np.array(0, np.int8), "a_z"),
             numpy_helper.from_array(rng.standard_normal((1, 4, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("QuantizeLinear", ["sample", "a_s", "a_z"], ["sq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["sq", "a_s", "a_z"], ["sdq"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wdq"], axis=0, name="dq_w"),
             helper.make_node("Conv", ["sdq", "wdq"], ["h"], pads=[1] * 4, name="/conv_in/Conv"),
             helper.make_node("Conv", ["h", "w2"], ["y"], pads=[1] * 4, name="/conv_out/Conv"),  # float on purpose
             helper.make_node("Mul", ["y", "timestep_b"], ["prediction"], name="mul"),
             helper.make_node("Unsqueeze", ["timestep", "axes"], ["timestep_b"], name="unsq")]
    inits.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"))
    graph = helper.make_graph(nodes, "tiny_qdq",
                              [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 1, 16, 16]),
                               helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["batch"])],
                              [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["batch", 1, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _rewrite_files(root: Path, data: dict) -> None:
    data["files"] = {str(p.relative_to(root)): sha256_path(p) for p in sorted(root.rglob("*"))
                     if p.is_file() and p.name != MANIFEST and keys.ENGINES_DIR not in p.relative_to(root).parts}
    (root / MANIFEST).write_text(json.dumps(data, indent=2))


@pytest.fixture
def fp32_artifact(demo_artifact, tmp_path):
    out = tmp_path / "demo.dmc"
    shutil.copytree(demo_artifact, out)
    return out


@pytest.fixture
def int8_artifact(demo_artifact, tmp_path):
    """The demo artifact with one extra Q/DQ (trt profile) variant, ``tiny``."""
    out = tmp_path / "int8.dmc"
    shutil.copytree(demo_artifact, out)
    onnx.save(_tiny_qdq_model(), out / "graphs" / "tiny.onnx")
    data = json.loads((out / MANIFEST).read_text())
    data["graphs"]["tiny"] = {"file": "graphs/tiny.onnx", "computes": "tiny Q/DQ conv", "precision": "int8",
                              "inputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 1, 16, 16]},
                                         {"name": "timestep", "dtype": "float32", "shape": ["batch"]}],
                              "outputs": [{"name": "prediction", "dtype": "float32", "shape": ["batch", 1, 16, 16]}]}
    data["precision"], data["target"] = "int8", "trt"
    _rewrite_files(out, data)
    return out


def _build(artifact, version="10.3.0", key=KEY, **opts):
    trt, loaders, record = make_fake(version)
    data = build_engines(artifact, BuildOptions(**opts), backend=(trt, loaders),
                         key=keys.EngineKey(key.compute_capability, version, key.device_name))
    return data, record


def test_qdq_graphs_build_strongly_typed_without_precision_flags(int8_artifact):
    data, record = _build(int8_artifact, images=3)
    nets = {Path(n["path"]).stem: n for n in record.networks}
    assert set(nets) == {"full", "tiny"}
    assert all(n["strongly_typed"] for n in nets.values())
    assert [f.name for f in nets["tiny"]["creation_flags"]] == ["STRONGLY_TYPED"]
    for cfg in record.configs:
        assert "fp16" not in cfg and "int8" not in cfg  # strong typing: precisions come from the graph
        assert cfg["profiling_verbosity"].name == "DETAILED"
    # guidance 2 -> batch 2 x images; min is one image
    prof = dict(zip([Path(n["path"]).stem for n in record.networks], [c["profiles"][0] for c in record.configs]))
    assert prof["tiny"]["sample"] == ((2, 1, 16, 16), (6, 1, 16, 16), (6, 1, 16, 16))
    assert prof["tiny"]["timestep"] == ((2,), (6,), (6,))
    assert data["engines"]["tiny"]["precision"]["int8"] == 1 == data["engines"]["tiny"]["precision"]["intended_int8"]
    folder = int8_artifact / "engines" / "sm87-trt10.3.0"
    assert (folder / "tiny.plan").is_file() and (folder / "tiny.layers.json").is_file()
    assert set(data["files"]) >= {"full.plan", "tiny.plan", "full.layers.json", "tiny.layers.json"}


def test_fp16_flag_only_when_asked_and_weak_typing_on_10x(int8_artifact):
    _, record = _build(int8_artifact, fp16=True, workspace_mb=512, builder_optimization_level=5)
    by = {Path(n["path"]).stem: (n, c) for n, c in zip(record.networks, record.configs)}
    net, cfg = by["tiny"]
    assert not net["strongly_typed"] and cfg["fp16"] is True and cfg["int8"] is True  # Q/DQ needs INT8 when weak
    net, cfg = by["full"]
    assert cfg["fp16"] is True and "int8" not in cfg
    assert cfg["memory_pool_limits"] == {next(iter(cfg["memory_pool_limits"])): 512 << 20}
    assert next(iter(cfg["memory_pool_limits"])).name == "WORKSPACE"
    assert cfg["builder_optimization_level"] == 5


def test_trt11_refuses_fp16_with_the_reason_and_builds_strongly_typed(int8_artifact):
    with pytest.raises(DmcError, match="removed BuilderFlag.FP16"):
        _build(int8_artifact, version="11.4.0", fp16=True)
    assert not (int8_artifact / "engines" / "sm87-trt11.4.0").exists()
    data, record = _build(int8_artifact, version="11.4.0")
    assert all(n["strongly_typed"] for n in record.networks)
    assert data["engines"]["tiny"]["precision"]["int8"] == 1  # parsed from the 11.x JSON ("I/O Tensors")


def test_too_old_tensorrt_is_refused(int8_artifact):
    with pytest.raises(DmcError, match="too old"):
        _build(int8_artifact, version="8.6.1")


def test_int8_fallback_warns_and_require_int8_fails_writing_nothing(int8_artifact):
    trt, loaders, record = make_fake("10.3.0")
    record.float_layers.add("/conv_in/Conv")
    with pytest.warns(UserWarning, match="tiny: only 0 of 1 INT8 layers run INT8.*/conv_in/Conv: fp32"):
        data = build_engines(int8_artifact, BuildOptions(), backend=(trt, loaders), key=KEY)
    assert data["engines"]["tiny"]["precision"]["fell_back"] == {"/conv_in/Conv": "fp32"}
    shutil.rmtree(int8_artifact / "engines")
    with pytest.warns(UserWarning), pytest.raises(DmcError, match="--require-int8: tiny: only 0 of 1"):
        build_engines(int8_artifact, BuildOptions(require_int8=True), backend=(trt, loaders), key=KEY)
    assert list((int8_artifact / "engines").iterdir()) == []  # nothing half-written


def test_require_int8_on_fp32_artifact_and_build_failure_are_one_line_errors(fp32_artifact):
    with pytest.raises(DmcError, match="no INT8 graphs"):
        _build(fp32_artifact, require_int8=True)
    trt, loaders, record = make_fake("10.3.0")
    record.fail_build = "out of memory while building"
    with pytest.raises(DmcError, match="could not build full: out of memory.*--workspace"):
        build_engines(fp32_artifact, BuildOptions(), backend=(trt, loaders), key=KEY)


def test_engine_keys_wrong_gpu_or_trt_version_name_the_rebuild_command(fp32_artifact):
    _build(fp32_artifact)
    folder, data = keys.find_engines(fp32_artifact, KEY)
    assert folder.name == "sm87-trt10.3.0" and data["key"]["compute_capability"] == "8.7"
    for other in (keys.EngineKey("8.6", "10.3.0"), keys.EngineKey("8.7", "10.8.0")):
        with pytest.raises(DmcError) as e:
            keys.find_engines(fp32_artifact, other)
        msg = str(e.value)
        assert "\n" not in msg and "compute capability 8.7, TensorRT 10.3.0" in msg
        assert f"dmc build-engine {fp32_artifact}" in msg
    # a modified engine or a changed artifact is caught too
    (folder / "full.plan").write_bytes(b"corrupt")
    with pytest.raises(DmcError, match="full.plan is missing or modified; rebuild"):
        keys.find_engines(fp32_artifact, KEY)


def test_artifact_manifest_and_checksums_stay_unchanged(fp32_artifact):
    from dmc.artifact import read_manifest

    before = (fp32_artifact / MANIFEST).read_bytes()
    _build(fp32_artifact)
    assert (fp32_artifact / MANIFEST).read_bytes() == before
    read_manifest(fp32_artifact, verify=True)  # the artifact still verifies with engines/ next to it


def test_inspector_json_10x_fixture():
    text = (FIXTURES / "trt10_engine_info.json").read_text()
    layers = precision.parse_layers(text)
    assert [la["precision"] for la in layers] == ["int8", "fp16", "fp32", "fp32"]
    assert layers[0]["onnx_nodes"] == ["/conv_in/input_quantizer/DequantizeLinear", "/conv_in/Conv"]
    assert layers[2]["onnx_nodes"] == ["/time_embedding/linear_1/MatMul"]  # no metadata: from the name
    assert precision.io_tensor_names(text) == ["sample", "timestep", "class_labels", "prediction"]
    rep = precision.precision_report(layers, ["/conv_in/Conv", "/down/resnets.0/conv1/Conv", "/up/missing/Conv"])
    assert rep["int8"] == 1 and rep["fell_back"] == {"/down/resnets.0/conv1/Conv": "fp16"}
    assert rep["unmatched"] == ["/up/missing/Conv"]
    line = precision.report_problem("full", rep)
    assert line.startswith("full: only 1 of 3 INT8 layers run INT8") and "1 not found" in line


def test_inspector_json_11x_fixture_and_names_only_layers():
    text = (FIXTURES / "trt11_engine_info.json").read_text()
    layers = precision.parse_layers(text)
    assert layers[0]["precision"] == "int8" and "/mid/attn/to_q/MatMul" in layers[0]["onnx_nodes"]
    assert layers[1] == {"name": "/conv_out/Conv", "type": "", "precision": "unknown", "onnx_nodes": ["/conv_out/Conv"]}
    assert precision.io_tensor_names(text) == ["sample", "prediction"]


def test_intended_int8_layers_skip_float_and_weight_only_layers():
    assert precision.intended_int8_layers(_tiny_qdq_model()) == ["/conv_in/Conv"]


def test_cli_build_engine_without_tensorrt_is_one_line(run_cli, fp32_artifact):
    pytest.importorskip  # noqa: B018
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    code, out, err = run_cli("build-engine", fp32_artifact)
    assert code != 0 and err.strip().startswith("dmc: error: TensorRT is not installed") and len(err.strip().splitlines()) == 1


def test_inspect_shows_engine_precision(run_cli, int8_artifact):
    _build(int8_artifact)
    code, out, err = run_cli("inspect", int8_artifact)
    assert code == 0, err
    assert "engine     sm87-trt10.3.0 tiny" in out and "int8 1/1 intended layers" in out


# --- ONNX Runtime GPU providers -------------------------------------------------------------

def test_tensorrt_ep_options_int8_caches_next_to_artifact_fp16_only_when_asked(tmp_path):
    from dmc.runtimes.ort_providers import cache_dir, provider_list

    art = tmp_path / "a.dmc"
    plist = provider_list(["tensorrt"], art, int8=True)
    name, opts = plist[0]
    assert name == "TensorrtExecutionProvider" and plist[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert opts["trt_int8_enable"] == "True" and "trt_fp16_enable" not in opts
    assert opts["trt_engine_cache_enable"] == "True"
    assert Path(opts["trt_engine_cache_path"]).parent == cache_dir(art) == tmp_path / "a.dmc.ortcache"
    assert Path(opts["trt_timing_cache_path"]).parent == cache_dir(art)
    _, opts = provider_list(["tensorrt"], art, int8=False, fp16=True)[0]
    assert opts["trt_fp16_enable"] == "True" and "trt_int8_enable" not in opts
    assert provider_list(["cuda", "cpu"], art, int8=False) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(DmcError, match="unknown provider 'tpu'"):
        provider_list(["tpu"], art, int8=False)


def test_fallback_detected_per_graph():
    from types import SimpleNamespace

    from dmc.runtimes.ort_providers import fallbacks

    sessions = {"full": SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]),
                "shallow": SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider"])}
    assert fallbacks(["CUDAExecutionProvider", "CPUExecutionProvider"], sessions) == {"shallow": ["CUDAExecutionProvider"]}


def test_run_with_unavailable_provider_is_a_clear_one_line_error(run_cli, demo_artifact, tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA EP present here")
    code, out, err = run_cli("run", demo_artifact, "--n", "1", "--provider", "cuda", "--out", tmp_path / "x.png")
    assert code != 0 and "CUDAExecutionProvider" in err and "not available" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


# --- the TensorRT executor (stand-in engines run their ONNX graph with ORT on a fake device memory) ----

def test_tensorrt_executor_shares_activation_memory_and_matches_onnxruntime(fp32_artifact):
    from dmc.artifact import read_manifest
    from dmc.runtimes import load
    from dmc.runtimes.executor import Executor
    from dmc.runtimes.pipeline import Pipeline
    from dmc.runtimes.tensorrt_executor import DeviceTensor, TensorRtExecutor
    from tests.fakes.fake_tensorrt import FakeDeviceMemory

    _build(fp32_artifact, images=2)
    trt, loaders, record = make_fake("10.3.0")
    mem = FakeDeviceMemory()
    manifest = read_manifest(fp32_artifact)
    ex = TensorRtExecutor(manifest, backend=(trt, loaders), cuda=mem, key=KEY)
    assert isinstance(ex, Executor)
    for ctx in record.contexts:
        ctx.memory = mem
        assert ctx.strategy.name == "USER_MANAGED" and ctx.device_memory == ex.shared_memory
    assert len({c.device_memory for c in record.contexts}) == 1
    got = Pipeline.from_manifest(manifest, ex)(n=2, seed=3, batch_size=ex.images_per_call)
    want = load(fp32_artifact)(n=2, seed=3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    out = ex.run("full", {n: np.zeros((4,) + tuple(s["shape"][1:]), np.float32 if s["dtype"] == "float32" else np.int64)
                          for s in manifest.graphs["full"]["inputs"] for n in [s["name"]]})
    assert isinstance(out[0], DeviceTensor)
    sets = record.contexts[0].address_sets
    ex.run("full", {s["name"]: np.zeros((4,) + tuple(s["shape"][1:]), np.float32 if s["dtype"] == "float32" else np.int64)
                    for s in manifest.graphs["full"]["inputs"]})
    assert record.contexts[0].address_sets == sets  # same buffers: no re-binding


def test_tensorrt_executor_refuses_engines_of_another_gpu(fp32_artifact):
    from dmc.artifact import read_manifest
    from dmc.runtimes.tensorrt_executor import TensorRtExecutor
    from tests.fakes.fake_tensorrt import FakeDeviceMemory

    _build(fp32_artifact)
    trt, loaders, _ = make_fake("10.3.0")
    with pytest.raises(DmcError, match="rebuild with `dmc build-engine"):
        TensorRtExecutor(read_manifest(fp32_artifact), backend=(trt, loaders), cuda=FakeDeviceMemory(),
                         key=keys.EngineKey("9.0", "10.3.0"))


@pytest.mark.gpu
def test_real_tensorrt_build_and_run(fp32_artifact):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (not installable in this workplace)")
    from dmc.runtimes import load

    data = build_engines(fp32_artifact, BuildOptions(images=1))
    assert data["engines"]
    images = load(fp32_artifact, backend="tensorrt")(n=1, seed=0, batch_size=1)
    ref = load(fp32_artifact)(n=1, seed=0)
    assert np.abs(images.astype(int) - ref.astype(int)).max() <= 2


def test_cli_build_engine_with_the_stand_in_uses_the_timing_cache_and_reports_precision(run_cli, int8_artifact,
                                                                                         monkeypatch, tmp_path):
    from dmc.engines import trt_api

    trt, loaders, record = make_fake("10.3.0")
    monkeypatch.setattr(trt_api, "import_tensorrt", lambda: (trt, loaders))
    monkeypatch.setattr(trt_api, "compute_capability", lambda device=0: ("8.7", "Orin (fake)"))
    cache = tmp_path / "timing.cache"
    code, out, err = run_cli("build-engine", int8_artifact, "--timing-cache", cache, "--workspace", 256,
                             "--require-int8", "--images", 1)
    assert code == 0, err
    assert "built 2 engine(s) for sm87-trt10.3.0" in out and "tiny" in out
    assert cache.read_bytes() == b"tt"  # both variants' builds loaded and updated the user's cache
    assert all(cfg["load_timing_cache"] == str(cache) for cfg in record.configs)
    assert (int8_artifact / "engines" / "sm87-trt10.3.0" / "tiny.plan").is_file()
    assert not (int8_artifact / "engines" / "sm87-trt10.3.0" / "timing.cache").exists()
