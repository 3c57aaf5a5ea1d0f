"""Every compiled solver against diffusers' own scheduler loop, over the training-schedule matrix.

Same deterministic "model" (an analytic, non-linear function of the sample and the timestep), same
noise: diffusers runs ``scale_model_input`` / ``step`` on torch tensors starting from
``noise * init_noise_sigma`` as its pipelines do; dmc runs its compiled table with the runtime's
numpy update starting from ``noise``. The timesteps must be identical and the final samples equal
within TOL (relative RMSE). Both loops carry float64 samples (diffusers' coefficients stay float32):
at t=999 of a cosine schedule an epsilon model's data prediction is (x - sigma*eps)/alpha with
1/alpha ~ 2e4, so float32 rounding of the sample, not the table, would dominate there. The runtime's
float32 path is checked separately where the problem is well conditioned (FLOAT32_TOL).
"""

import itertools

import numpy as np
import pytest
import torch

from dmc.errors import DmcError
from dmc.sampling import Recipe, sampler_update
from dmc.sampling.compile import build_scheduler, compile_calls
from dmc.sampling.schedules import PRESETS
from dmc.sampling.solvers import SOLVERS, names

TOL = 1e-5
# A cosine schedule starting at t=999 (trailing/linspace spacing): sigma/alpha ~ 2e4 there, and diffusers'
# own loop rounds to float32 (Euler casts its VE sample of that size; DPM-Solver++ computes its
# coefficients in float32), which costs its result ~1e-4; dmc's float64 tables are not the ones off.
ILL_CONDITIONED_TOL = 3e-4
FLOAT32_TOL = 1e-4
SHAPE = (2, 3, 8, 8)  # batch, channels, height, width


class Denoiser:
    """A stand-in network: a bounded, non-linear data estimate D(x, t), returned in the schedule's
    prediction type. A real denoiser keeps D bounded; a "model" that did not would make a cosine
    schedule's t=999 (sigma/alpha ~ 2e4) amplify float rounding and say nothing about the table."""

    def __init__(self, schedule: dict):
        import inspect

        from diffusers import DDPMScheduler

        self.flow = schedule.get("_class_name", "").startswith("FlowMatch")
        self.kind = "flow_prediction" if self.flow else schedule.get("prediction_type", "epsilon")
        if not self.flow:
            keys = set(inspect.signature(DDPMScheduler.__init__).parameters)
            abar = DDPMScheduler(**{k: v for k, v in schedule.items() if k in keys}).alphas_cumprod.double().numpy()
            self.abar = abar

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        if self.flow:
            alpha, sigma = 1 - t / 1000, t / 1000
        else:
            abar = np.interp(t, np.arange(len(self.abar)), self.abar)
            alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
        x = x.astype(np.float32).astype(np.float64)  # the network sees float32 either way
        d = 0.7 * np.tanh(1.2 * x + 0.3 * np.sin(t / 100.0))
        eps = (x - alpha * d) / max(sigma, 1e-3)
        out = {"epsilon": eps, "sample": d, "v_prediction": alpha * eps - sigma * d,
               "flow_prediction": eps - d}[self.kind]
        return out.astype(np.float32)


def relative_rmse(ours, theirs) -> float:
    return float(np.sqrt(np.mean((ours - theirs) ** 2)) / np.sqrt(np.mean(theirs ** 2)))


def noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE, dtype=np.float32)


def diffusers_loop(recipe: Recipe, schedule: dict, drawn: list | None = None):
    """``drawn`` collects, per step, the noise a stochastic step (DDPM) draws from its generator."""
    import inspect

    sched = build_scheduler(recipe, schedule, SHAPE[1:])
    model = Denoiser(schedule)
    x = torch.from_numpy(noise()).double() * float(getattr(sched, "init_noise_sigma", 1.0))
    gen = torch.Generator().manual_seed(0)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if hasattr(sched, "scale_model_input") else x
        out = torch.from_numpy(model(inp.numpy().astype(np.float32), float(t))).double()
        if drawn is not None:  # what the step's generator would draw next, taken from a copy of its state
            copy = torch.Generator().set_state(gen.get_state())
            drawn.append(torch.randn(x.shape, generator=copy, dtype=x.dtype).numpy())
        kwargs = {"generator": gen} if takes_generator else {}
        x = sched.step(out, t, x, return_dict=False, **kwargs)[0]
    return [float(t) for t in sched.timesteps], x.numpy()


def dmc_loop(recipe: Recipe, schedule: dict, dtype=np.float64, drawn: list | None = None):
    calls = compile_calls(recipe, schedule, SHAPE[1:])
    model = Denoiser(schedule)
    x, history = noise().astype(dtype), []
    for k, call in enumerate(calls):
        out = model(x * call.scale_in, call.timestep).astype(dtype)
        x = sampler_update(call, x, out, history, drawn[k] if drawn else None)
    return [c.timestep for c in calls], x


