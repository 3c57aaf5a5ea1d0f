"""HarmoniCa's router (``--cache-schedule router``): the cache in the loop, learning where caching hurts,
the static schedule, and artifacts the runtime follows."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from dmc.cache import CacheConfig
from dmc.cache.router import SoftCache, scores_to_refresh, train_router
from dmc.sampling import Recipe
from dmc.sampling.compile import compile_calls

SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon",
            "timestep_spacing": "leading"}


class Phase(nn.Module):
    """The cached point: a feature that is constant within a phase of timesteps and jumps between them."""

    def __init__(self, edges):
        super().__init__()
        self.edges = torch.tensor(edges, dtype=torch.float32)

    def forward(self, t):
        return torch.bucketize(t, self.edges).float()


class PhaseModel(nn.Module):
    """eps = 0.1 * x + 0.1 * phase(t): reusing the phase feature is exact within a phase, wrong across a jump."""

    def __init__(self, edges):
        super().__init__()
        self.phase = Phase(edges)
        self.w = nn.Parameter(torch.tensor(0.1))

    def conditioning(self):
        return SimpleNamespace(kind="none")

    def forward(self, x, t):
        return self.w * x + 0.1 * self.phase(t)[:, None, None, None]


def test_soft_cache_mixes_and_stores_what_it_is_told():
    lin = nn.Linear(3, 3)
    cache = SoftCache([lin])
    x1, x2 = torch.randn(2, 3), torch.randn(2, 3)
    with cache:
        cache.scores = torch.ones(1)
        y1 = lin(x1)
        cache.commit([True])  # first call: stored
        cache.scores = torch.zeros(1)
        assert torch.allclose(lin(x2), y1)  # r = 0: the stored output
        cache.commit([False])
        cache.scores = torch.tensor([0.25])
        assert torch.allclose(lin(x2), 0.25 * (x2 @ lin.weight.T + lin.bias) + 0.75 * y1)
        cache.commit([True])
        cache.scores = torch.zeros(1)
        assert torch.allclose(lin(x1), x2 @ lin.weight.T + lin.bias)  # the fresh output was stored
        cache.scores = None  # the teacher: uncached
        assert torch.allclose(lin(x1), y1)
    assert torch.allclose(lin(x2), x2 @ lin.weight.T + lin.bias)  # hooks removed on exit


def test_scores_to_refresh_budget_threshold_and_full_first():
    scores = np.array([[0.2, 0.9], [0.1, 0.1], [0.8, 0.3], [0.7, 0.95], [0.05, 0.2], [0.6, 0.4]])
    r = scores_to_refresh(scores, full_first=1, threshold=None, budget=3, max_variants=None)
    assert r[:, 0].tolist() == [True, False, True, True, False, False]
    assert r[:, 1].tolist() == [True, False, False, True, False, True]
    assert r.sum(axis=0).tolist() == [3, 3]
    t = scores_to_refresh(scores, full_first=2, threshold=0.5, budget=3, max_variants=None)
    assert t[:2].all() and t[2:, 0].tolist() == [True, True, False, True] and t[2:, 1].tolist() == [False, True, False, False]
    capped = scores_to_refresh(scores, 1, None, 3, max_variants=2)
    assert len({tuple(row) for row in capped}) <= 2 and (capped >= r).all()  # merging only adds refreshes


def test_router_learns_to_refresh_where_the_feature_jumps():
    """Three phases over 12 DDIM calls, a budget of 3 refreshes: the calls that must refresh are the
    first call of each phase; the router finds them from the teacher/student error alone."""
    calls = compile_calls(Recipe(sampler="ddim", steps=12), SCHEDULE)
    t = np.array([c.timestep for c in calls])
    edges = [float(t[8] + t[7]) / 2, float(t[4] + t[3]) / 2]  # jumps between calls 3|4 and 7|8
    model = PhaseModel(sorted(edges))
    cfg = CacheConfig(schedule="router", budget=3, router_iterations=25, router_batch=2, router_lr=0.2,
                      router_alpha=1e-4, router_init_std=0.0)
    out = train_router(model, calls, None, (1, 2, 2), [model.phase], full_first=1, cfg=cfg, seed=0, budget=3)
    refresh = scores_to_refresh(out["scores"], 1, None, 3, None)[:, 0]
    assert np.flatnonzero(refresh).tolist() == [0, 4, 8], out["scores"][:, 0].round(3)
    assert out["loss_last"] < out["loss_first"]
    assert model.w.requires_grad  # the model's parameters are handed back trainable


@pytest.fixture(scope="module")
def unet_router(tmp_path_factory):
    from dmc.compress.pipeline import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("router") / "unet.dmc"
    compile_model("demo", out, CompileOptions(recipe=Recipe(steps=8), verify_images=1, passes=[
        CacheConfig(schedule="router", interval=3, router_iterations=2, router_batch=1, router_lambda_every=1)]))
    return out


def test_unet_router_artifact_follows_its_schedule(unet_router):
    from dmc.artifact import read_manifest
    from dmc.inspect import describe

    manifest = json.loads((unet_router / "manifest.json").read_text())
    record = next(p for p in manifest["passes"] if p["name"] == "cache")
    refresh = np.array(record["refresh"])
    assert record["config"]["schedule"] == "router" and refresh.shape == (8,)
    assert refresh.sum() == 3 and refresh[:record["full_first"]].all()  # budget ceil(8/3) = 3
    router = record["router"]
    assert np.array(router["scores"]).shape == (8, 1) and router["iterations"] == 2
    assert len(router["lambda"]) == 8
    calls = read_manifest(unet_router).calls
    assert [c.graph == "full" for c in calls] == refresh.tolist()
    text = "\n".join(describe(unet_router)["cache"]["text"])
    assert "router" in text and "HarmoniCa" in text


def test_dit_router_schedule_respects_the_variant_budget(tmp_path):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.runtimes import load

    out = compile_model("demo-dit", tmp_path / "dit.dmc", CompileOptions(recipe=Recipe(steps=6), verify_images=1, passes=[
        CacheConfig(schedule="router", budget=3, max_variants=3, router_iterations=2, router_batch=1)]))
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(p for p in manifest["passes"] if p["name"] == "cache")
    refresh = np.array(record["refresh"])
    assert refresh.shape[0] == 6 and refresh.shape[1] == len(record["blocks"]) and refresh[:record["full_first"]].all()
    assert len({tuple(r) for r in refresh}) <= 3 and record["distinct_patterns"] <= 3
    assert (refresh.sum(axis=0) >= 3).all()  # every branch keeps at least its budget
    images = load(out).sample(2, seed=0)
    assert np.isfinite(images).all()
