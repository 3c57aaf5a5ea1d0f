"""The compiled sampler (numpy coefficients) against diffusers' own scheduler loop."""

import numpy as np
import pytest
import torch

from dmc.compress.pipeline import reference_pipeline
from dmc.models.builtin import NULL_CLASS, SCHEDULER_CONFIG
from dmc.runtimes import load
from dmc.runtimes.pipeline import Pipeline
from dmc.sampling import Recipe, initial_noise
from dmc.sampling.calls import default_labels
from dmc.sampling.compile import build_scheduler, compile_calls

CASES = [("ddim", 1.0), ("ddim", 2.0), ("dpm++2m", 1.0), ("dpm++2m", 2.0)]


def diffusers_loop(adapter, recipe: Recipe, n: int, seed: int) -> np.ndarray:
    """The reference: diffusers' scheduler.step around the torch model, same noise and labels."""
    sched = build_scheduler(recipe, SCHEDULER_CONFIG)
    x = torch.from_numpy(initial_noise(seed, n, adapter.sample_shape))
    labels = torch.from_numpy(default_labels(n, 10))
    for t in sched.timesteps:
        with torch.no_grad():
            if recipe.guided:
                y = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
                out = adapter(torch.cat([x, x]), t.float().repeat(2 * n), y)
                uncond, cond = out.chunk(2)
                out = uncond + recipe.guidance * (cond - uncond)
            else:
                out = adapter(x, t.float().repeat(n), labels)
        x = sched.step(out, t, x).prev_sample
    return x.numpy()


def rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("model", ["demo", "demo-dit"])
@pytest.mark.parametrize("sampler,guidance", CASES)
def test_torch_compiled_sampler_matches_diffusers(model, sampler, guidance):
    recipe = Recipe(sampler=sampler, steps=8, guidance=guidance)
    pipe = reference_pipeline(model, recipe)
    ours = pipe.sample(4, seed=3)
    theirs = diffusers_loop(pipe.executor.modules["full"], recipe, 4, seed=3)
    assert np.isfinite(ours).all()
    assert rmse(ours, theirs) <= 1e-4
    assert np.abs(ours).max() > 0.1  # a real image, not a collapsed one


@pytest.mark.parametrize("sampler,guidance", CASES)
def test_artifact_samples_match_diffusers(demo_artifact, sampler, guidance):
    """The ONNX graph of the artifact, driven by the numpy sampler, against diffusers + torch."""
    runtime = load(demo_artifact)
    recipe = Recipe(sampler=sampler, steps=8, guidance=guidance)
    pipe = Pipeline(recipe, compile_calls(recipe, SCHEDULER_CONFIG), runtime.sample_shape, runtime.cond,
                    runtime.executor)
    ours = pipe.sample(4, seed=5)
    reference = reference_pipeline("demo", recipe)
    theirs = diffusers_loop(reference.executor.modules["full"], recipe, 4, seed=5)
    assert rmse(ours, theirs) <= 1e-4


def test_call_table_is_indexed_by_model_call():
    for sampler in ("ddim", "dpm++2m"):
        calls = compile_calls(Recipe(sampler=sampler, steps=12), SCHEDULER_CONFIG)
        assert len(calls) == 12
        taus = [c.timestep for c in calls]
        assert taus == sorted(taus, reverse=True)  # call 0 is the noisiest
        assert taus[0] > 900
    dpm = compile_calls(Recipe(sampler="dpm++2m", steps=12), SCHEDULER_CONFIG)
    assert len(dpm[0].c) == 1 and len(dpm[1].c) == 2  # first call is first order, then 2M


def test_noise_is_per_image():
    a = initial_noise(0, 4, (1, 4, 4))
    b = initial_noise(0, 2, (1, 4, 4), first=2)
    np.testing.assert_array_equal(a[2:], b)
    assert not np.allclose(a[0], a[1])


def test_ddpm_is_seeded_per_sample_and_the_artifact_follows_torch(tmp_path):
    """The ancestral sampler draws fresh noise every call, one stream per image: batching does not
    change a sample, a seed reproduces it, another seed changes it, and the artifact equals torch."""
    from dmc.compress.pipeline import CompileOptions, compile_model

    recipe = Recipe(sampler="ddpm", steps=6, guidance=2.0)
    out = compile_model("demo", tmp_path / "ddpm.dmc", CompileOptions(recipe=recipe, verify_images=2))
    pipe = load(out)
    assert any(c.noise > 0 for c in pipe.calls) and pipe.calls[-1].noise == 0  # no noise after the last call
    whole = pipe.sample(4, seed=3, batch_size=4)
    assert np.array_equal(whole, pipe.sample(4, seed=3, batch_size=1))
    assert rmse(whole, pipe.sample(4, seed=4)) > 0.05
    torch_side = reference_pipeline("demo", recipe).sample(4, seed=3)
    assert rmse(whole, torch_side) < 1e-3