def assert_same_as_diffusers(recipe: Recipe, schedule: dict, tol: float = TOL):
    drawn: list = []
    try:
        diffusers_loop(recipe, schedule, drawn)
    except (ValueError, NotImplementedError, DmcError):
        drawn = []
    try:
        taus, ours = dmc_loop(recipe, schedule, drawn=drawn)
    except DmcError:  # refused only what diffusers refuses or turns into NaN
        try:
            _, theirs = diffusers_loop(recipe, schedule)
        except (ValueError, NotImplementedError, DmcError):
            return
        assert not np.isfinite(theirs).all(), (recipe, schedule)
        return
    want_taus, theirs = diffusers_loop(recipe, schedule)
    assert taus == pytest.approx(want_taus, abs=1e-3)
    assert np.isfinite(theirs).all() and np.isfinite(ours).all()
    assert relative_rmse(ours, theirs) <= tol, (recipe, schedule, relative_rmse(ours, theirs))


def vp_schedule(beta: str, prediction: str, spacing: str) -> dict:
    leading = spacing == "leading"
    schedule = {"num_train_timesteps": 1000, "beta_schedule": beta, "prediction_type": prediction,
                "timestep_spacing": spacing, "steps_offset": 1 if leading else 0, "set_alpha_to_one": not leading,
                "clip_sample": False}
    if beta == "scaled_linear":
        schedule.update(beta_start=0.00085, beta_end=0.012)
    return schedule


VP_MATRIX = list(itertools.product(("linear", "scaled_linear", "squaredcos_cap_v2"),
                                   ("epsilon", "v_prediction", "sample"), ("leading", "trailing", "linspace")))


@pytest.mark.parametrize("sampler", names("diffusion"))
def test_diffusion_solvers_match_diffusers_over_the_schedule_matrix(sampler):
    for (beta, prediction, spacing), steps in zip(VP_MATRIX, itertools.cycle((5, 7, 10, 20))):
        ill = beta == "squaredcos_cap_v2" and spacing != "leading"
        assert_same_as_diffusers(Recipe(sampler=sampler, steps=steps), vp_schedule(beta, prediction, spacing),
                                 ILL_CONDITIONED_TOL if ill else TOL)


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++3m", "unipc-bh2", "deis3", "euler"])
def test_karras_sigmas_from_the_config_are_followed(sampler):
    schedule = {**vp_schedule("scaled_linear", "epsilon", "leading"), "use_karras_sigmas": True}
    assert_same_as_diffusers(Recipe(sampler=sampler, steps=8), schedule)
    karras = [c.timestep for c in compile_calls(Recipe(sampler=sampler, steps=8), schedule)]
    plain = [c.timestep for c in compile_calls(Recipe(sampler=sampler, steps=8), {**schedule, "use_karras_sigmas": False})]
    assert karras != plain  # the config's use_karras_sigmas reached the table


FLOW_SCHEDULES = {"sd3": PRESETS["sd3"], "flux": PRESETS["flux"],
                  "shift1": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0},
                  "karras": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0,
                             "use_karras_sigmas": True}}


@pytest.mark.parametrize("sampler", names("flow"))
@pytest.mark.parametrize("schedule", FLOW_SCHEDULES)
def test_flow_solvers_match_diffusers(sampler, schedule):
    for steps in (4, 9):
        assert_same_as_diffusers(Recipe(sampler=sampler, steps=steps), FLOW_SCHEDULES[schedule])


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_compiles_with_its_family_and_is_refused_by_the_other(preset):
    schedule = PRESETS[preset]
    family = "flow" if preset in ("sd3", "flux") else "diffusion"
    ok = names(family)[0]
    assert_same_as_diffusers(Recipe(sampler=ok, steps=6), schedule)
    other = names("diffusion" if family == "flow" else "flow")[0]
    with pytest.raises(DmcError, match="choose from"):
        compile_calls(Recipe(sampler=other, steps=6), schedule, SHAPE[1:])


def test_scheduler_is_configured_from_the_training_schedule():
    schedule = vp_schedule("scaled_linear", "v_prediction", "trailing")
    for sampler in names("diffusion"):
        cfg = build_scheduler(Recipe(sampler=sampler, steps=6), schedule).config
        assert cfg.beta_schedule == "scaled_linear" and cfg.beta_end == 0.012
        assert cfg.prediction_type == "v_prediction" and cfg.timestep_spacing == "trailing"
        for key, value in SOLVERS[sampler].forced.items():
            assert cfg[key] == value
    flux = build_scheduler(Recipe(sampler="flow-unipc", steps=6), PRESETS["flux"], (16, 64, 64))
    assert flux.config.use_flow_sigmas and flux.config.flow_shift == 3.0


