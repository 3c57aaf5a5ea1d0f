"""Diffusion policies in LeRobot's saved layout: compiled, run without torch, equal to LeRobot's own actions.

``tests/fixtures/lerobot/*`` were written by LeRobot 0.4.4 itself (``scripts/make_lerobot_fixture.py``):
tiny random-weight policies (``save_pretrained`` of the policy and its processors) and, in
``golden.safetensors``, raw observations, initial noise, the noise each DDPM step drew and the
action chunks LeRobot computed from them.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from dmc.compress.pipeline import CompileOptions, compile_model
from dmc.errors import DmcError
from dmc.runtimes import load
from dmc.runtimes.policy import ENCODER_GRAPH, Policy, normalize
from dmc.sampling.calls import sampler_update

FIXTURES = Path(__file__).parent / "fixtures" / "lerobot"
ACTION_TOL = 1e-3  # robot units (actions span ~500): float32 graphs vs LeRobot's float32 torch


def golden(name: str) -> dict:
    return load_file(str(FIXTURES / name / "golden.safetensors"))


def observations(g: dict) -> dict:
    return {k[len("raw."):]: v for k, v in g.items() if k.startswith("raw.")}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    return {name: compile_model(str(FIXTURES / name), root / f"{name}.dmc", CompileOptions(verify_images=2))
            for name in ("keypoints-ddpm", "env4-ddim")}


def test_policy_artifact_follows_the_policy_config(compiled):
    m = json.loads((compiled["keypoints-ddpm"] / "manifest.json").read_text())
    assert m["recipe"]["sampler"] == "ddpm" and m["recipe"]["steps"] == 10  # noise_scheduler_type, num_inference_steps
    assert m["policy"]["horizon"] == 8 and m["policy"]["n_obs_steps"] == 2 and m["policy"]["n_action_steps"] == 4
    assert m["policy"]["normalization_origin"] == "policy_preprocessor.json"
    assert set(m["graphs"]) == {"full", ENCODER_GRAPH}
    assert m["verification"]["psnr_db"] >= 60 and m["verification"]["chunks"] == 2
    d = json.loads((compiled["env4-ddim"] / "manifest.json").read_text())
    assert d["recipe"]["sampler"] == "ddim" and d["recipe"]["steps"] == 8


def test_ddim_policy_acts_as_lerobot(compiled):
    g = golden("env4-ddim")
    policy = load(compiled["env4-ddim"])
    assert isinstance(policy, Policy)
    got = policy.act(observations(g), noise=g["noise"])
    assert got.shape == g["actions"].shape == (3, 4, 2)
    assert np.abs(got - g["actions"]).max() < ACTION_TOL
    one = policy.act({k: v[1] for k, v in observations(g).items()}, noise=g["noise"][1])  # one history, no batch
    assert one.shape == (4, 2) and np.abs(one - g["actions"][1]).max() < ACTION_TOL


def test_ddpm_policy_with_lerobots_step_noise_acts_as_lerobot(compiled):
    """The compiled DDPM table, the graphs and the normalisation, fed the noise LeRobot's scheduler
    drew at each step, reproduce LeRobot's actions."""
    g = golden("keypoints-ddpm")
    policy = load(compiled["keypoints-ddpm"])
    cond, _ = policy.condition(observations(g))
    x, history, drawn = g["noise"].astype(np.float32), [], iter(g[f"step_noise.{i}"] for i in range(9))
    for call in policy.pipe.calls:
        out = policy.executor.run("full", {"sample": x, "timestep": np.full(len(x), call.timestep, np.float32),
                                           "global_cond": cond})[0]
        x = sampler_update(call, x, policy.executor.to_numpy(out), history, next(drawn) if call.noise else None)
    spec = policy.spec
    actions = normalize(x, spec["normalization"]["action"], spec["normalization_eps"], inverse=True)[:, 1:5]
    assert np.abs(actions - g["actions"]).max() < ACTION_TOL
    assert next(drawn, None) is None  # one draw per noisy step, as LeRobot's


