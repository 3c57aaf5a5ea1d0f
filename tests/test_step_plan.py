"""The step-plan pass: ``--sampler dpm-v3`` and ``--steps auto --calls N`` compiled into artifacts."""

import json

import numpy as np
import pytest

from dmc.errors import DmcError

SMALL_SEARCH = dict(candidates=6, search_samples=4, held_out=4, reference_calls=40)


def _compile(tmp_path, name, cfg, passes=()):
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    seen = {}
    from dmc.sampling import steps_pass

    real = steps_pass._finish

    def spy(ctx, calls, record):
        real(ctx, calls, record)
        seen["calls"] = [c.to_json() for c in calls]
    steps_pass._finish = spy
    try:
        out = compile_model("demo", tmp_path / name, CompileOptions(
            recipe=Recipe(sampler="dpm++2m", steps=cfg.calls or 5, guidance=2.0), passes=[cfg, *passes],
            verify_images=1))
    finally:
        steps_pass._finish = real
    return out, json.loads((out / "manifest.json").read_text()), seen


def test_cli_maps_sampler_and_steps_to_a_plan():
    from dmc.cli import _step_plan

    assert _step_plan("ddim", False, "auto", 6) == ("dpm++2m", 6, "search", False)
    assert _step_plan("dpm-v3", True, "auto", 6) == ("dpm++2m", 6, "search", True)
    assert _step_plan("dpm-v3", True, 8, None) == ("dpm++2m", 8, "dpm-v3", None)
    assert _step_plan("unipc-bh2", True, 8, None) == ("unipc-bh2", 8, None, None)
    with pytest.raises(DmcError, match="needs a model-call budget"):
        _step_plan("ddim", False, "auto", None)
    with pytest.raises(DmcError, match="cannot be searched"):
        _step_plan("heun-karras", True, "auto", 6)
    with pytest.raises(DmcError, match="budget of --steps auto"):
        _step_plan("ddim", False, 10, 6)


def test_steps_config_refuses_bad_values():
    from dmc.sampling.step_plan import StepsConfig

    with pytest.raises(DmcError, match="unknown step plan"):
        StepsConfig(method="magic")
    with pytest.raises(DmcError, match="--calls must be"):
        StepsConfig(calls=1)


@pytest.mark.slow
def test_searched_plan_is_compiled_recorded_and_used_by_eval(tmp_path):
    from dmc.evaluate.evaluate import open_artifact, open_reference
    from dmc.sampling.step_plan import StepsConfig, describe

    out, manifest, seen = _compile(tmp_path, "auto.dmc", StepsConfig(method="search", calls=4, **SMALL_SEARCH))
    record = manifest["passes"][0]
    assert record["name"] == "steps" and record["calls"] == 4
    assert [c["timestep"] for c in manifest["sampler"]["calls"]] == record["plan"]["timesteps"]
    assert record["plan"]["timesteps"][0] == record["start"]  # every candidate starts at the recipe's first call
    s = record["search"]
    assert s["candidates"] <= 6 and s["model_calls"] > 0
    assert "recipe dpm++2m" in s["baselines"]  # the recipe's own table is a baseline the search must beat
    assert s["objective"] <= min(s["baselines"].values())  # never worse than the best fixed on its search set
    if record["kept"] == "searched":
        held = record["held_out_relative_error"]
        assert held["searched"] <= held["best_fixed"]
        assert not any("--steps auto" in w for w in manifest.get("warnings", []))
    else:  # keeping the fixed table is said, not silent
        assert any(w.startswith("--steps auto: kept the best fixed table") for w in manifest["warnings"])
    assert manifest["verification"]["psnr_db"] > 40
    assert describe(manifest).startswith("steps      searched for 4 calls")
    # dmc eval's reference (the torch model) runs the same planned table, not the recipe's DPM++ one
    artifact = open_artifact(out)
    reference = open_reference(None, artifact)
    assert [c.to_json() for c in reference.pipeline.calls] == seen["calls"] == record["base_calls"]
    got, want = artifact.pipeline.sample(2, seed=3), reference.pipeline.sample(2, seed=3)
    np.testing.assert_allclose(got, want, atol=1e-3)


@pytest.mark.slow
def test_dpm_v3_plan_carries_the_model_statistics(tmp_path):
    from dmc.runtimes import load
    from dmc.sampling.step_plan import StepsConfig, describe

    out, manifest, _ = _compile(tmp_path, "v3.dmc", StepsConfig(method="dpm-v3", calls=5, ems_samples=2, ems_grid=6))
    record = manifest["passes"][0]
    assert record["method"] == "dpm-v3" and record["ems"]["model_evaluations"] == 3 * 2 * 6
    rows = manifest["sampler"]["calls"]
    assert len(rows) == 5 and all(r["channel"] for r in rows[:-1])  # per-channel v3 terms
    # statistics from the model, not the trivial ones (which reduce v3 to DPM-Solver++)
    assert np.abs(np.asarray(record["stats"]["l"])).max() > 0
    assert "DPM-Solver-v3, 5 calls" in describe(manifest)
    images = load(out).sample(2, seed=0)
    assert np.isfinite(images).all() and manifest["verification"]["psnr_db"] > 40


def test_step_plan_refuses_flow_schedules():
    from types import SimpleNamespace

    from dmc.sampling.step_plan import StepsConfig
    from dmc.sampling.steps_pass import run_steps

    ctx = SimpleNamespace(recipe=SimpleNamespace(sampler="dpm++2m"), sample_shape=(4, 8, 8),
                          loaded=SimpleNamespace(scheduler_config={"_class_name": "FlowMatchEulerDiscreteScheduler"}))
    with pytest.raises(DmcError, match="diffusion \\(VP\\) training schedule"):
        run_steps(ctx, StepsConfig(method="search", calls=4))
