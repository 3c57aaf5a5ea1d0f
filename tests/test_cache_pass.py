"""The cache pass: configuration, schedule choice, DiT dispatch and ``describe`` (no exports here)."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from dmc.cache import CacheConfig, describe
from dmc.cache.choose import CachePoints, choose
from dmc.cache.pass_ import default_full_first, run_cache, schedule_string


def choose_schedule(cfg, num_calls, full_first, features):
    """The registry's schedule for one cache point with these recorded features ``[K, samples, ...]``."""
    points = CachePoints(["deep"], _features=None if features is None else np.asarray(features)[:, None])
    return choose(None, cfg, points, num_calls, full_first, 0).refresh[:, 0]
from dmc.compress.passes import _HANDLERS
from dmc.errors import DmcError
from dmc.sampling import Recipe


def test_cache_config_is_registered_as_the_cache_stage():
    assert _HANDLERS[CacheConfig][0] == "cache"


@pytest.mark.parametrize("kwargs", [{"schedule": "magic"}, {"interval": 0}, {"branch": -1},
                                    {"full_first": 0}, {"num_samples": 0}, {"max_variants": 0}])
def test_cache_config_rejects_bad_values(kwargs):
    with pytest.raises(DmcError):
        CacheConfig(**kwargs)


def test_full_first_follows_the_solver_order():
    assert default_full_first("ddim") == 1
    assert default_full_first("dpm++2m") == 2


def test_uniform_schedule():
    refresh = choose_schedule(CacheConfig(schedule="uniform", interval=3), 10, 1, None)
    assert schedule_string(refresh) == "F..F..F..F"
    assert schedule_string(choose_schedule(CacheConfig(schedule="uniform", interval=3), 10, 2, None)).startswith("FF.F")
    assert choose_schedule(CacheConfig(schedule="uniform", interval=1), 7, 1, None).all()


def test_dp_schedule_refreshes_where_the_feature_moves():
    # the feature is constant, then jumps at call 6 and stays: DP should refresh at 0 and 6
    feats = np.zeros((12, 2, 3), dtype=np.float32)
    feats[6:] = 5.0
    refresh = choose_schedule(CacheConfig(schedule="dp", interval=6), 12, 1, feats)
    assert list(np.flatnonzero(refresh)) == [0, 6]
    refresh = choose_schedule(CacheConfig(schedule="bac", interval=6), 12, 1, feats + np.arange(3))
    assert refresh[0] and refresh.sum() == 2


def test_unsupported_unet_class_is_a_clear_error():
    ctx = SimpleNamespace(calls=[None] * 4, recipe=Recipe(), adapter=SimpleNamespace(family="unet"),
                          loaded=SimpleNamespace(class_name="UNetMotionModel"), passes=[])
    with pytest.raises(DmcError, match="UNetMotionModel"):
        run_cache(ctx, CacheConfig())


def _dit_ctx(num_calls: int, sampler: str = "dpm++2m"):
    model = SimpleNamespace(transformer_blocks=[None, None])
    calls = [SimpleNamespace(graph="full", extra={}) for _ in range(num_calls)]
    return SimpleNamespace(calls=calls, recipe=Recipe(sampler=sampler, steps=num_calls),
                           adapter=SimpleNamespace(family="dit", model=model), passes=[])


@pytest.fixture
def fake_dit_blocks(monkeypatch):
    seen = {}
    mod = types.ModuleType("dmc.cache.dit_blocks")

    def build_dit_cache(ctx, cfg, refresh):
        seen["refresh"] = refresh
        for k, call in enumerate(ctx.calls):
            call.graph = "full" if refresh[k].all() else f"blocks{int(refresh[k].sum())}"

    def dit_branch_layout(ctx):
        n = len(ctx.adapter.model.transformer_blocks)
        return [f"b{i}.{b}" for i in range(n) for b in ("attn", "mlp")], [2 * i + 1 for i in range(n)]

    mod.build_dit_cache = build_dit_cache
    mod.dit_branch_layout = dit_branch_layout
    monkeypatch.setitem(sys.modules, "dmc.cache.dit_blocks", mod)
    return seen


def test_dit_uniform_dispatches_to_dit_blocks(fake_dit_blocks):
    ctx = _dit_ctx(8)
    run_cache(ctx, CacheConfig(schedule="uniform", interval=3))
    refresh = fake_dit_blocks["refresh"]
    assert refresh.shape == (8, 4) and refresh.dtype == bool
    assert schedule_string(refresh[:, 0]) == "FF.F..F."  # dpm++2m: the first two calls are full
    record = ctx.passes[-1]
    assert record["name"] == "cache" and record["method"] == "dit-blocks"
    assert record["blocks"] == ["b0.attn", "b0.mlp", "b1.attn", "b1.mlp"] and record["ffn_blocks"] == [1, 3]


def test_dit_bac_uses_recorded_block_features(fake_dit_blocks, monkeypatch):
    from dmc.cache import features

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((10, 4, 2, 5)).cumsum(axis=0).astype(np.float32)
    monkeypatch.setattr(features, "record_dit_features",
                        lambda ctx, n, seed: (feats, ["b0.attn", "b0.mlp", "b1.attn", "b1.mlp"], [1, 3]))
    ctx = _dit_ctx(10, "ddim")
    run_cache(ctx, CacheConfig(schedule="bac", budget=4, n_bubbling=1, max_variants=3))
    refresh = fake_dit_blocks["refresh"]
    assert refresh.shape == (10, 4) and refresh[0].all()
    assert len({tuple(r) for r in refresh}) <= 3
    assert ctx.passes[-1]["distinct_patterns"] <= 3


