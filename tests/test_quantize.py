"""INT8 pass (PTQ4DM / Q-Diffusion W8A8): quantizer math, calibration provenance, shortcut
splitting, profile checker, proved coverage and an end-to-end quality gate on the demo UNet.

One demo export is shared by the whole file (``demo_ctx``); compile_model reuses it through a
patched ``prepare``, so each artifact costs only its pass, write and verification.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dmc.errors import DmcError
from dmc.quantize import QuantizeConfig, check_profile, describe
from dmc.quantize import calibration, qdq
from dmc.quantize.coverage import coverage, requested, summary_line
from dmc.quantize.profiles import get_profile
from dmc.quantize.ranges import (
    ActivationStats,
    fake_quant,
    lp_error,
    params_from_range,
    quantize_weights,
    search_params,
    weight_scales,
)
from dmc.quantize.split import split_concat_convs
from dmc.sampling.recipe import Recipe

RECIPE = Recipe(steps=10, guidance=2.0)
SMALL = dict(num_samples=32)  # test-sized calibration



def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ quantizer math

def test_weight_scales_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[2] = 0.0  # a dead channel must not give a zero scale
    s = weight_scales(w, axis=0, qmax=127)
    want = np.abs(w).reshape(6, -1).max(axis=1) / 127
    assert s.shape == (6,) and s.dtype == np.float32
    np.testing.assert_allclose(s[[0, 1, 3, 4, 5]], want[[0, 1, 3, 4, 5]], rtol=1e-6)
    assert s[2] == 1.0
    # ConvTranspose: output channels on axis 1; reduce_range grid (7-bit) halves the levels
    wt = rng.standard_normal((3, 5, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(weight_scales(wt, 1, 64), np.abs(wt).max(axis=(0, 2, 3)) / 64, rtol=1e-6)
    q, scale = quantize_weights(w, 0, 64)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= 64
    # round trip: every weight within half a step of its channel's grid
    err = np.abs(q * scale[:, None, None, None] - w)
    assert np.all(err <= scale[:, None, None, None] / 2 + 1e-7)


def test_activation_round_trip_error_bound_and_exact_zero():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 5, 10000).astype(np.float32)
    for dtype, sym in (("uint8", False), ("int8", True)):
        p = params_from_range(x.min(), x.max(), dtype, sym)
        assert fake_quant(np.zeros(1, np.float32), p.scale, p.zero_point, dtype)[0] == 0.0  # 0 is exact
        err = np.abs(fake_quant(x, p.scale, p.zero_point, dtype) - x)
        assert err.max() <= p.scale / 2 * (1 + 1e-4), (dtype, err.max(), p.scale)
        if sym:
            assert p.zero_point == 0
    # one-sided data: the whole u8 grid goes to [0, max]
    p = params_from_range(0.5, 2.0, "uint8", False)
    assert p.zero_point == 0 and np.isclose(p.scale, 2.0 / 255)


@pytest.mark.parametrize("dtype,sym", [("uint8", False), ("int8", True)])
def test_lp_search_beats_minmax_on_heavy_tails(dtype, sym):
    rng = np.random.default_rng(2)
    x = rng.laplace(size=20000).astype(np.float32)  # heavy (exponential) tails
    mm = search_params(x, x.min(), x.max(), dtype, sym, method="minmax")
    mse = search_params(x, x.min(), x.max(), dtype, sym, method="mse")
    e_mm, e_mse = lp_error(x, mm, 2.4), lp_error(x, mse, 2.4)
    print(f"{dtype}: |x-Q(x)|^2.4 minmax {e_mm:.3g} vs search {e_mse:.3g} (range {mm.hi - mm.lo:.2f} -> {mse.hi - mse.lo:.2f})")
    # At 8 bits the p=2.4 norm charges clipped outliers heavily, so the optimum clips little: a few %.
    assert e_mse < 0.98 * e_mm
    assert mse.hi - mse.lo < mm.hi - mm.lo  # it clipped
    # Gaussian data is not made worse
    g = rng.standard_normal(20000).astype(np.float32)
    gm = search_params(g, g.min(), g.max(), dtype, sym, method="minmax")
    gs = search_params(g, g.min(), g.max(), dtype, sym, method="mse")
    assert lp_error(g, gs) <= lp_error(g, gm) * (1 + 1e-9)


def test_search_charges_rare_outliers_a_subsample_misses():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1_000_000).astype(np.float32)
    x[rng.choice(len(x), 20, replace=False)] = 40.0  # 2e-5 of the data
    st = ActivationStats(np.random.default_rng(0), cap=4096)
    for part in np.array_split(x, 10):
        st.update(part, share=0.1)
    with_tails = st.params("uint8", False, "mse")
    bulk_only = search_params(st.sample, st.min, st.max, "uint8", False, "mse")
    assert lp_error(x, with_tails) < 0.5 * lp_error(x, bulk_only)
    assert with_tails.hi >= 39.0


def test_activation_stats_keep_exact_extremes():
    st = ActivationStats(np.random.default_rng(0), cap=100)
    for i in range(10):
        st.update(np.arange(1000, dtype=np.float32) + 1000 * i, share=0.1)
    assert st.min == 0 and st.max == 9999 and st.count == 10000
    assert 90 <= len(st.sample) <= 110


# ------------------------------------------------------------------------------------------ split

def _concat_conv_model(ca=3, cb=5, cout=4, k=3, bias=True):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((cout, ca + cb, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [helper.make_node("Concat", ["a", "b"], ["cat"], axis=1, name="cat"),
             helper.make_node("Conv", ["cat", "W"] + (["B"] if bias else []), ["y"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["cat"], ["r"], name="relu")]  # concat has a second user
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", ca, 8, 8]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", cb, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W")] + ([numpy_helper.from_array(b, "B")] if bias else []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("bias", [True, False])
def test_shortcut_split_is_exact_in_fp(bias):
    model = _concat_conv_model(bias=bias)
    split, records = split_concat_convs(model)
    assert [r["channels"] for r in records] == [[3, 5]]
    ops = [n.op_type for n in split.graph.node]
    assert ops.count("Conv") == 2 and "Add" in ops and "Concat" in ops  # concat kept for the Relu
    assert sum(1 for n in split.graph.node if n.op_type == "Conv" and len(n.input) == 3) == (1 if bias else 0)
    rng = np.random.default_rng(4)
    feeds = {"a": 50 * rng.standard_normal((2, 3, 8, 8)).astype(np.float32),  # bimodal ranges
             "b": 0.1 * rng.standard_normal((2, 5, 8, 8)).astype(np.float32)}
    want = _session(model).run(None, feeds)
    got = _session(split).run(None, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got[1], want[1])


# ------------------------------------------------------------------------------------------ demo context

@pytest.fixture(scope="module")
def demo_ctx():
    from dmc.compress.pipeline import CompileOptions, prepare

    return prepare("demo", CompileOptions(recipe=RECIPE))


def test_split_is_exact_on_the_demo_unet(demo_ctx):
    model = demo_ctx.graphs["full"].onnx
    split, records = split_concat_convs(model)
    assert len(records) >= 4  # every decoder ResBlock's shortcut conv
    rng = np.random.default_rng(5)
    feeds = {"sample": rng.standard_normal((2, 1, 16, 16)).astype(np.float32),
             "timestep": np.array([900.0, 10.0], np.float32), "class_labels": np.array([3, 10])}
    np.testing.assert_allclose(_session(split).run(None, feeds)[0], _session(model).run(None, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_calibration_feeds_native_timesteps_not_loop_indices(demo_ctx):
    ctx = demo_ctx
    taus = [c.timestep for c in ctx.calls]
    assert max(taus) > len(taus)  # native timesteps, so a loop index could never pass below
    built = {}
    for method in ("ndtc", "uniform", "single-step"):
        cset = built[method] = calibration.build(ctx, QuantizeConfig(calibration=method, **SMALL))
        assert cset.batches
        for k, feeds in cset.batches.items():
            np.testing.assert_array_equal(feeds["timestep"], np.float32(taus[k]))  # tau_k of call k
            n = len(feeds["sample"]) // 2  # guided: [uncond; cond] halves of the same states
            np.testing.assert_array_equal(feeds["sample"][:n], feeds["sample"][n:])
            assert np.all(feeds["class_labels"][:n] == 10) and np.all(feeds["class_labels"][n:] < 10)
        assert set(cset.timesteps()) <= set(taus)
        assert sum(cset.states.values()) >= 32
    assert list(built["single-step"].batches) == [len(taus) - 1]
    assert list(built["uniform"].batches) == list(range(len(taus)))
    # NDTC leans to the clean end (small tau) but covers the trajectory
    k, _ = calibration.ndtc_call_indices(np.array(taus), 256, 0.4, 0.4, 1000, np.random.default_rng(0))
    per_call = np.bincount(k, minlength=len(taus))
    assert np.mean(np.array(taus)[k]) < 500 and (per_call > 0).sum() >= len(taus) - 2
    # reproducible
    again = calibration.build(ctx, QuantizeConfig(calibration="ndtc", **SMALL))
    assert again.states == built["ndtc"].states
    for k in again.batches:
        np.testing.assert_array_equal(again.batches[k]["sample"], built["ndtc"].batches[k]["sample"])


def test_ndtc_maps_to_nearest_deployed_call():
    taus = np.array([999.0, 749.0, 499.0, 249.0, 0.0])
    k, t = calibration.ndtc_call_indices(taus, 2000, 0.4, 0.4, 1000, np.random.default_rng(0))
    assert t.min() >= 0 and t.max() <= 999
    np.testing.assert_array_equal(k, np.abs(taus[None] - t[:, None]).argmin(1))
    assert np.mean(taus[k]) < 500  # biased toward x_0
    assert calibration.uniform_call_indices(100, 20) == list(range(0, 100, 5))


# ------------------------------------------------------------------------------------------ profiles, coverage

def _tiny_conv_model():
    rng = np.random.default_rng(6)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "c1.weight"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "c1.bias"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32) * 0.3, "c2.weight"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "c2.bias")]
    nodes = [helper.make_node("Conv", ["sample", "c1.weight", "c1.bias"], ["h"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["h"], ["hr"], name="relu"),
             helper.make_node("Conv", ["hr", "c2.weight", "c2.bias"], ["h2"], pads=[1] * 4, name="c2"),
             helper.make_node("Tanh", ["h2"], ["y"], name="tanh")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _quantize_tiny(profile: str):
    cfg = QuantizeConfig(op_types=("Conv",), keep_float=(), profile=profile)
    prof = get_profile(profile)
    prep = qdq.prepare_graph(_tiny_conv_model(), cfg, prof)
    rng = np.random.default_rng(7)
    batches = [{"sample": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    params = qdq.activation_params(qdq.record_stats(prep, batches, 0), cfg, prof)
    qm = qdq.build_qdq(prep, params, prof, cfg.op_types)
    return qm, prep, params, prof, batches


def test_prepared_graph_keeps_weights_on_disk_and_releases_the_source():
    """Holding the FP32 graph in memory beside the torch model through the quantize pass took a
    full-size SD 1.5 INT8 compile to 6.5x its FP32 bytes: the prepared graph is structure only, its
    weights in a scratch folder that goes with it, and the caller may drop its own graph."""
    import gc

    from dmc.scratch import remove_all, scratch_folder

    released = []
    source = numpy_helper.to_array(next(i for i in _tiny_conv_model().graph.initializer if i.name == "c2.weight"))
    prep = qdq.prepare_graph(_tiny_conv_model(), QuantizeConfig(op_types=("Conv",), keep_float=()),
                             get_profile("ort-cpu"), release=lambda: released.append(True))
    assert released == [True]
    w = next(i for i in prep.model.graph.initializer if i.name == "c2.weight")
    assert w.data_location == TensorProto.EXTERNAL and not w.raw_data
    np.testing.assert_array_equal(prep.weight("c2.weight"), source)
    folder = prep.folder
    assert (folder / "pre.onnx.data").stat().st_size >= source.nbytes and not list(folder.glob("in.onnx*"))
    del prep, w
    gc.collect()
    assert not folder.exists()
    # a graph with nothing to quantize is not released (it stays FP32 in the artifact)
    none_left = qdq.prepare_graph(_tiny_conv_model(), QuantizeConfig(op_types=("Conv",), keep_float=("first", "last")),
                                  get_profile("ort-cpu"), release=lambda: released.append(False))
    assert not none_left.layers and released == [True]
    # SIGTERM's handler removes live scratch folders (os._exit runs no finalizer)
    owner = type("Owner", (), {})()
    path = scratch_folder(owner)
    remove_all()
    assert not path.exists()


@pytest.mark.parametrize("profile", ["ort-cpu", "trt"])
def test_qdq_scales_are_dmcs_and_profile_checks(profile):
    qm, prep, params, prof, batches = _quantize_tiny(profile)
    assert qdq.verify_scales(qm, prep, params, prof) == []  # ORT wrote dmc's scales, bit for bit
    acts, _ = qdq.read_scales(qm)
    for t, p in params.items():
        assert acts[t] == (p.scale, p.zero_point)
    assert check_profile(qm, profile) == []
    other = "trt" if profile == "ort-cpu" else "ort-cpu"
    assert check_profile(qm, other)  # the other profile's rules are broken
    # output stays close to FP32
    fp = _session(_tiny_conv_model()).run(None, batches[0])[0]
    q = _session(qm).run(None, batches[0])[0]
    assert np.sqrt(np.mean((q - fp) ** 2)) / np.sqrt(np.mean(fp ** 2)) < 0.05


def test_profile_checker_flags_bad_trt_graphs():
    qm, *_ = _quantize_tiny("trt")
    bad = copy.deepcopy(qm)
    zp = next(i for i in bad.graph.initializer if i.name.endswith("_zero_point") and i.data_type == TensorProto.INT8
              and not i.dims)
    zp.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), zp.name))  # asymmetric activation
    problems = check_profile(bad, "trt")
    assert any("zero point must be 0" in p for p in problems), problems
    u8, *_ = _quantize_tiny("ort-cpu")
    problems = check_profile(u8, "trt")
    assert any("must be int8" in p for p in problems) and any("int32" in p for p in problems)
    # an FP32 graph is not a quantized graph; a low opset cannot carry per-channel Q/DQ
    assert any("not quantized" in p for p in check_profile(_tiny_conv_model(), "trt"))
    low = copy.deepcopy(qm)
    low.opset_import[0].version = 10
    assert any("opset" in p for p in check_profile(low, "trt"))


def test_coverage_counts_what_ort_runs_as_int8():
    qm, *_ = _quantize_tiny("ort-cpu")
    cov = coverage(qm)
    assert cov["conv"] == {"int8": 2, "float": 0}, cov
    assert requested(qm)["conv"] == 2
    assert summary_line(cov) == "int8: 2/2 convs"
    # Q/DQ only on inputs (the trt layout): the CPU EP cannot fuse QLinearConv, so nothing is INT8
    # although the graph "is quantized" -- this is why coverage is proved on the optimised graph.
    trt, *_ = _quantize_tiny("trt")
    assert coverage(trt)["conv"] == {"int8": 0, "float": 2}
    assert coverage(_tiny_conv_model())["conv"] == {"int8": 0, "float": 2}


def test_each_graph_variant_is_calibrated_on_its_own_calls(demo_ctx):
    """Two graph variants (as a cache pass would make) calibrate on the calls they run; with
    calibrate_under_schedule=False both take the full-graph trajectory's ranges by layer identity."""
    from dmc.compress.context import GraphVariant
    from dmc.quantize.pass_ import quantize

    def two_graph_ctx():
        ctx = copy.deepcopy(demo_ctx)
        g = ctx.graphs["full"]
        ctx.graphs["late"] = GraphVariant(g.onnx, g.module, g.input_names, g.output_names, "copy")
        for c in ctx.calls[5:]:
            c.graph = "late"
        return ctx

    ranges = {}
    for under in (True, False):
        ctx = two_graph_ctx()
        quantize(ctx, QuantizeConfig(calibration="uniform", num_samples=20, range_method="minmax",
                                     calibrate_under_schedule=under))
        rep = ctx.passes[-1]["graphs"]
        assert rep["full"]["calibration_calls"] == ([0, 1, 2, 3, 4] if under else list(range(10)))
        assert rep["late"]["calibration_calls"] == ([5, 6, 7, 8, 9] if under else list(range(10)))
        ranges[under] = (rep["full"]["activation_ranges"], rep["late"]["activation_ranges"])
        assert [c.graph for c in ctx.calls] == ["full"] * 5 + ["late"] * 5
    assert ranges[True][0] != ranges[True][1]  # early and late calls see different activations
    assert ranges[False][0] == ranges[False][1]  # one (uncached) trajectory, mapped by layer


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def artifacts(demo_ctx, tmp_path_factory):
    """FP32, INT8 (NDTC) and INT8 with 2 scale groups artifacts of the demo UNet (one export)."""
    import dmc.compress.pipeline as pipeline

    root = tmp_path_factory.mktemp("int8")
    out = {}
    original = pipeline.prepare
    pipeline.prepare = lambda source, options: copy.deepcopy(demo_ctx)
    try:
        for name, passes in (("fp32", []), ("int8", [QuantizeConfig(**SMALL)]),
                             ("int8-K2", [QuantizeConfig(scale_groups=2, range_method="minmax", **SMALL)])):
            out[name] = pipeline.compile_model("demo", root / name,
                                               pipeline.CompileOptions(recipe=RECIPE, passes=passes, verify_images=2))
    finally:
        pipeline.prepare = original
    return out


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_int8_artifact_quality_size_and_manifest(artifacts):
    from dmc.evaluate import paired_fidelity
    from dmc.runtimes import load

    n = 24
    fp = load(artifacts["fp32"])(n, seed=0)
    q = load(artifacts["int8"])(n, seed=0)
    pf = paired_fidelity(q, fp)
    size = {k: sum(p.stat().st_size for p in v.rglob("*") if p.is_file()) for k, v in artifacts.items()}
    print(f"demo UNet, DDIM 10, guidance 2, NDTC 32 states: paired PSNR {pf['psnr_mean']:.2f} dB "
          f"(worst {pf['psnr_worst']:.2f}), RMSE {pf['rmse_mean']:.4f}; bytes INT8/FP32 "
          f"{size['int8'] / size['fp32']:.3f}")
    # Measured 45 dB here; a broken calibration (every range from the last call only) gives 24 dB
    # on the 20-step recipe (BENCHMARKS.md). Floor with 10 dB margin on both sides.
    assert pf["psnr_mean"] > 35.0
    assert size["int8"] < 0.3 * size["fp32"]  # measured 0.25
    m = _manifest(artifacts["int8"])
    assert m["precision"] == "int8" and m["target"] == "ort-cpu"
    assert m["graphs"]["full"]["precision"] == "int8"
    entry = m["passes"][-1]
    assert entry["name"] == "quantize" and entry["config"]["calibration"] == "ndtc"
    assert len(entry["calibration"]["states_per_call"]) == RECIPE.steps
    assert set(entry["calibration"]["timesteps"]) <= {c["timestep"] for c in m["sampler"]["calls"]}
    g = entry["graphs"]["full"]
    assert g["coverage"]["conv"]["int8"] == g["requested"]["conv"] > 30
    assert {"first", "last", "time_embedding"} <= set(g["float_islands"].values())
    # conditioning MLPs keep float activations but store int8 weights; first/last stay fully float
    assert g["weight_only_int8"] and all(g["float_islands"][n] == "time_embedding" for n in g["weight_only_int8"])
    assert g["split_convs"] and g["profile_problems"] == []
    assert m["verification"]["floor_psnr_db"] == 25.0