def test_ddpm_policy_runtime_is_seeded(compiled):
    policy = load(compiled["keypoints-ddpm"])
    obs = observations(golden("keypoints-ddpm"))
    a = policy.act(obs, seed=1)
    assert np.array_equal(a, policy.act(obs, seed=1))
    assert np.abs(a - policy.act(obs, seed=2)).max() > 1.0  # fresh noise changes the chunk


def test_policy_runtime_does_not_import_torch(compiled):
    code = (f"import sys, numpy as np; from dmc.runtimes import load; p = load({str(compiled['env4-ddim'])!r}); "
            "a = p.act({'observation.state': np.zeros((1, 2)), 'observation.environment_state': np.zeros((1, 4))}); "
            "print(a.shape, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(4, 2) False"


def test_act_refuses_bad_observations_in_one_line(compiled):
    policy = load(compiled["env4-ddim"])
    good = {"observation.state": np.zeros((1, 2)), "observation.environment_state": np.zeros((1, 4))}
    cases = [({"observation.state": np.zeros((1, 2))}, "missing observation"),
             ({**good, "observation.image": np.zeros((1, 3))}, "takes no observation"),
             ({**good, "observation.state": np.zeros((2, 2))}, "must have shape"),
             ({**good, "observation.state": np.full((1, 2), np.nan)}, "NaN")]
    for obs, message in cases:
        with pytest.raises(DmcError, match=message) as e:
            policy.act(obs)
        assert "\n" not in str(e.value)


def test_unsupported_policies_and_passes_are_refused_before_work(tmp_path, run_cli):
    folder = tmp_path / "img"
    shutil.copytree(FIXTURES / "env4-ddim", folder)
    config = json.loads((folder / "config.json").read_text())
    config["input_features"]["observation.image"] = {"type": "VISUAL", "shape": [3, 96, 96]}
    config["resize_shape"] = [64, 64]
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli("compress", str(folder), "--out", tmp_path / "a.dmc")
    assert code == 2 and "resize_shape is not supported" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("compress", str(FIXTURES / "env4-ddim"), "--prune", "0.2", "--out", tmp_path / "b.dmc")
    assert code == 2 and "not supported for policies yet" in err
    code, _, err = run_cli("compress", str(FIXTURES / "env4-ddim"), "--steps", "auto", "--calls", "4",
                           "--out", tmp_path / "c.dmc")
    assert code == 2 and "do not model clip_sample" in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in ("a.dmc", "b.dmc", "c.dmc"))


def test_missing_statistics_are_refused(tmp_path, run_cli):
    folder = tmp_path / "nostats"
    shutil.copytree(FIXTURES / "env4-ddim", folder)
    for f in folder.glob("policy_*processor*"):
        f.unlink()
    code, _, err = run_cli("compress", str(folder), "--out", tmp_path / "c.dmc")
    assert code == 2 and "statistic" in err and len(err.strip().splitlines()) == 1


def test_inspect_shows_the_policy_and_run_refuses_it(compiled, run_cli):
    art = compiled["keypoints-ddpm"]
    code, text, _ = run_cli("inspect", art)
    assert code == 0 and "LeRobot diffusion policy: horizon 8" in text and "4 action chunks" not in text
    assert "noise=" in text  # the DDPM rows show their noise std
    code, _, err = run_cli("run", art)
    assert code == 2 and "is a robot policy" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("eval", art, "--n", "10")  # eval judges a policy by task success: this one fits none
    assert code == 2 and "task reach-push observes" in err and len(err.strip().splitlines()) == 1


def write_image_policy(folder: Path, separate_cameras: bool = False) -> None:
    """A random-weight image policy in LeRobot's saved layout (``dmc.policies.layout``): state, two cameras
    at 64x64 with a 56x56 crop (a 2x2 feature map for the soft-argmax), a 16-wide environment state."""
    from dmc.policies.layout import write_policy

    cams = ["observation.images.top", "observation.images.wrist"]
    inputs = {"observation.state": ("STATE", (2,)), **{c: ("VISUAL", (3, 64, 64)) for c in cams},
              "observation.environment_state": ("ENV", (16,))}
    stats = {"observation.state": {"min": np.zeros(2), "max": np.full(2, 512.0)},
             "observation.environment_state": {"min": np.zeros(16), "max": np.full(16, 512.0)},
             "action": {"min": np.array([12.0, 20.0]), "max": np.array([500.0, 490.0])},
             **{c: {"mean": np.array([0.4, 0.5, 0.6]).reshape(3, 1, 1),
                    "std": np.array([0.2, 0.25, 0.3]).reshape(3, 1, 1)} for c in cams}}
    write_policy(folder, inputs, 2, stats, horizon=8, n_action_steps=4, down_dims=[16, 32], n_groups=4,
                 diffusion_step_embed_dim=16, kernel_size=3, crop_shape=[56, 56], spatial_softmax_num_keypoints=8,
                 use_separate_rgb_encoder_per_camera=separate_cameras, noise_scheduler_type="DDIM",
                 num_inference_steps=4)


