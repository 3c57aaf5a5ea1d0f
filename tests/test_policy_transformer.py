"""Diffusion Policy's transformer (DP-T) in LeRobot's saved layout: FP32 equal to the torch policy,
``--int8``, ``--cache`` (BAC per sub-block with bubbling union) and ``--int8 --cache``.

LeRobot ships no transformer policy; dmc reads one saved in its layout with ``"noise_net":
"transformer"`` and ``TransformerForDiffusion``'s parameter names under ``diffusion.transformer.``.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dmc.compress.pipeline import CompileOptions, compile_model
from dmc.errors import DmcError
from dmc.runtimes import load
from dmc.runtimes.policy import ENCODER_GRAPH, normalize

ACTION_TOL = 1e-3  # robot units; actions span ~500


def write_transformer_policy(folder: Path, **config) -> Path:
    from dmc.policies.layout import write_policy

    inputs = {"observation.state": ("STATE", (2,)), "observation.environment_state": ("ENV", (6,))}
    stats = {"observation.state": {"min": np.zeros(2), "max": np.full(2, 512.0)},
             "observation.environment_state": {"min": np.zeros(6), "max": np.full(6, 512.0)},
             "action": {"min": np.array([12.0, 20.0]), "max": np.array([500.0, 490.0])}}
    settings = dict(noise_net="transformer", horizon=8, n_action_steps=4, n_layer=3, n_head=2, n_emb=32,
                    noise_scheduler_type="DDIM", num_inference_steps=6)
    return write_policy(folder, inputs, 2, stats, **{**settings, **config})


def history(seed: int, batch: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.uniform(0, 512, (batch, 2, 2)),
            "observation.environment_state": rng.uniform(0, 512, (batch, 2, 6))}


def torch_act(folder: Path, obs: dict, noise: np.ndarray) -> np.ndarray:
    """The torch policy as LeRobot's ``predict_action_chunk`` runs it, with diffusers' DDIM scheduler."""
    import diffusers

    from dmc.policies.compile import encode
    from dmc.policies.lerobot import read_policy
    from dmc.policies.model import load_denoiser, load_observation_encoder

    spec = read_policy(folder)
    denoiser, encoder = load_denoiser(spec), load_observation_encoder(spec)
    cond = torch.from_numpy(encode(spec, encoder, obs))
    scheduler = diffusers.DDIMScheduler(**{k: v for k, v in spec.schedule.items() if k != "_class_name"})
    scheduler.set_timesteps(spec.inference_steps)
    x = torch.from_numpy(noise)
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps = denoiser(x, torch.full((len(x),), float(t)), cond)
            x = scheduler.step(eps, t, x).prev_sample
    actions = normalize(x.numpy(), spec.normalization["action"], spec.normalization_eps, inverse=True)
    return actions[:, spec.n_obs_steps - 1: spec.n_obs_steps - 1 + spec.n_action_steps]


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory):
    return write_transformer_policy(tmp_path_factory.mktemp("dpt") / "dpt")


def test_explicit_sub_blocks_equal_torchs_decoder_layers():
    """The re-implementation computes each sub-block explicitly (so a cached step can skip it); with
    the same weights it is torch's norm-first ``nn.TransformerDecoder``, which the original runs."""
    from dmc.policies.transformer1d import TransformerForDiffusion

    torch.manual_seed(0)
    net = TransformerForDiffusion(2, 8, 2, 5, n_layer=2, n_head=4, n_emb=32).eval()
    sample, t, cond = torch.randn(3, 8, 2), torch.tensor([3.0, 40.0, 99.0]), torch.randn(3, 2, 5)
    with torch.inference_mode():
        ours = net(sample, t, cond)
        x = net.decoder(tgt=net.embed(sample), memory=net.memory(t, cond), tgt_mask=net.mask,
                        memory_mask=net.memory_mask)
        torch.testing.assert_close(ours, net.out(x), rtol=1e-5, atol=1e-6)
        # causal: the first action token cannot see the last ones
        later = sample.clone()
        later[:, -1] += 1.0
        assert torch.allclose(net(later, t, cond)[:, 0], ours[:, 0], atol=1e-6)
        assert not torch.allclose(net(later, t, cond)[:, -1], ours[:, -1], atol=1e-4)


def test_fp32_transformer_policy_acts_as_the_torch_policy(policy_folder, tmp_path):
    out = compile_model(str(policy_folder), tmp_path / "t.dmc", CompileOptions(verify_images=2))
    m = json.loads((out / "manifest.json").read_text())
    assert m["model"]["class"] == "TransformerForDiffusion" and m["model"]["family"] == "policy-transformer"
    assert m["verification"]["psnr_db"] >= 60
    obs = history(1)
    noise = np.random.default_rng(2).standard_normal((3, 8, 2)).astype(np.float32)
    got = load(out).act(obs, noise=noise)
    want = torch_act(policy_folder, obs, noise)
    assert load(out, threads=2).executor.spinning  # one denoiser graph: ORT's spinning pool helps
    assert got.shape == want.shape == (3, 4, 2)
    assert np.abs(got - want).max() < ACTION_TOL