def test_describe_reports_coverage_and_profile(artifacts):
    d = describe(artifacts["int8"])
    full = d["graphs"]["full"]
    assert d["target"] == "ort-cpu" and full["profile_problems"] == []
    assert full["summary"].startswith("int8: ") and full["coverage"]["conv"]["float"] == 2  # conv_in, conv_out
    fp = describe(artifacts["fp32"])["graphs"]["full"]
    assert fp["coverage"]["conv"]["int8"] == 0


def test_scale_groups_rewrite_calls_and_share_int8_weights(artifacts):
    m = _manifest(artifacts["int8-K2"])
    assert set(m["graphs"]) == {"full@g0", "full@g1"}
    graphs = [c["graph"] for c in m["sampler"]["calls"]]
    assert graphs == ["full@g0"] * 5 + ["full@g1"] * 5
    assert [c["extra"]["scale_group"] for c in m["sampler"]["calls"]] == [0] * 5 + [1] * 5
    r = m["passes"][-1]["graphs"]
    assert r["full@g0"]["activation_ranges"] != r["full@g1"]["activation_ranges"]
    w1 = (artifacts["int8"] / "graphs" / "weights.bin").stat().st_size
    w2 = (artifacts["int8-K2"] / "graphs" / "weights.bin").stat().st_size
    assert w2 < 1.15 * w1, (w1, w2)  # int8 weights deduplicated; only int32 biases differ


def test_int8_compile_memory_estimate_uses_the_passes_factor(monkeypatch):
    """The refusal before loading estimates the compile's peak from what the passes need: an INT8
    compile (measured at several times the FP32 bytes) is refused where an FP32 one still fits."""
    from dmc.compress.pipeline import CompileOptions, prepare
    from dmc.models.loading import inspect_source, load_model
    from dmc.models.memory import COMPILE_FACTOR
    from dmc.sampling import Recipe

    fp32_bytes = 4 * inspect_source("demo").parameters
    assert QuantizeConfig.COMPILE_MEMORY_FACTOR > COMPILE_FACTOR
    between = fp32_bytes * (COMPILE_FACTOR + QuantizeConfig.COMPILE_MEMORY_FACTOR) / 2
    monkeypatch.setenv("DMC_MEMORY_BUDGET_GB", str(between / 1024**3))
    load_model("demo")  # an FP32 compile fits
    with pytest.raises(DmcError, match=f"x {QuantizeConfig.COMPILE_MEMORY_FACTOR:g}\\)"):
        prepare("demo", CompileOptions(recipe=Recipe(steps=4), passes=[QuantizeConfig()]))