def test_flow_timesteps_are_sigma_times_1000_and_flow_euler_is_the_plain_update():
    calls = compile_calls(Recipe(sampler="flow-euler", steps=4), PRESETS["sd3"])
    sched = build_scheduler(Recipe(sampler="flow-euler", steps=4), PRESETS["sd3"])
    sigmas = sched.sigmas.numpy()
    assert [c.timestep for c in calls] == pytest.approx(1000 * sigmas[:-1], rel=1e-6)
    for call, s, s_next in zip(calls, sigmas, sigmas[1:]):  # x' = x + (s' - s) v
        assert call.a == pytest.approx(1.0) and call.o == pytest.approx(s_next - s, abs=1e-6)
        assert not call.x_hist and not any(call.out_hist)


def test_call_table_is_per_model_call():
    schedule = vp_schedule("scaled_linear", "epsilon", "leading")
    assert len(compile_calls(Recipe(sampler="heun-karras", steps=6), schedule)) == 11  # 2N-1
    assert len(compile_calls(Recipe(sampler="plms", steps=6), schedule)) == 7  # N+1
    assert len(compile_calls(Recipe(sampler="pndm", steps=6), schedule)) == 15  # N+9
    unipc = compile_calls(Recipe(sampler="unipc-bh2", steps=6), schedule)
    assert len(unipc) == 6 and any(len(c.out_hist) >= 2 for c in unipc)  # corrector: an older output, no extra call


def test_dynamic_shift_depends_on_the_image_size():
    small = compile_calls(Recipe(sampler="flow-euler", steps=4), PRESETS["flux"], (16, 32, 32))
    large = compile_calls(Recipe(sampler="flow-euler", steps=4), PRESETS["flux"], (16, 128, 128))
    assert large[1].timestep > small[1].timestep  # more tokens, more shift toward noise
    with pytest.raises(DmcError, match="dynamically shifted"):
        compile_calls(Recipe(sampler="flow-heun", steps=4), PRESETS["flux"], (16, 32, 32))


@pytest.mark.parametrize("sampler", names("diffusion"))
def test_float32_runtime_path_matches_diffusers(sampler):
    schedule = vp_schedule("scaled_linear", "epsilon", "leading")
    recipe = Recipe(sampler=sampler, steps=10)
    drawn: list = []
    _, theirs = diffusers_loop(recipe, schedule, drawn)
    _, ours = dmc_loop(recipe, schedule, dtype=np.float32, drawn=drawn)
    assert ours.dtype == np.float32 and relative_rmse(ours, theirs) <= FLOAT32_TOL


def test_tables_written_before_the_history_terms_still_load_and_run():
    from dmc.sampling import SamplerCall

    old = {"timestep": 500.0, "d_x": 1.0, "d_out": -0.5, "e_x": 0.0, "e_out": 1.0, "a": 0.9, "b": 0.1,
           "c": [0.2], "clip": None, "graph": "full", "extra": {}}
    call = SamplerCall.from_json(old)
    assert (call.o, call.x_hist, call.out_hist, call.scale_in) == (0.0, [], [], 1.0)
    x, out = noise(1), noise(2)
    want = 0.9 * x + 0.1 * out + 0.2 * (x - 0.5 * out)
    np.testing.assert_allclose(sampler_update(call, x, out, []), want, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["dpm++3m", "unipc-bh1", "deis3", "plms", "euler-karras", "heun-karras"])
def test_demo_unet_through_the_runtime_loop_matches_diffusers(sampler):
    """The real demo network, guided, through dmc's runtime loop (Pipeline, float32) vs diffusers' loop."""
    from dmc.compress.pipeline import reference_pipeline
    from dmc.models.builtin import NULL_CLASS, SCHEDULER_CONFIG
    from dmc.sampling import initial_noise
    from dmc.sampling.calls import default_labels

    recipe = Recipe(sampler=sampler, steps=6, guidance=2.0)
    pipe = reference_pipeline("demo", recipe)
    ours = pipe.sample(3, seed=1)
    net = pipe.executor.modules["full"]
    sched = build_scheduler(recipe, SCHEDULER_CONFIG)
    x = torch.from_numpy(initial_noise(1, 3, net.sample_shape)) * float(sched.init_noise_sigma)
    labels = torch.from_numpy(default_labels(3, 10))
    y = torch.cat([torch.full_like(labels, NULL_CLASS), labels])
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        with torch.no_grad():
            uncond, cond = net(torch.cat([inp, inp]), t.float().repeat(6), y).chunk(2)
        x = sched.step(uncond + 2.0 * (cond - uncond), t, x, return_dict=False)[0]
    assert np.abs(ours).max() > 0.1 and relative_rmse(ours, x.numpy()) <= FLOAT32_TOL


def test_readme_lists_every_sampler_and_preset():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Samplers and training schedules"):]
    for name in list(SOLVERS) + list(PRESETS):
        assert f"`{name}`" in section, name
