"""``dmc bench POLICY``: latency per action chunk (median, p99) against the robot's control period.

A chunk of ``n_action_steps`` actions must be ready before the robot has executed the previous one:
at ``--control-hz`` f that is ``n_action_steps / f`` seconds. Observation histories are synthetic
(uniform over each feature's normalised range; images in [0, 1]) and seeded, so two artifacts of one
policy time the same inputs. ``--warm-start K`` times ``act(warm_start=K)`` after a first cold chunk.
"""

from __future__ import annotations

import time

import numpy as np


def synthetic_observations(policy, n: int, seed: int) -> dict[str, np.ndarray]:
    from dmc.runtimes.policy import normalize

    rng = np.random.default_rng([seed, 0xAC7])
    spec, out = policy.spec, {}
    for o in spec["observations"]:
        shape = (n, policy.n_obs_steps, *o["shape"])
        if o["type"] == "VISUAL":
            out[o["key"]] = rng.uniform(0, 1, shape).astype(np.float32)
        else:
            unit = rng.uniform(-1, 1, shape).astype(np.float32)
            out[o["key"]] = normalize(unit, spec["normalization"][o["key"]], spec["normalization_eps"], inverse=True)
    return out


def benchmark_policy(artifact: str, repeats: int = 20, warmup: int = 2, threads: int | None = None, seed: int = 0,
                     control_hz: float | None = None, warm_start: int | None = None) -> dict:
    from dmc.runtimes import load

    policy = load(artifact, threads=threads)
    obs = synthetic_observations(policy, warmup + repeats, seed)
    times = []
    for i in range(warmup + repeats):
        history = {k: v[i] for k, v in obs.items()}
        warm = warm_start if warm_start is not None and i > 0 else None
        t = time.perf_counter()
        policy.act(history, seed=seed + i, warm_start=warm)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    calls = warm_start if warm_start is not None else len(policy.pipe.calls)
    median = float(np.median(times))
    result = {"format": "dmc-bench", "format_version": 1, "artifact": str(artifact), "kind": "policy",
              "chunks": repeats, "warmup": warmup, "model_calls_per_chunk": calls,
              "n_action_steps": policy.n_action_steps, "threads": threads,
              "median_s": median, "p90_s": float(np.percentile(times, 90)), "p99_s": float(np.percentile(times, 99)),
              "max_s": float(np.max(times)),
              "noise": (float(np.percentile(times, 90)) - median) / median}  # relative p90-median spread
    if control_hz:
        period = policy.n_action_steps / control_hz
        result.update({"control_hz": control_hz, "period_s": period,
                       "within_period": float(np.mean(np.array(times) <= period))})
    return result


def format_policy_bench(r: dict) -> str:
    lines = [f"policy     {r['artifact']}: {r['model_calls_per_chunk']} model calls per chunk of "
             f"{r['n_action_steps']} actions, {r['chunks']} chunks",
             f"latency    median {r['median_s'] * 1e3:.1f} ms, p99 {r['p99_s'] * 1e3:.1f} ms, max {r['max_s'] * 1e3:.1f} ms "
             "per chunk"]
    if "period_s" in r:
        verdict = "fits" if r["within_period"] == 1.0 else "MISSES"
        lines.append(f"control    {r['control_hz']:g} Hz: a chunk is due every {r['period_s'] * 1e3:.0f} ms; "
                     f"{r['within_period']:.0%} of chunks in time ({verdict})")
    return "\n".join(lines)