@pytest.mark.parametrize("separate", [False, True])
def test_image_policy_compiles_and_acts(tmp_path, separate):
    """Two cameras through a ResNet-18 trunk (GroupNorm) and spatial soft-argmax: compiled, verified
    against the torch policy, and run from images in [0, 1]."""
    write_image_policy(tmp_path / "img", separate)
    out = compile_model(str(tmp_path / "img"), tmp_path / "img.dmc", CompileOptions(verify_images=2))
    m = json.loads((out / "manifest.json").read_text())
    assert m["verification"]["psnr_db"] >= 60 and m["recipe"]["sampler"] == "ddim"
    keys = [o["key"] for o in m["policy"]["observations"]]
    assert keys == ["observation.state", "observation.images.top", "observation.images.wrist",
                    "observation.environment_state"]  # LeRobot's order of the condition
    policy = load(out)
    rng = np.random.default_rng(0)
    obs = {"observation.state": rng.uniform(0, 500, (2, 2)),
           "observation.environment_state": rng.uniform(0, 500, (2, 16)),
           "observation.images.top": rng.uniform(0, 1, (2, 3, 64, 64)),
           "observation.images.wrist": rng.uniform(0, 1, (2, 3, 64, 64))}
    a = policy.act(obs, seed=0)
    assert a.shape == (4, 2) and np.isfinite(a).all()
    blob = np.zeros((2, 3, 64, 64))
    blob[..., 4:24, 40:60] = 1.0  # a bright patch in one corner: the soft-argmax keypoints move
    cond, _ = policy.condition(obs)
    moved, _ = policy.condition(dict(obs, **{"observation.images.wrist": blob}))
    per_step = 2 + 16 + 2 * 16  # state, environment, two cameras of 8 keypoints (x, y)
    changed = np.flatnonzero(np.abs(moved - cond)[0] > 1e-6) % per_step
    assert set(changed) and set(changed) <= set(range(2 + 16, 2 + 32))  # only the wrist camera's features


LEROBOT_IMAGE_FIXTURE = "DMC_LEROBOT_IMAGE_POLICY"


def test_image_policy_acts_as_lerobot(tmp_path):
    """Against LeRobot's own image policy (45 MB, not in git): set DMC_LEROBOT_IMAGE_POLICY to the folder
    ``python scripts/make_lerobot_fixture.py DIR --image`` writes (DIR/image-ddim)."""
    import os

    folder = os.environ.get(LEROBOT_IMAGE_FIXTURE)
    if not folder:
        pytest.skip(f"{LEROBOT_IMAGE_FIXTURE} is not set (LeRobot's 45 MB image policy is not shipped)")
    g = load_file(str(Path(folder) / "golden.safetensors"))
    policy = load(compile_model(folder, tmp_path / "lr.dmc", CompileOptions(verify_images=1)))
    assert np.abs(policy.act(observations(g), noise=g["noise"]) - g["actions"]).max() < 10 * ACTION_TOL


