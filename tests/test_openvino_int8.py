"""The ov-cpu Q/DQ profile: private pairs, and INT8 graphs whose results OpenVINO reproduces."""

import importlib.util
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dmc.quantize import QuantizeConfig, qdq
from dmc.quantize.profiles import check_profile, get_profile

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino is not installed (pip install dmc[openvino])")


def _residual_model(bias: bool = True):
    """conv1 -> h; conv2(h) + h: h feeds a quantized layer and a float residual add."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1.weight"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "c2.weight")]
    b1, b2 = [], []
    if bias:
        inits += [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), f"c{i}.bias") for i in (1, 2)]
        b1, b2 = ["c1.bias"], ["c2.bias"]
    nodes = [helper.make_node("Conv", ["sample", "c1.weight", *b1], ["h"], pads=[1] * 4, name="c1"),
             helper.make_node("Conv", ["h", "c2.weight", *b2], ["h2"], pads=[1] * 4, name="c2"),
             helper.make_node("Add", ["h", "h2"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantize(profile: str, bias: bool = True):
    return _quantize_graph(_residual_model(bias), profile, ("Conv",), (4, 3, 8, 8), seed=1)


def _quantize_graph(model, profile: str, op_types: tuple, sample_shape: tuple, seed: int, **cfg_kw):
    """``model`` through dmc's Q/DQ steps (no islands), calibrated on one random batch."""
    cfg = QuantizeConfig(op_types=op_types, keep_float=(), profile=profile, **cfg_kw)
    prof = get_profile(profile)
    prep = qdq.prepare_graph(model, cfg, prof)
    rng = np.random.default_rng(seed)
    batches = [{"sample": rng.standard_normal(sample_shape).astype(np.float32)}]
    params = qdq.activation_params(qdq.record_stats(prep, batches, 0), cfg, prof)
    qm = qdq.build_qdq(prep, params, prof, cfg.op_types)
    if prof.private_dq:
        qdq.privatize_dq(qm, set(prep.layers))
    return qm, prep, params, prof, batches


