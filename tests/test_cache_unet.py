"""DeepCache on the demo UNet: graph modules, the correction, and compiled artifacts on the runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmc.cache import CacheConfig, deepcache
from dmc.cache.correction import fit_cache_correction
from dmc.models.adapters import make_adapter
from dmc.models.loading import load_model
from dmc.sampling import Recipe

RECIPE = Recipe(steps=10, guidance=2.0)


@pytest.fixture(scope="module")
def adapter():
    loaded = load_model("demo")
    return make_adapter(loaded.model, loaded.class_name)


def _inputs(batch: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 16, 16, generator=g)
    t = torch.linspace(999, 1, batch)
    y = torch.arange(batch) % 11
    return x, t, y


@pytest.mark.parametrize("branch", [0, 1])
def test_full_module_equals_uncached_model_exactly(adapter, branch):
    full = deepcache.DeepCacheFull(adapter, branch)
    x = _inputs()
    with torch.inference_mode():
        want = adapter(*x)
        got, cache = full(*x)
    assert torch.equal(got, want)
    assert cache.shape[:2] == (4, deepcache.cache_channels(adapter.model, branch))


@pytest.mark.parametrize("branch", [0, 1])
def test_shallow_with_fresh_feature_equals_full(adapter, branch):
    full = deepcache.DeepCacheFull(adapter, branch)
    shallow = deepcache.DeepCacheShallow(adapter, branch, correction=True)
    x = _inputs()
    with torch.inference_mode():
        want, cache = full(*x)
        c = cache.shape[1]
        got = shallow(*x, cache, torch.ones(c), torch.zeros(c))
        plain = deepcache.DeepCacheShallow(adapter, branch, correction=False)(*x, cache)
    assert torch.equal(got, want)
    assert torch.equal(plain, want)


def test_shallow_reuses_the_full_graphs_parameter_names(adapter):
    full_names = {n for n, _ in deepcache.DeepCacheFull(adapter).named_parameters()}
    adapter_names = {n for n, _ in adapter.named_parameters()}
    used = set()
    shallow = deepcache.DeepCacheShallow(adapter)
    x = _inputs(2)
    with torch.inference_mode():
        _, cache = deepcache.DeepCacheFull(adapter)(*x)
    hooks = [m.register_forward_hook(lambda mod, i, o: used.add(mod)) for m in shallow.modules()]
    with torch.inference_mode():
        shallow(*x, cache, torch.ones(cache.shape[1]), torch.zeros(cache.shape[1]))
    for h in hooks:
        h.remove()
    assert full_names == adapter_names
    ran = {n for n, m in shallow.named_modules() if m in used}
    assert "model.up_blocks.2" in ran and "model.down_blocks.0.resnets.0" in ran
    assert not any(n.startswith(("model.mid_block", "model.down_blocks.1", "model.up_blocks.0",
                                 "model.up_blocks.1", "model.down_blocks.0.downsamplers")) for n in ran)


def test_correction_in_graph_equals_correcting_the_cache_first(adapter):
    shallow = deepcache.DeepCacheShallow(adapter, 0, correction=True)
    x = _inputs(2)
    with torch.inference_mode():
        _, cache = deepcache.DeepCacheFull(adapter)(*x)
        c = cache.shape[1]
        scale, shift = torch.rand(c) + 0.5, torch.randn(c) * 0.1
        got = shallow(*x, cache, scale, shift)
        want = shallow(*x, cache * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), torch.ones(c), torch.zeros(c))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_fit_cache_correction_recovers_an_affine_drift():
    rng = np.random.default_rng(0)
    k, s, c = 5, 3, 4
    base = rng.standard_normal((s, c, 6, 6)).astype(np.float32)
    a = rng.uniform(0.5, 1.5, (k, c))
    b = rng.normal(0, 0.3, (k, c))
    feats = np.stack([base * a[i][None, :, None, None] + b[i][None, :, None, None] for i in range(k)])
    refresh = np.array([True, False, False, True, False])
    fit = fit_cache_correction(feats, refresh)
    for i, r in [(1, 0), (2, 0), (4, 3)]:  # true map from the refresh call's feature to call i's
        np.testing.assert_allclose(fit["scale"][i], a[i] / a[r], rtol=1e-4)
        np.testing.assert_allclose(fit["shift"][i], b[i] - a[i] / a[r] * b[r], atol=1e-4)
        assert fit["rel_l1_after"][i] < 1e-4 < fit["rel_l1_before"][i]
    np.testing.assert_array_equal(fit["scale"][[0, 3]], 1.0)
    np.testing.assert_array_equal(fit["shift"][[0, 3]], 0.0)


# ----------------------------------------------------------------------------- compiled artifacts


def _compile(tmp_path_factory, monkeypatch_ctx, name, cfg):
    """compile_model with the CompileContext kept, so tests can build its torch pipeline."""
    import dmc.compress.pipeline as pipeline

    kept = {}
    original = pipeline.prepare

    def prepare(*args, **kwargs):
        kept["ctx"] = original(*args, **kwargs)
        return kept["ctx"]

    monkeypatch_ctx.setattr(pipeline, "prepare", prepare)
    out = tmp_path_factory.mktemp("cache") / f"{name}.dmc"
    path = pipeline.compile_model("demo", out, pipeline.CompileOptions(recipe=RECIPE, passes=[cfg], keep_torch=True))
    monkeypatch_ctx.undo()
    return path, kept["ctx"]


@pytest.fixture(scope="module")
def cached_artifact(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    return _compile(tmp_path_factory, mp, "cached", CacheConfig(schedule="uniform", interval=3, num_samples=4))


@pytest.mark.slow
def test_interval_one_equals_no_cache_exactly(tmp_path_factory, demo_artifact):
    from dmc.compress.pipeline import reference_pipeline
    from dmc.runtimes import load

    path, ctx = _compile(tmp_path_factory, pytest.MonkeyPatch(), "n1", CacheConfig(schedule="uniform", interval=1))
    assert all(c.graph == "full" for c in ctx.calls) and "shallow" not in ctx.graphs
    want_torch = reference_pipeline("demo", RECIPE).sample(4, seed=5)
    np.testing.assert_array_equal(ctx.torch_pipeline().sample(4, seed=5), want_torch)
    np.testing.assert_array_equal(load(path).sample(4, seed=5), load(demo_artifact).sample(4, seed=5))


@pytest.mark.slow
def test_runtime_runs_the_mixed_schedule_like_torch(cached_artifact):
    from dmc.runtimes import load

    path, ctx = cached_artifact
    pipe = load(path)
    graphs = [c.graph for c in pipe.calls]
    assert graphs == ["full" if k % 3 == 0 else "shallow" for k in range(10)]
    assert set(pipe.manifest.graphs) == {"full", "shallow"}
    seen = []

    def on_call(k, feeds, raw, x_next):
        if graphs[k] == "shallow":
            cache, scale = feeds[deepcache.CACHE], feeds[deepcache.SCALE]
            n = len(feeds["sample"])
            assert cache.shape[0] == n  # [uncond; cond]: one cache per guidance half
            assert not np.allclose(cache[: n // 2], cache[n // 2:])
            assert scale.shape == (cache.shape[1],)
            seen.append(k)

    got = pipe.sample(6, seed=7, batch_size=3, on_call=on_call)
    assert seen == [k for k in range(10) if k % 3] * 2
    want = ctx.torch_pipeline().sample(6, seed=7, batch_size=3)
    np.testing.assert_allclose(got, want, atol=1e-4)
    # and caching changes the samples: this is not the uncached model
    from dmc.compress.pipeline import reference_pipeline

    assert np.abs(reference_pipeline("demo", RECIPE).sample(6, seed=7, batch_size=3) - want).max() > 1e-3


@pytest.mark.slow
def test_artifact_records_the_schedule_and_corrections(cached_artifact):
    from dmc.artifact import read_manifest
    from dmc.cache import describe

    path, ctx = cached_artifact
    manifest = read_manifest(path)
    record = next(p for p in manifest.data["passes"] if p["name"] == "cache")
    assert record["schedule"] == "F..F..F..F"
    assert 0.3 < record["cost_ratio"] < 1
    assert record["correction"]["rel_l1_after_mean"] < record["correction"]["rel_l1_before_mean"]
    tables = manifest.tables()
    for call in manifest.calls:
        if call.graph == "shallow":
            assert call.extra["cache"] == {"reads": [deepcache.CACHE], "writes": []}
            assert set(call.extra["tables"]) == {deepcache.SCALE, deepcache.SHIFT}
            assert all(key in tables for key in call.extra["tables"].values())
        else:
            assert call.extra["cache"] == {"reads": [], "writes": [deepcache.CACHE]}
    # the shallow graph shares the full graph's weights by name (layer identity for quantization)
    full = {i.name for i in ctx.graphs["full"].onnx.graph.initializer}
    shallow = {i.name for i in ctx.graphs["shallow"].onnx.graph.initializer if i.name.endswith(".weight")}
    assert shallow and shallow <= full
    info = describe(manifest)
    assert info["schedule"] == "F.. F.. F.. F"
    assert info["refresh_calls"] == [0, 3, 6, 9]
    assert any("schedule F.. F.. F.. F" in line for line in info["text"])


@pytest.mark.slow
def test_text_conditioned_unet_caches_and_matches_torch(tmp_path):
    """UNet2DConditionModel (cross-attention down/up blocks, encoder_hidden_states input)."""
    from diffusers import UNet2DConditionModel

    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.runtimes import load

    torch.manual_seed(0)
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
    adapter = make_adapter(model)
    x = (torch.randn(2, 4, 10, 10), torch.tensor([900.0, 10.0]), torch.randn(2, 77, 16))  # 10 % 4: upsample_size path
    with torch.inference_mode():
        want = adapter(*x)
        got, cache = deepcache.DeepCacheFull(adapter)(*x)
        shallow = deepcache.DeepCacheShallow(adapter)(*x, cache, torch.ones(cache.shape[1]), torch.zeros(cache.shape[1]))
    assert torch.equal(got, want) and torch.equal(shallow, want)

    model.save_pretrained(tmp_path / "unet")
    path = compile_model(str(tmp_path / "unet"), tmp_path / "cond.dmc", CompileOptions(
        recipe=Recipe(steps=6), passes=[CacheConfig(schedule="uniform", interval=2, num_samples=2)],
        scheduler_preset="sd15"))  # a bare unet/ folder: its training schedule must be named
    pipe = load(path)
    assert [c.graph for c in pipe.calls] == ["full", "shallow"] * 3
    assert pipe.manifest.data["verification"]["psnr_db"] >= 60


@pytest.mark.slow
def test_int8_cache_with_quantization_correction(tmp_path):
    """--cache --int8 plus CacheQuant's a2/b2: per-call tables feed a multiply-add after the INT8 convs
    that consume the cached feature, and the artifact still verifies against the FP torch pipeline."""
    from dmc.artifact import read_manifest
    from dmc.cache import CorrectConfig
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.quantize import QuantizeConfig

    path = compile_model("demo", tmp_path / "q.dmc", CompileOptions(recipe=Recipe(steps=6, guidance=2.0), passes=[
        CorrectConfig(num_samples=2), QuantizeConfig(num_samples=8, search_candidates=10),
        CacheConfig(interval=3, num_samples=2)]))
    manifest = read_manifest(path)
    names = [p["name"] for p in manifest.data["passes"]]
    assert names == ["cache", "quantize", "correct"]
    record = manifest.data["passes"][-1]
    assert set(record["layers"]) == {"conv_shortcut", "conv1"} and record["layers"]["conv_shortcut"]["cache_half_only"]
    tables = manifest.tables()
    for k, call in enumerate(manifest.calls):
        feeds = call.extra.get("tables", {})
        if call.extra["cache"]["reads"]:
            assert {"cache.qscale.conv1", "cache.qshift.conv_shortcut", deepcache.SCALE} <= set(feeds)
            assert tables[feeds["cache.qscale.conv1"]].shape == (32,)
        else:
            assert not feeds
    shallow = [g for g in manifest.graphs if g.startswith("shallow")]
    inputs = {i["name"] for g in shallow for i in manifest.graphs[g]["inputs"]}
    assert {"cache.qscale.conv1", "cache.qshift.conv1"} <= inputs
    assert manifest.data["verification"]["psnr_db"] >= manifest.data["verification"]["floor_psnr_db"]