def test_int8_policy_calibrated_on_recorded_observations(tmp_path, run_cli):
    """--int8 runs the image models' quantize pass on the denoiser, its trajectories conditioned on the
    histories in --calib-observations; the artifact verifies against the FP32 torch policy and acts."""
    g = golden("keypoints-ddpm")
    obs = observations(g)
    calib = tmp_path / "obs.npz"
    np.savez(calib, **{k: np.repeat(v, 4, axis=0) for k, v in obs.items()})
    out = tmp_path / "q.dmc"
    code, text, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--int8", "--calib-observations", calib,
                              "--out", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["graphs"]["full"]["precision"] == "int8"
    assert m["graphs"][ENCODER_GRAPH]["precision"] == "fp32"
    assert m["verification"]["psnr_db"] >= m["verification"]["floor_psnr_db"] == 25.0
    assert not any("synthetic" in w for w in m["warnings"])  # calibrated on the recorded histories
    assert m["verification"]["observations"] == "held-out recorded histories" and m["verification"]["chunks"] == 2
    q = next(p for p in m["passes"] if p["name"] == "quantize")
    assert q["calibration"]["states"] > 0
    code, text, _ = run_cli("inspect", out)
    assert code == 0 and "int8       full" in text
    fp32 = load(compile_model(str(FIXTURES / "keypoints-ddpm"), tmp_path / "f.dmc", CompileOptions(verify_images=1)))
    a, b = load(out).act(obs, seed=0), fp32.act(obs, seed=0)
    assert a.shape == b.shape == (3, 4, 2) and 0 < np.abs(a - b).max() < 100  # close to FP32, not equal


def test_bad_calibration_observations_are_refused(tmp_path, run_cli):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{"observation.state": np.zeros((4, 2, 2))})  # no environment state
    code, _, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--int8", "--calib-observations", bad,
                           "--out", tmp_path / "x.dmc")
    assert code == 2 and "no array 'observation.environment_state'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.dmc").exists()


def test_warm_start_runs_the_last_k_calls_from_the_previous_plan(compiled):
    from dmc.evaluate.bench import TimedExecutor

    policy = load(compiled["env4-ddim"])
    obs = observations(golden("env4-ddim"))
    with pytest.raises(DmcError, match="previous act"):
        policy.act(obs, warm_start=2)
    cold = policy.act(obs, seed=0)
    policy.pipe.executor = TimedExecutor(policy.pipe.executor)
    warm = policy.act(obs, seed=0, warm_start=3)
    assert [g for g, _ in policy.pipe.executor.records].count("full") == 3  # three denoiser calls, not eight
    assert warm.shape == cold.shape and np.isfinite(warm).all()
    levels = [c.extra["noise_level"] for c in policy.pipe.calls]
    assert all(a ** 2 + s ** 2 == pytest.approx(1.0) for a, s in levels)
    assert levels[-3][0] > levels[0][0]  # the warm start enters at a cleaner level than the cold start
    with pytest.raises(DmcError, match="warm_start must be"):
        policy.act(obs, warm_start=99)


def test_bench_reports_latency_per_chunk_against_the_control_period(compiled, run_cli):
    art = compiled["keypoints-ddpm"]
    code, text, err = run_cli("bench", art, "--repeats", "4", "--warmup", "1", "--control-hz", "1000000")
    assert code == 0, err
    assert "10 model calls per chunk of 4 actions" in text and "MISSES" in text  # 4 us per chunk: impossible
    code, out, err = run_cli("bench", art, "--repeats", "4", "--warmup", "1", "--control-hz", "0.01", "--json",
                             "--warm-start", "2")
    r = json.loads(out)
    assert code == 0 and r["model_calls_per_chunk"] == 2 and r["within_period"] == 1.0 and r["p99_s"] >= r["median_s"]


def test_legacy_layout_with_statistics_in_the_weights_acts_the_same(compiled, tmp_path):
    """LeRobot < 0.4 kept the normaliser's statistics as ``normalize_inputs.buffer_<key>.<stat>`` buffers in
    model.safetensors (no processor files): read from there, the policy acts exactly as with processors."""
    from safetensors.numpy import save_file

    folder = tmp_path / "legacy"
    shutil.copytree(FIXTURES / "env4-ddim", folder)
    stats = load_file(str(next(folder.glob("policy_preprocessor_step_*.safetensors"))))
    for f in folder.glob("policy_*processor*"):
        f.unlink()
    weights = load_file(str(folder / "model.safetensors"))
    for key, value in stats.items():
        feature, _, stat = key.rpartition(".")
        module = "normalize_targets" if feature == "action" else "normalize_inputs"
        weights[f"{module}.buffer_{feature.replace('.', '_')}.{stat}"] = value
        if feature == "action":
            weights[f"unnormalize_outputs.buffer_action.{stat}"] = value
    save_file(weights, str(folder / "model.safetensors"))
    out = compile_model(str(folder), tmp_path / "legacy.dmc", CompileOptions(verify_images=1))
    m = json.loads((out / "manifest.json").read_text())
    assert m["policy"]["normalization_origin"] == "model.safetensors buffers"
    g = golden("env4-ddim")
    legacy = load(out).act(observations(g), noise=g["noise"])
    assert np.array_equal(legacy, load(compiled["env4-ddim"]).act(observations(g), noise=g["noise"]))