def _run_ort(model, feeds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _openvino_vs_ort_snr(model, feeds) -> float:
    """SNR (dB) of OpenVINO's output against ONNX Runtime's for one call of a Q/DQ graph."""
    from dmc.runtimes.openvino_executor import _ov

    core = _ov().Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    got, want = compiled(feeds)[0], _run_ort(model, feeds)
    err = np.mean((want - got) ** 2)
    return float("inf") if err == 0 else float(10 * np.log10(np.mean(want ** 2) / err))


def test_ov_profile_keeps_float_consumers_float():
    shared, *_ = _quantize("trt")
    problems = check_profile(shared, "ov-cpu")
    assert any("also feeds Add" in p for p in problems), problems  # ORT's quantizer shares the DQ
    qm, prep, params, prof, batches = _quantize("ov-cpu")
    assert check_profile(qm, "ov-cpu") == [] and qdq.verify_scales(qm, prep, params, prof) == []
    add = next(n for n in qm.graph.node if n.op_type == "Add")
    assert "h" in add.input  # the residual reads the float tensor, not its dequantized copy
    onnx.checker.check_model(qm)
    no_bias, *_ = _quantize("ov-cpu", bias=False)  # OpenVINO's exception: bias-free producers stay shared
    assert "h" not in next(n for n in no_bias.graph.node if n.op_type == "Add").input
    assert check_profile(no_bias, "ov-cpu") == []
    fp, q = _run_ort(_residual_model(), batches[0]), _run_ort(qm, batches[0])
    assert np.sqrt(np.mean((q - fp) ** 2)) / np.sqrt(np.mean(fp ** 2)) < 0.05


@needs_openvino
@pytest.mark.parametrize("bias", [True, False])
def test_openvino_reproduces_ov_profile_graph_per_call(bias):
    qm, *_, batches = _quantize("ov-cpu", bias)
    snr = _openvino_vs_ort_snr(qm, batches[0])
    assert snr > 40, snr  # measured 137 dB (bias) / 137 dB (no bias); all-private without bias: 0.9 dB


@pytest.fixture(scope="module")
def ov_int8_artifact(tmp_path_factory):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    out = tmp_path_factory.mktemp("ov-int8") / "demo-int8-ov.dmc"
    return compile_model("demo", out, CompileOptions(recipe=Recipe(steps=10, guidance=2.0), verify_images=2,
                                                     passes=[QuantizeConfig(profile="ov-cpu", num_samples=32)]))


@pytest.mark.slow
@needs_openvino
def test_openvino_runs_ov_int8_artifact_like_onnxruntime(ov_int8_artifact, run_cli, tmp_path):
    from dmc.runtimes import load

    ref = load(ov_int8_artifact, backend="onnxruntime", threads=1).sample(4, seed=0)
    pipe = load(ov_int8_artifact, threads=1)  # unnamed: the backend the artifact was compiled for
    assert pipe.manifest.data["backend"] == "openvino" and pipe.executor.name == "openvino"
    assert pipe.manifest.data["verification"]["backend"] == "openvino"  # verified where it will run
    got = pipe.sample(4, seed=0)
    psnr = 10 * np.log10(4.0 / np.mean((ref - got) ** 2))  # samples in [-1, 1]: peak-to-peak 2
    # Floor 40 dB; measured 49.9 dB (8 images, DDIM 20). The ort-cpu graphs give 17.9 dB here.
    assert psnr > 40, psnr
    code, out, err = run_cli("run", ov_int8_artifact, "--n", 2, "--out", tmp_path / "g.png")
    assert code == 0 and (tmp_path / "g.png").stat().st_size > 0, err


def _attention_model():
    """One attention head: q, k, v projections, softmax(q k^T / 4) v, output projection, residual."""
    rng = np.random.default_rng(5)
    w = {f"{p}.weight": numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) * 0.3, f"{p}.weight")
         for p in ("to_q", "to_k", "to_v", "to_out")}
    nodes = [helper.make_node("MatMul", ["sample", f"{p}.weight"], [p], name=p) for p in ("to_q", "to_k", "to_v")]
    nodes += [helper.make_node("Transpose", ["to_k"], ["kt"], perm=[0, 2, 1], name="kt"),
              helper.make_node("MatMul", ["to_q", "kt"], ["scores"], name="scores"),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="softmax"),
              helper.make_node("MatMul", ["probs", "to_v"], ["mixed"], name="mix"),
              helper.make_node("MatMul", ["mixed", "to_out.weight"], ["out"], name="to_out"),
              helper.make_node("Add", ["out", "sample"], ["y"], name="residual")]
    inits = [*w.values(), numpy_helper.from_array(np.array(0.25, np.float32), "scale")]
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["n", 12, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 12, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantize_attention(profile: str, **kw):
    return _quantize_graph(_attention_model(), profile, ("MatMul",), (4, 12, 16), seed=2, **kw)


def _dequantized_inputs(model, node_name):
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return [i in producers and producers[i].op_type == "DequantizeLinear" for i in node.input]


def test_attention_matmuls_follow_the_profile_and_stay_accurate():
    qm, prep, params, prof, batches = _quantize_attention("ov-cpu")  # ov-cpu quantizes attention by default
    assert sorted(la for la in prep.layers.values() if ".matmul" in la) == ["matmul.matmul0", "matmul.matmul1"]
    assert _dequantized_inputs(qm, "scores") == [True, True] and _dequantized_inputs(qm, "mix") == [True, True]
    assert check_profile(qm, "ov-cpu") == [] and qdq.verify_scales(qm, prep, params, prof) == []
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "scaled" for n in qm.graph.node)  # softmax float
    fp, q = _run_ort(_attention_model(), batches[0]), _run_ort(qm, batches[0])
    assert np.sqrt(np.mean((q - fp) ** 2)) / np.sqrt(np.mean(fp ** 2)) < 0.05
    # ONNX Runtime: attention stays float unless asked (P V's inputs are the softmax and v, never quantized)
    ort_default, ort_prep, *_ = _quantize_attention("ort-cpu")
    assert not any(".matmul" in la for la in ort_prep.layers.values())
    assert _dequantized_inputs(ort_default, "mix") == [False, True]  # v: the to_v layer's quantized output
    asked, asked_prep, *_ = _quantize_attention("ort-cpu", attention_matmuls=True)
    assert sum(".matmul" in la for la in asked_prep.layers.values()) == 2
    assert _dequantized_inputs(asked, "mix") == [True, True] and check_profile(asked, "ort-cpu") == []


def test_profile_checker_flags_a_half_quantized_attention_matmul():
    qm, *_ = _quantize_attention("ov-cpu")
    mix = next(n for n in qm.graph.node if n.name == "mix")
    mix.input[0] = "probs"  # the softmax output read in float, P V's other input still dequantized
    problems = check_profile(qm, "ov-cpu")
    assert any("one quantized input" in p for p in problems), problems


