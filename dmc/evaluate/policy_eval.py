"""``dmc eval POLICY``: a policy judged by task success, in closed loop, without torch.

Each episode starts from a seeded state of a simulated task; the artifact acts on the observation
history, its first ``n_action_steps`` actions run, it re-plans. The success rate over the episodes
comes with its 95 % Wilson interval. With ``--reference`` (e.g. the FP32 artifact of the same
policy) the action error is measured on the histories the episodes visited, both artifacts drawing
the same initial noise: how far the compressed policy's actions move, apart from whether the task
still succeeds.

Tasks are a registry (``TASKS``): a module with ``STATE_KEY``, ``STATE_DIM``, ``ACTION_DIM``,
``rollout(act, seed, n_obs_steps, n_action_steps)`` and ``wilson_interval``.
"""

from __future__ import annotations

import importlib
import itertools
import sys

import numpy as np

from dmc.errors import DmcError

TASKS = {"reach-push": "dmc.policies.demo_task"}
DEFAULT_TASK = "reach-push"
DEFAULT_EPISODES = 50
DEFAULT_SEED = 1000  # the demo policy's demonstrations use seeds below this: evaluation is held out
ACTION_SAMPLES = 64  # histories the action error is measured on


def task_module(name: str):
    if name not in TASKS:
        raise DmcError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    return importlib.import_module(TASKS[name])


def check_fits(policy, task, name: str, artifact) -> None:
    """The policy must observe and act what the task gives and takes."""
    obs = [(o["key"], list(o["shape"])) for o in policy.spec["observations"]]
    want = [(task.STATE_KEY, [task.STATE_DIM])]
    action = list(policy.spec["action"]["shape"])
    if obs != want or action != [task.ACTION_DIM]:
        raise DmcError(f"{artifact}: task {name} observes {want[0][0]} {want[0][1]} and takes actions "
                       f"[{task.ACTION_DIM}]; this policy observes {obs} and acts {action}")


def evaluate_policy(artifact: str, episodes: int = DEFAULT_EPISODES, seed: int = DEFAULT_SEED,
                    task: str = DEFAULT_TASK, reference: str | None = None, threads: int | None = None,
                    progress: bool = False) -> dict:
    from dmc.runtimes import load

    if episodes < 1:
        raise DmcError(f"--episodes must be >= 1, got {episodes}")
    module = task_module(task)
    policy = load(artifact, threads=threads)
    check_fits(policy, module, task, artifact)
    ref = None
    if reference is not None:
        ref = load(reference, threads=threads)
        check_fits(ref, module, task, reference)
    visited: list[dict] = []
    results = []
    for e in range(episodes):
        chunks = itertools.count()  # chunk j of episode e draws its noise from seed (seed + e) * 1000 + j
        episode_seed = seed + e

        def act(history, episode_seed=episode_seed, chunks=chunks):
            visited.append({k: np.array(v) for k, v in history.items()})
            return policy.act(history, seed=episode_seed * 1000 + next(chunks))

        results.append(module.rollout(act, episode_seed, policy.n_obs_steps, policy.n_action_steps))
        if progress:
            done = sum(r["success"] for r in results)
            print(f"\r[dmc] episodes {e + 1}/{episodes}: {done} successes", end="", flush=True, file=sys.stderr)
    if progress:
        print(flush=True, file=sys.stderr)
    successes = int(sum(r["success"] for r in results))
    low, high = module.wilson_interval(successes, episodes)
    doc = {"format": "dmc-eval", "format_version": 1, "kind": "policy", "artifact": str(artifact), "task": task,
           "episodes": episodes, "seed": seed,
           "rollout": {"successes": successes, "success_rate": successes / episodes, "ci_low": low, "ci_high": high,
                       "interval": "95% Wilson score", "mean_steps": float(np.mean([r["steps"] for r in results])),
                       "mean_final_distance": float(np.mean([r["final_distance"] for r in results])),
                       "per_episode": [bool(r["success"]) for r in results]},
           "actions": None, "reference": None, "warnings": []}
    if ref is not None:
        doc["reference"] = {"path": str(reference)}
        doc["actions"] = action_error(policy, ref, visited, seed)
    return doc


def action_error(policy, ref, visited: list[dict], seed: int) -> dict:
    """Actions of both artifacts on the same histories and initial noise: RMSE and worst error in the
    robot's units, PSNR on the normalised action range ([-1, 1], peak-to-peak 2)."""
    pick = np.linspace(0, len(visited) - 1, min(ACTION_SAMPLES, len(visited))).round().astype(int)
    batch = {k: np.stack([visited[i][k] for i in pick]) for k in visited[0]}
    got, want = policy.act(batch, seed=seed), ref.act(batch, seed=seed)
    norm = policy.spec["normalization"][policy.spec["action"]["key"]]
    half_range = (np.asarray(norm["max"], np.float64) - np.asarray(norm["min"], np.float64)) / 2 \
        if norm["mode"] == "MIN_MAX" else np.asarray(norm.get("std", 1.0), np.float64)
    diff = (got.astype(np.float64) - want) / half_range
    mse = float(np.mean(diff ** 2))
    return {"histories": len(pick), "rmse": float(np.sqrt(np.mean((got - want) ** 2))),
            "max_abs": float(np.abs(got - want).max()),
            "psnr_db": 100.0 if mse == 0 else float(min(100.0, 10 * np.log10(4.0 / mse)))}


def format_policy_eval(r: dict) -> str:
    ro = r["rollout"]
    lines = [f"policy     {r['artifact']} on {r['task']}: {r['episodes']} episodes from seed {r['seed']}",
             f"success    {ro['successes']}/{r['episodes']} = {ro['success_rate']:.1%} "
             f"(95% Wilson [{ro['ci_low']:.1%}, {ro['ci_high']:.1%}]); mean {ro['mean_steps']:.1f} steps, "
             f"final distance {ro['mean_final_distance']:.3f}"]
    if r.get("actions"):
        a = r["actions"]
        lines.append(f"actions    vs {r['reference']['path']}, same noise, {a['histories']} visited histories: "
                     f"RMSE {a['rmse']:.4g}, max {a['max_abs']:.4g} (robot units), PSNR {a['psnr_db']:.1f} dB")
    return "\n".join(lines)