def test_describe_reads_the_cache_record():
    refresh = [True, False, False, True, False, False, True]
    manifest = SimpleNamespace(data={"passes": [{
        "name": "cache", "method": "deepcache", "config": {"schedule": "uniform", "interval": 3},
        "refresh": refresh, "schedule": "F..F..F", "cost_ratio": 0.6, "theoretical_speedup": 1.67}]})
    info = describe(manifest)
    assert info["schedule"] == "F.. F.. F"
    assert info["refresh_calls"] == [0, 3, 6]
    assert info["text"][0].startswith("cache      deepcache")
    assert describe(SimpleNamespace(data={"passes": []})) == {}


# ----------------------------------------------------------------------------- DEC quantization correction


def _conv_graph(weight, bias, with_qdq: bool = False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c_out, c_in = weight.shape[:2]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    out = "y"
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")]
    if with_qdq:  # an output Q/DQ pair as the INT8 profile writes it: the correction goes after the DQ
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(128, np.uint8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
                  helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["ydq"])]
        out = "ydq"
    nodes.append(helper.make_node("Relu", [out], ["out"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, 5, 5])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_dec_fma_after_the_conv_equals_folding_it_into_the_weights():
    from dmc.cache.correction import fold_into_conv, insert_channel_fma

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    a2 = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    b2 = rng.normal(0, 0.2, 6).astype(np.float32)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    fma = insert_channel_fma(_conv_graph(w, b), "y", "qs", "qb", 6)
    assert {i.name for i in fma.graph.input} == {"x", "qs", "qb"}
    got = _run(fma, {"x": x, "qs": a2, "qb": b2})
    wf, bf = fold_into_conv(w, b, a2, b2)
    want = _run(_conv_graph(wf, bf), {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    identity = _run(fma, {"x": x, "qs": np.ones(6, np.float32), "qb": np.zeros(6, np.float32)})
    np.testing.assert_array_equal(identity, _run(_conv_graph(w, b), {"x": x}))


def test_dec_locates_the_layer_output_after_its_qdq_pair():
    from dmc.cache.correction import _conv_output_tensor, insert_channel_fma

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    g = _conv_graph(w, np.zeros(4, np.float32), with_qdq=True)
    g.graph.initializer[0].name = "model.up.conv1.weight"
    g.graph.node[0].input[1] = "model.up.conv1.weight"
    assert _conv_output_tensor(g, "model.up.conv1.weight") == ("ydq", "conv")
    assert _conv_output_tensor(g, "model.up.conv2.weight") is None
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    a2, b2 = np.full(4, 2.0, np.float32), np.full(4, -0.1, np.float32)
    out = _run(insert_channel_fma(g, "ydq", "qs", "qb", 4), {"x": x, "qs": a2, "qb": b2})
    plain = _run(g, {"x": x})  # relu(ydq) -> relu(2*ydq - 0.1)
    ydq = _run(_conv_graph(w, np.zeros(4, np.float32), with_qdq=True), {"x": x})
    np.testing.assert_allclose(out, np.maximum(2 * ydq - 0.1, 0), atol=1e-6)
    assert not np.allclose(out, plain)


def test_fit_channel_affine_is_least_squares():
    from dmc.cache.correction import fit_channel_affine

    rng = np.random.default_rng(2)
    q = rng.standard_normal((3, 4, 5, 5)).astype(np.float32)
    t = q * np.array([1.1, 0.9, 1.0, 2.0], np.float32)[None, :, None, None] + 0.3
    a, b = fit_channel_affine(t, q)
    np.testing.assert_allclose(a, [1.1, 0.9, 1.0, 2.0], rtol=1e-5)
    np.testing.assert_allclose(b, 0.3, atol=1e-5)


def test_auto_schedule_is_dp_for_unets_and_bac_for_dits(fake_dit_blocks, monkeypatch):
    from dmc.cache import features

    assert CacheConfig().schedule == "auto"
    feats = np.random.default_rng(0).standard_normal((6, 4, 2, 3)).cumsum(axis=0).astype(np.float32)
    seen = {}

    def record(ctx, n, seed):
        seen["recorded"] = True
        return feats, ["b0.attn", "b0.mlp", "b1.attn", "b1.mlp"], [1, 3]

    monkeypatch.setattr(features, "record_dit_features", record)
    ctx = _dit_ctx(6, "ddim")
    run_cache(ctx, CacheConfig(interval=2))
    assert seen["recorded"] and ctx.passes[-1]["config"]["schedule"] == "bac"


def test_correct_pass_needs_a_cache_and_skips_dit_caching():
    from dmc.cache import CorrectConfig
    from dmc.cache.correction import run_correct

    ctx = SimpleNamespace(passes=[], warnings=[], calls=[])
    with pytest.raises(DmcError, match="needs --cache"):
        run_correct(ctx, CorrectConfig())
    ctx.passes.append({"name": "cache", "method": "dit-blocks"})
    run_correct(ctx, CorrectConfig())
    assert ctx.warnings and len(ctx.passes) == 1
    with pytest.raises(DmcError):
        CorrectConfig(layers=("conv2",))