@needs_openvino
def test_openvino_reproduces_int8_attention_per_call():
    qm, *_, batches = _quantize_attention("ov-cpu")
    snr = _openvino_vs_ort_snr(qm, batches[0])
    assert snr > 40, snr  # measured: identical (inf)


def test_unnamed_backend_is_onnxruntime_unless_the_artifact_was_compiled_for_an_installed_one(monkeypatch):
    import importlib.util
    from types import SimpleNamespace

    from dmc.runtimes.executor import default_backend

    def manifest(**data):
        return SimpleNamespace(data=data)

    assert default_backend(manifest()) == "onnxruntime"  # FP32 and older artifacts
    assert default_backend(manifest(backend="onnxruntime")) == "onnxruntime"
    assert default_backend(manifest(backend="tensorrt")) == "onnxruntime"  # engines are built first, never implicit
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert default_backend(manifest(backend="openvino")) == "onnxruntime"  # not installed: ONNX Runtime runs it
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "openvino" else real(name, *a))
    assert default_backend(manifest(backend="openvino")) == "openvino"


@pytest.mark.slow
@needs_openvino
def test_int8_cache_ov_profile_compiles_verifies_on_openvino_and_follows_the_schedule(tmp_path):
    # The cache correction probes a split conv's partial output: ORT's Conv+Add fusion used to drop it
    # ("Failed to find node output ... conv2d_5.split0") for graphs without output Q/DQ.
    from dmc.cache import CacheConfig
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.compress.plan import complete_plan
    from dmc.runtimes import load
    from dmc.sampling import Recipe

    out = compile_model("demo", tmp_path / "fast-ov.dmc", CompileOptions(
        recipe=Recipe(steps=10, guidance=2.0), verify_images=1,
        passes=complete_plan([CacheConfig(schedule="uniform", interval=3),
                              QuantizeConfig(profile="ov-cpu", num_samples=16)])))
    pipe = load(out, threads=1)
    m = pipe.manifest
    assert pipe.executor.name == "openvino" and m.data["verification"]["backend"] == "openvino"
    assert m.data["verification"]["psnr_db"] >= m.data["verification"]["floor_psnr_db"]
    assert {c.graph for c in m.calls} == set(m.graphs) and len(m.graphs) == 2  # full and shallow both run
    assert np.isfinite(pipe.sample(1, seed=0)).all()


