"""Per-branch DiT caching: exactness of the re-implemented forward, graphs through the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dmc.cache import dit_blocks as D
from dmc.cache.schedules import bac, distinct_rows
from dmc.compress.passes import register_pass
from dmc.errors import DmcError
from dmc.sampling import Recipe

torch.set_num_threads(1)
RECIPE = Recipe(steps=10, guidance=2.0)


@dataclass
class _Schedule:  # a test-only cache config: install a given [K, 2L] schedule
    refresh: np.ndarray


_SEEN = {}


@register_pass("cache", _Schedule)
def _install(ctx, cfg):
    D.build_dit_cache(ctx, cfg, cfg.refresh)
    _SEEN["ctx"] = ctx


@pytest.fixture(scope="module")
def adapter():
    from dmc.models.adapters import make_adapter
    from dmc.models.loading import load_model

    loaded = load_model("demo-dit")
    return make_adapter(loaded.model, loaded.class_name)


def test_full_pattern_equals_original(adapter):
    x, t, y = adapter.example_inputs(4)
    step = D.DiTCachedStep(adapter, [True] * 12)
    with torch.no_grad():
        want = adapter(x, t, y)
        got, *caches = step(x, t, y)
    assert (got - want).abs().max().item() <= 1e-5
    assert len(caches) == 12 and caches[0].shape == (4, 64, 128)
    # reading the branch values just computed back from "cache" gives the same prediction
    for pattern in ([False] * 12, [True, False] * 6, [False, True] * 6):
        part = D.DiTCachedStep(adapter, pattern)
        reads = [c for c, p in zip(caches, pattern) if not p]
        with torch.no_grad():
            out = part(x, t, y, *reads)
        out = out[0] if isinstance(out, tuple) else out
        assert (out - want).abs().max().item() <= 1e-5
        assert part.input_names == ["sample", "timestep", "class_labels"] + [
            n for n, p in zip(D.cache_names(6), pattern) if not p]


def test_layout_and_errors(adapter):
    labels, ffn = D.dit_branch_layout(adapter)
    assert labels[:3] == ["b0.attn", "b0.mlp", "b1.attn"] and ffn == [1, 3, 5, 7, 9, 11]
    with pytest.raises(DmcError):
        D.DiTCachedStep(adapter, [True] * 5)
    with pytest.raises(DmcError):
        D.DiTCachedStep(adapter, [False] * 12, outputs=[True] * 12)
    assert D.graph_names([(True, False), (True, True), (False, False)]) == ["dit.p0", "full", "dit.p1"]


def _mixed_schedule(k=10, branches=12):
    """Calls 0, 3, 6, 9 compute everything; 1, 4, 7 only the MLP branches; 2, 5, 8 nothing."""
    r = np.zeros((k, branches), dtype=bool)
    r[0::3] = True
    r[1::3, 1::2] = True
    return r


@pytest.mark.slow
def test_mixed_schedule_through_runtime(tmp_path):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.runtimes import load

    refresh = _mixed_schedule()
    out = compile_model("demo-dit", tmp_path / "a.dmc",
                        CompileOptions(recipe=RECIPE, passes=[_Schedule(refresh)], verify_images=2,
                                        keep_torch=True))
    ctx = _SEEN["ctx"]
    patterns, index = distinct_rows(refresh)
    assert len(patterns) == 3
    # one graph file per distinct row
    files = sorted(p.name for p in (out / "graphs").glob("*.onnx"))
    assert files == ["dit.p0.onnx", "dit.p1.onnx", "full.onnx"]
    assert [c.graph for c in ctx.calls] == ["full", "dit.p0", "dit.p1"] * 3 + ["full"]
    assert ctx.calls[1].extra["cache"]["refresh"] == refresh[1].tolist()
    # attention caches are read on calls 1, 2, 4, ...; MLP caches on 2, 5, 8: the full graph
    # writes all 12, the MLP-only graph writes the 6 MLP caches, the empty graph none
    assert len(ctx.graphs["full"].output_names) == 13
    assert ctx.graphs["dit.p0"].output_names[1:] == [f"cache.b{i}.mlp" for i in range(6)]
    assert ctx.graphs["dit.p1"].output_names == ["prediction"]
    # weights stored once: weights.bin ~ the FP32 parameters, not 3x
    params = sum(p.numel() * 4 for p in ctx.adapter.model.parameters())
    size = (out / "graphs" / "weights.bin").stat().st_size
    assert 0.9 * params < size < 1.1 * params, (size, params)
    # the runtime (ONNX Runtime) matches the torch modules of the same cached computation
    got = load(out, threads=1).sample(3, seed=0)
    want = ctx.torch_pipeline().sample(3, seed=0)
    assert np.abs(got - want).max() < 1e-3
    # and the cached computation really differs from the uncached one
    from dmc.compress.pipeline import reference_pipeline

    full = reference_pipeline("demo-dit", RECIPE).sample(3, seed=0)
    assert np.abs(full - want).max() > 1e-3


def _bare_context(recipe):
    """A compile context without the exported full graph (saves an export)."""
    from dmc.compress.context import CompileContext
    from dmc.models.adapters import make_adapter
    from dmc.models.loading import load_model
    from dmc.sampling.compile import compile_calls

    loaded = load_model("demo-dit")
    return CompileContext(loaded, make_adapter(loaded.model, loaded.class_name), recipe,
                          compile_calls(recipe, loaded.scheduler_config))


def test_interval_one_writes_no_caches():
    ctx = _bare_context(Recipe(steps=3, guidance=2.0))
    D.build_dit_cache(ctx, None, np.ones((3, 12), dtype=bool))
    assert list(ctx.graphs) == ["full"] and ctx.graphs["full"].output_names == ["prediction"]
    with pytest.raises(DmcError):
        D.build_dit_cache(ctx, None, np.zeros((3, 12), dtype=bool))
    with pytest.raises(DmcError):
        D.build_dit_cache(ctx, None, np.ones((4, 12), dtype=bool))
    # branch features of the uncached trajectory, and a BAC schedule from them
    from dmc.cache.features import record_dit_features

    feats = record_dit_features(ctx, 2, 0)[0]
    assert feats.shape == (3, 12, 4, 64, 128) and np.isfinite(feats).all()
    _, ffn = D.dit_branch_layout(ctx)
    r = bac(feats, budget=2, ffn_blocks=ffn, n_bubbling=2)
    assert r.shape == (3, 12) and r[0].all()