def test_int8_transformer_policy_quantizes_every_projection(policy_folder, tmp_path, run_cli):
    """--int8 on DP-T: the q/k/v, output, FFN and embedding projections are weight MatMuls (no packed
    in-projection split at run time), so all are quantized; the artifact verifies and acts."""
    out = tmp_path / "q.dmc"
    code, _, err = run_cli("compress", str(policy_folder), "--int8", "--out", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "int8" and m["graphs"]["full"]["precision"] == "int8"
    graph = next(p for p in m["passes"] if p["name"] == "quantize")["graphs"]["full"]
    assert graph["coverage"]["matmul"]["int8"] == graph["requested"]["matmul"] == graph["quantized_layers"]
    assert graph["quantized_layers"] >= 3 * (4 + 4 + 2) - 1  # per layer: SA and CA q/k/v/out, FFN in/out
    assert set(graph["float_islands"]) == {"transformer.input_emb", "transformer.head"}  # PTQ4DM's first/last
    v = m["verification"]
    assert v["psnr_db"] >= v["floor_psnr_db"] and v["vs_fp32_policy_psnr_db"] >= 30
    chunk = load(out).act(history(4), seed=1)
    assert chunk.shape == (3, 4, 2) and np.isfinite(chunk).all()


@pytest.mark.parametrize("int8", [False, True])
def test_bac_caches_dpt_sub_blocks_with_bubbling_union(policy_folder, tmp_path, run_cli, int8):
    """BAC on DP-T (the default at >= 50 calls): a refresh schedule per self-/cross-attention/FFN sub-block,
    the top-error upstream blocks refreshed wherever a later FFN refreshes; the runtime runs each call on
    the graph its pattern names."""
    from dmc.evaluate.bench import TimedExecutor

    out = tmp_path / "c.dmc"
    args = ["--cache", "--cache-schedule", "bac", "--cache-interval", "2", "--bac-bubbling", "2",
            "--cache-variants", "6"] + (["--int8"] if int8 else [])
    code, _, err = run_cli("compress", str(policy_folder), *args, "--out", out)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    cache = next(p for p in m["passes"] if p["name"] == "cache")
    assert cache["method"] == "dpt-blocks" and cache["config"]["schedule"] == "bac"
    assert cache["blocks"][:3] == ["l0.sa", "l0.ca", "l0.ff"] and cache["ffn_blocks"] == [2, 5, 8]
    refresh = np.array(cache["refresh"])
    assert refresh.shape == (6, 9) and refresh[0].all() and cache["cost_ratio"] < 1
    assert 1 < len({tuple(r) for r in refresh}) == cache["distinct_patterns"] <= 6  # per-block schedules differ
    unioned = cache["bubbling"]["blocks"]
    assert len(unioned) == 2
    for u in unioned:  # bubbling union: u refreshes wherever an FFN at its depth or deeper does
        deeper_ffn = [f for f in cache["ffn_blocks"] if f >= u]
        assert (refresh[:, u] >= refresh[:, deeper_ffn].any(axis=1)).all()
    v = m["verification"]
    assert v["psnr_db"] >= v["floor_psnr_db"] and 0 < v["vs_fp32_policy_psnr_db"] <= 100
    assert not load(out, threads=2).executor.spinning  # alternating graphs: idle pools must not spin
    assert load(out, threads=1).executor.spinning
    policy = load(out)
    policy.pipe.executor = TimedExecutor(policy.pipe.executor)
    chunk = policy.act(history(3), seed=0)
    ran = [g for g, _ in policy.pipe.executor.records if g != ENCODER_GRAPH]
    assert ran == [c["graph"] for c in m["sampler"]["calls"]] and chunk.shape == (3, 4, 2) and np.isfinite(chunk).all()


def test_auto_cache_schedule_is_bac_only_with_many_calls():
    from dmc.cache.pass_ import AUTO

    assert AUTO["policy-transformer"](100) == "bac" and AUTO["policy-transformer"](10) == "dp"


def test_cached_step_on_fresh_caches_is_the_denoiser(policy_folder):
    """A step that reads every sub-block from cache, fed the outputs the full step computes at that same
    call, is the full network; fed other caches it is not (the caches are really read)."""
    from dmc.cache.policy_blocks import PolicyCachedStep, example_inputs
    from dmc.policies.lerobot import read_policy
    from dmc.policies.model import load_denoiser

    denoiser = load_denoiser(read_policy(policy_folder))
    full = PolicyCachedStep(denoiser, [True] * 9)
    none = PolicyCachedStep(denoiser, [False] * 9)
    base = example_inputs(full)
    with torch.inference_mode():
        prediction, *caches = full(*base)
        torch.testing.assert_close(prediction, denoiser(*base))
        torch.testing.assert_close(none(*base, *caches), prediction, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(none(*base, *[c + torch.randn_like(c) for c in caches]), prediction, atol=1e-3)


def test_transformer_layout_is_checked(tmp_path):
    from safetensors.torch import load_file, save_file

    from dmc.policies.lerobot import read_policy
    from dmc.policies.model import load_denoiser

    folder = write_transformer_policy(tmp_path / "mask")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_cond_layers": 2}))
    with pytest.raises(DmcError, match="n_cond_layers=2 is not supported"):
        read_policy(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    weights["diffusion.transformer.mask"] = torch.zeros(8, 8)  # not causal: disagrees with causal_attn
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(DmcError, match="mask differs"):
        load_denoiser(read_policy(folder))