@needs_openvino
def test_compare_backends_recommends_the_fastest_that_reproduces(ov_int8_artifact, run_cli, monkeypatch):
    """`dmc bench --compare-backends`: every installed CPU backend times the same artifact; one whose images
    leave the artifact's verification floor is never recommended, however fast."""
    from dmc.evaluate import backends

    code, out, err = run_cli("bench", ov_int8_artifact, "--compare-backends", "--repeats", "2", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["own_backend"] == "openvino" and set(r["backends"]) == {"openvino", "onnxruntime"}
    assert r["backends"]["openvino"]["psnr_vs_own_db"] == 100.0
    assert all(row["reproduces"] for row in r["backends"].values())  # the ov-cpu profile runs alike on both
    assert r["recommended"] == r["fastest"]

    real = backends._images
    monkeypatch.setattr(backends, "_images", lambda t, n, s: real(t, n, s) + (0.5 if t.info["backend"] == "onnxruntime" else 0))
    r = backends.compare_backends(str(ov_int8_artifact), repeats=1, warmup=0, threads=1)
    assert not r["backends"]["onnxruntime"]["reproduces"] and r["recommended"] == "openvino"


def _stream_model():
    """c1 -> h; c2(h) -> h2; r = h + h2; n = norm(r); c3(n) -> y: h, h2, r and n are the residual stream."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1.weight"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2, "c2.weight"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.2, "c3.weight")]
    inits += [numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"c{i}.bias")
              for i, c in ((1, 8), (2, 8), (3, 4))]
    nodes = [helper.make_node("Conv", ["sample", "c1.weight", "c1.bias"], ["h"], pads=[1] * 4, name="c1"),
             helper.make_node("Conv", ["h", "c2.weight", "c2.bias"], ["h2"], pads=[1] * 4, name="c2"),
             helper.make_node("Add", ["h", "h2"], ["r"], name="residual"),
             helper.make_node("InstanceNormalization", ["r", "in.scale", "in.bias"], ["n"], name="norm"),
             helper.make_node("Conv", ["n", "c3.weight", "c3.bias"], ["y"], pads=[1] * 4, name="c3")]
    inits += [numpy_helper.from_array(np.ones(8, np.float32), "in.scale"),
              numpy_helper.from_array(np.zeros(8, np.float32), "in.bias")]
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantize_stream(keep_float=()):
    from dmc.quantize.stream import quantize_stream

    cfg = QuantizeConfig(op_types=("Conv",), keep_float=keep_float, profile="ov-cpu", residual_stream=True)
    prof = get_profile("ov-cpu")
    prep = qdq.prepare_graph(_stream_model(), cfg, prof)
    batches = [{"sample": np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)}]
    params = qdq.activation_params(qdq.record_stats(prep, batches, 0), cfg, prof)
    qm = qdq.build_qdq(prep, params, prof, cfg.op_types)
    qdq.privatize_dq(qm, set(prep.layers))
    added = quantize_stream(qm, prep.stream, params)
    return qm, prep, params, prof, batches, added


def test_residual_stream_quantizes_conv_outputs_and_adds_with_one_shared_pair_each():
    qm, prep, params, prof, batches, added = _quantize_stream()
    assert sorted(prep.stream) == ["h", "h2", "n", "r"]  # y is the graph output: never quantized
    assert added == 2  # h and n already had a pair as conv inputs; h2 and r get their own
    producers = {o: n for n in qm.graph.node for o in n.output}
    for n in qm.graph.node:  # every reader of a stream tensor (but its quantizer) reads the shared DQ
        for t in n.input:
            if t in prep.stream:
                assert n.op_type == "QuantizeLinear", (n.name, t)
    add = next(n for n in qm.graph.node if n.op_type == "Add")
    assert all(producers[i].op_type == "DequantizeLinear" for i in add.input)
    assert check_profile(qm, "ov-cpu", residual_stream=True) == []
    assert qdq.verify_scales(qm, prep, params, prof) == []
    assert any("is not an input of a quantized layer" in p for p in check_profile(qm, "ov-cpu"))  # not asked for
    assert any("is not an input of a quantized layer" in p for p in check_profile(qm, "trt", residual_stream=True))
    onnx.checker.check_model(qm)
    fp, q = _run_ort(_stream_model(), batches[0]), _run_ort(qm, batches[0])
    assert np.sqrt(np.mean((q - fp) ** 2)) / np.sqrt(np.mean(fp ** 2)) < 0.05
    # a float island's output stays float: with c1 kept float, h is not in the stream
    island = _quantize_stream(keep_float=("first",))
    assert "h" not in island[1].stream and "r" in island[1].stream


def test_residual_stream_is_refused_where_the_profile_does_not_allow_it():
    from dmc.errors import DmcError

    with pytest.raises(DmcError, match="needs the ov-cpu profile"):
        QuantizeConfig(profile="ort-cpu", residual_stream=True)


@needs_openvino
def test_openvino_reproduces_residual_stream_graph_per_call():
    qm, *_, batches, _ = _quantize_stream()
    snr = _openvino_vs_ort_snr(qm, batches[0])
    assert snr > 40, snr


@pytest.mark.slow
@needs_openvino
def test_residual_stream_artifact_verifies_and_runs_on_openvino_like_onnxruntime(tmp_path):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.quantize import describe
    from dmc.runtimes import load
    from dmc.sampling import Recipe

    art = compile_model("demo", tmp_path / "stream.dmc", CompileOptions(
        recipe=Recipe(steps=10, guidance=2.0), verify_images=2,
        passes=[QuantizeConfig(profile="ov-cpu", num_samples=32, residual_stream=True)]))
    pipe = load(art, threads=1)
    record = next(p for p in pipe.manifest.data["passes"] if p["name"] == "quantize")
    stream = record["graphs"]["full"]["residual_stream"]
    assert stream["tensors"] > 20 and stream["pairs_added"] > 0 and record["config"]["residual_stream"] is True
    assert describe(art)["graphs"]["full"]["profile_problems"] == []
    assert pipe.manifest.data["verification"]["psnr_db"] >= 25  # its own floor, on OpenVINO
    ref = load(art, backend="onnxruntime", threads=1).sample(4, seed=0)
    psnr = 10 * np.log10(4.0 / np.mean((ref - pipe.sample(4, seed=0)) ** 2))
    assert psnr > 35, psnr