@pytest.mark.parametrize("int8", [False, True])
def test_cached_policy_follows_its_schedule(tmp_path, run_cli, int8):
    """DeepCache on the 1D UNet: the full graph also writes the deep feature, the shallow graph reads it
    and skips every deeper level; the runtime runs each call on the graph the schedule names."""
    from dmc.evaluate.bench import TimedExecutor

    out = tmp_path / "c.dmc"
    code, _, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--cache", *(["--int8"] if int8 else []),
                           "--out", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    cache = next(p for p in m["passes"] if p["name"] == "cache")
    assert cache["method"] == "deepcache-1d" and "." in cache["schedule"] and cache["schedule"][0] == "F"
    assert cache["macs_per_image"]["shallow"] < cache["macs_per_image"]["full"]
    assert set(m["graphs"]) == {"full", "shallow", ENCODER_GRAPH}
    v = m["verification"]
    assert v["psnr_db"] >= v["floor_psnr_db"] and 0 < v["vs_fp32_policy_psnr_db"] <= 100
    policy = load(out)
    policy.pipe.executor = TimedExecutor(policy.pipe.executor)
    chunk = policy.act(observations(golden("keypoints-ddpm")), seed=0)
    ran = "".join("F" if g == "full" else "." for g, _ in policy.pipe.executor.records if g != ENCODER_GRAPH)
    assert ran == cache["schedule"] and chunk.shape == (3, 4, 2) and np.isfinite(chunk).all()


@pytest.mark.parametrize("name", ["keypoints-ddpm", "env4-ddim"])
def test_shallow_graph_on_the_fresh_deep_feature_equals_the_full_network(name):
    """A retrieve step fed the feature the full network computes at that very call is the full network."""
    import torch

    from dmc.cache import unet1d
    from dmc.policies.lerobot import read_policy
    from dmc.policies.model import load_denoiser

    denoiser = load_denoiser(read_policy(FIXTURES / name))
    full, shallow, ex, _, macs = unet1d.build_modules(denoiser)
    with torch.inference_mode():
        prediction, deep = full(*ex)
        torch.testing.assert_close(shallow(*ex, deep), prediction, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prediction, denoiser(*ex))
        assert not torch.allclose(shallow(*ex, deep + 1.0), prediction, atol=1e-3)  # the cache is really read
    assert macs["shallow"] < macs["full"]


def test_sampler_and_steps_given_on_the_command_line_override_the_policys(tmp_path, run_cli):
    out = tmp_path / "o.dmc"
    code, _, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--sampler", "ddim", "--steps", "5",
                           "--out", out)
    assert code == 0, err
    recipe = json.loads((out / "manifest.json").read_text())["recipe"]
    assert recipe["sampler"] == "ddim" and recipe["steps"] == 5  # ddim is also the CLI's default: still honoured
    out = tmp_path / "dpm.dmc"
    code, _, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--sampler", "dpm++2m", "--steps", "4",
                           "--out", out)
    assert code == 0, err
    calls = json.loads((out / "manifest.json").read_text())["sampler"]["calls"]
    assert [c["clip"] for c in calls] == [1.0] * 4  # the policy's clip_sample, as its DDPM/DDIM apply it
    chunk = load(out).act(observations(golden("keypoints-ddpm")), seed=0)
    assert np.isfinite(chunk).all()
    code, _, err = run_cli("compress", str(FIXTURES / "keypoints-ddpm"), "--guidance", "2", "--out", tmp_path / "g")
    assert code == 2 and "without guidance" in err
