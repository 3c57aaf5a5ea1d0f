"""DPM-Solver-v3: with trivial statistics its table is DPM-Solver++ (diffusers' 2M, heun form); with
statistics computed from a model it stays a valid sampler and is more accurate at few calls."""

import math

import numpy as np
import pytest

from dmc.sampling import sampler_update
from dmc.sampling.calls import SamplerCall
from dmc.sampling.v3 import Stats, compute_stats, v3_calls

# v3's integrals are 12-point Gauss-Legendre; with trivial statistics the integrand is e^lambda times a
# polynomial, so the quadrature is exact to ~1e-12; what remains (~5e-7 measured) is diffusers' float32
# sigmas and coefficients, the same 1e-5 relative tolerance tests/test_solvers.py uses.
TOL = 1e-5
SHAPE = (2, 3, 8, 8)


def vp_abar():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012).alphas_cumprod.double().numpy()


ABAR = vp_abar()


def denoise(x, t):
    """A bounded non-linear data prediction, per-channel different."""
    w = np.array([1.2, 0.8, 1.5]).reshape(1, 3, 1, 1)
    return 0.7 * np.tanh(w * x + 0.3 * np.sin(t / 100.0))


def eps_model(x, t):
    abar = np.interp(t, np.arange(1000), ABAR)
    return (x - math.sqrt(abar) * denoise(x, t)) / math.sqrt(1 - abar)


def run(calls, x):
    history = []
    for call in calls:
        x = sampler_update(call, x, eps_model(x, call.timestep), history)
    return x


def diffusers_heun(steps, x):
    import torch
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        solver_order=2, solver_type="heun", algorithm_type="dpmsolver++",
                                        lower_order_final=False, final_sigmas_type="sigma_min",
                                        timestep_spacing="trailing")
    sched.set_timesteps(steps)
    xt = torch.from_numpy(x)
    for t in sched.timesteps:
        out = torch.from_numpy(eps_model(xt.numpy(), float(t)))
        xt = sched.step(out, t, xt, return_dict=False)[0]
    lambdas = [-math.log(float(s)) for s in sched.sigmas]
    return [float(t) for t in sched.timesteps], lambdas, xt.numpy()


@pytest.mark.parametrize("steps", [5, 8])
def test_trivial_statistics_reduce_to_dpm_solver_pp(steps):
    x0 = np.random.default_rng(0).standard_normal(SHAPE)
    taus, lambdas, theirs = diffusers_heun(steps, x0)
    ours = run(v3_calls(taus, lambdas, "epsilon", Stats.trivial(3), order=2, corrector=False), x0)
    rel = np.sqrt(np.mean((ours - theirs) ** 2) / np.mean(theirs ** 2))
    assert rel <= TOL, rel


def test_rows_round_trip_through_json():
    x0 = np.random.default_rng(1).standard_normal(SHAPE)
    taus, lambdas, _ = diffusers_heun(5, x0)
    calls = v3_calls(taus, lambdas, "epsilon", Stats.trivial(3), order=3, corrector=True)
    again = [SamplerCall.from_json(c.to_json()) for c in calls]
    np.testing.assert_array_equal(run(calls, x0), run(again, x0))


def lam_of_t(t):
    abar = np.interp(t, np.arange(1000), ABAR)
    return 0.5 * math.log(abar / (1 - abar))


def t_of_lam(lam):
    lams = 0.5 * np.log(ABAR / (1 - ABAR))  # decreasing in t
    return float(np.interp(lam, lams[::-1], np.arange(1000)[::-1]))


def test_model_statistics_improve_few_call_accuracy_and_are_bounded():
    grid = np.linspace(lam_of_t(999), lam_of_t(0), 40)
    stats = compute_stats(denoise, SHAPE[1:], grid, t_of_lam, n_samples=8, seed=0)
    assert stats.info["model_evaluations"] == 3 * 8 * 40 and stats.l.shape == (40, 3)
    assert np.ptp(stats.l[-1]) > 0.05  # per-channel Jacobians differ (w = 1.2, 0.8, 1.5)
    x0 = np.random.default_rng(2).standard_normal(SHAPE)
    taus_ref, lam_ref, ref = diffusers_heun(200, x0)
    taus, lambdas, _ = diffusers_heun(5, x0)
    plain = run(v3_calls(taus, lambdas, "epsilon", Stats.trivial(3)), x0)
    v3 = run(v3_calls(taus, lambdas, "epsilon", stats), x0)
    err = lambda y: float(np.sqrt(np.mean((y - ref) ** 2)))
    assert np.isfinite(v3).all() and err(v3) < err(plain), (err(v3), err(plain))


def test_inspect_table_shows_per_channel_terms():
    """``dmc inspect`` rows name each per-channel term with its shape and range, not a blank line."""
    from dmc.sampling.solvers import table_lines, table_rows

    x0 = np.random.default_rng(1).standard_normal(SHAPE)
    taus, lambdas, _ = diffusers_heun(5, x0)
    stats = compute_stats(denoise, SHAPE[1:], np.linspace(lam_of_t(999), lam_of_t(1), 8), t_of_lam,
                          n_samples=2, seed=0)
    calls = v3_calls(taus, lambdas, "epsilon", stats, order=2, corrector=True)
    rows = table_rows(calls)
    per_channel = [r for r, c in zip(rows, calls) if c.channel]
    assert per_channel, "model statistics should give per-channel rows"
    for row, call in zip(rows, calls):
        if not call.channel:
            continue
        assert row["ch.a"].startswith(f"{SHAPE[1]}ch[")
        lo, hi = min(call.channel["a"]), max(call.channel["a"])
        assert f"{lo:.4g}" in row["ch.a"] and f"{hi:.4g}" in row["ch.a"]
    lines = table_lines(rows)
    assert len(lines) == len(calls) + 1 and all("ch.a=" in lines[1 + k] for k, c in enumerate(calls) if c.channel)
