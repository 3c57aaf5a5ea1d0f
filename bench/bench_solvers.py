#!/usr/bin/env python
"""Sample quality per compiled solver at a budget of model calls, from a common start (issue #15, item 5).

Every run starts at the same timestep (t=950) from the same noise: the demo's cosine training
schedule is cut to its first 951 betas (``trained_betas``, identical alpha_bar) with "trailing"
spacing, so each solver's first call is at t=950 whatever its step count ("leading" spacing
started 5 calls at t=800 and 20 at t=950, which made the errors incomparable; t=999 has
alpha_bar ~ 1e-6, where an unclipped data prediction blows up on this pixel model).

Rows: every diffusion solver of the registry, DPM-Solver-v3 (EMS from the model itself, bounded
samples x grid, cost reported) and the searched schedule (``dmc.sampling.search``; searched on its
own seeds, scored on the held-out evaluation seeds). Scores against a 200-call DPM-Solver++(2M) of
the same noise and labels: paired PSNR (images clipped to [-1, 1], on the [0, 1] scale) and the
Frechet distance in the pluggable extractor's features (default: the shipped digits classifier).
A solver whose calls per step do not divide the budget gets the largest step count that fits.

    nice python bench/bench_solvers.py --model demo --n 64 --out bench/results/solvers_demo.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

CALLS = (4, 5, 6, 8, 10, 15, 20)
START = 950


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    rmse = np.sqrt(np.mean((np.clip(a, -1, 1) - np.clip(b, -1, 1)) ** 2)) / 2
    return float("inf") if rmse == 0 else float(-20 * np.log10(rmse))


def common_start_schedule(base: dict) -> dict:
    from diffusers import DDPMScheduler

    betas = DDPMScheduler(**{k: v for k, v in base.items() if k in ("num_train_timesteps", "beta_schedule")}).betas
    return {**base, "trained_betas": betas[:START + 1].double().tolist(), "num_train_timesteps": START + 1,
            "timestep_spacing": "trailing", "steps_offset": 0}


def steps_for(sampler: str, calls: int, schedule: dict) -> int | None:
    from dmc.errors import DmcError
    from dmc.sampling import Recipe
    from dmc.sampling.compile import compile_calls

    for steps in range(calls, 0, -1):
        try:
            if len(compile_calls(Recipe(sampler=sampler, steps=steps), schedule)) <= calls:
                return steps
        except DmcError:
            return None
    return None


def model_fn(pipe, guidance: float):
    """(x, t) -> the guided model output, labels cycling 0..9 over the batch (as the pipeline does)."""
    from dmc.sampling.calls import default_labels, guide

    ex = pipe.executor

    def fn(x, t):
        n = len(x)
        labels = default_labels(n, 10)
        xin = x.astype(np.float32)
        feeds = {"sample": np.concatenate([xin, xin]), "timestep": np.full(2 * n, t, dtype=np.float32),
                 "class_labels": np.concatenate([np.full(n, pipe.cond["null_class"], dtype=np.int64), labels])}
        return guide(ex.to_numpy(ex.run("full", feeds)[0]).astype(np.float64), n, guidance)
    return fn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--n", type=int, default=64, help="evaluation images per row (held-out seeds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-n", type=int, default=16, help="search-set images (their own seeds)")
    ap.add_argument("--search-candidates", type=int, default=120)
    ap.add_argument("--ems-samples", type=int, default=16)
    ap.add_argument("--ems-grid", type=int, default=48)
    ap.add_argument("--calls", default=",".join(map(str, CALLS)))
    ap.add_argument("--extractor", default=None, help="feature extractor for the Frechet distance")
    ap.add_argument("--out", default="bench/results/solvers.json")
    args = ap.parse_args()
    budgets = [int(c) for c in args.calls.split(",")]

    import torch

    from dmc.compress.pipeline import reference_pipeline
    from dmc.evaluate.features import load_extractor
    from dmc.evaluate.frechet import frechet_distance
    from dmc.models.builtin import SCHEDULER_CONFIG
    from dmc.sampling import Recipe, initial_noise
    from dmc.sampling.search import Plan, ScheduleSearch
    from dmc.sampling.solvers import names
    from dmc.sampling.v3 import compute_stats, v3_calls

    torch.set_num_threads(1)
    started = time.time()
    guidance = 2.0
    schedule = common_start_schedule(SCHEDULER_CONFIG)
    extractor = load_extractor(args.extractor)
    feats = lambda imgs: extractor(np.transpose((np.clip(imgs, -1, 1) + 1) / 2, (0, 2, 3, 1)))

    def pipe_for(sampler, steps):
        return reference_pipeline(args.model, Recipe(sampler=sampler, steps=steps, guidance=guidance),
                                  training_schedule=schedule)

    ref_pipe = pipe_for("dpm++2m", 200)
    reference = ref_pipe.sample(args.n, seed=args.seed)
    ref_feats = feats(reference)
    assert ref_pipe.calls[0].timestep == START

    def score(got):
        return {"psnr_db": round(psnr(got, reference), 2), "fd": round(frechet_distance(feats(got), ref_feats), 3)}

    rows = []
    for sampler in names("diffusion"):
        for calls in budgets:
            steps = steps_for(sampler, calls, schedule)
            if steps is None:
                rows.append({"sampler": sampler, "calls": calls, "steps": None})
                continue
            pipe = pipe_for(sampler, steps)
            rows.append({"sampler": sampler, "calls": calls, "steps": steps, "used_calls": len(pipe.calls),
                         "first_timestep": pipe.calls[0].timestep, **score(pipe.sample(args.n, seed=args.seed))})
            print(rows[-1], flush=True)

    # DPM-Solver-v3 and the searched schedule, on the same alpha_bar, from the same start
    abar = ref_pipe_abar = np.cumprod(1 - np.asarray(schedule["trained_betas"]))
    lam = lambda t: 0.5 * math.log(abar[t] / (1 - abar[t]))
    lams_all = np.array([lam(t) for t in range(START + 1)])
    t_of = lambda v: float(np.interp(v, lams_all[::-1], np.arange(START + 1)[::-1]))
    fn = model_fn(ref_pipe, guidance)
    shape = tuple(reference.shape[1:])

    def denoise(x, t):
        a = abar[int(round(t))] if float(t).is_integer() else np.interp(t, np.arange(START + 1), abar)
        return (x - math.sqrt(1 - a) * fn(x, t)) / math.sqrt(a)

    t0 = time.time()
    stats = compute_stats(denoise, shape, np.linspace(lam(START), lam(0), args.ems_grid), t_of,
                          n_samples=args.ems_samples, seed=args.seed)
    print("EMS", stats.info, flush=True)
    search_noise = initial_noise(args.seed + 1000, args.search_n, shape).astype(np.float64)
    probe = ScheduleSearch(fn, abar, "epsilon", search_noise, search_noise, start=START)
    search_ref = probe.sample(probe.fixed_candidates(200)["dpm++2m uniform-t"], search_noise)
    searches = {}
    for calls in budgets:
        searcher = ScheduleSearch(fn, abar, "epsilon", search_noise, search_ref, start=START)
        uniform = searcher.fixed_candidates(calls)["dpm++2m uniform-logsnr"]
        v3_plan = Plan(uniform.timesteps, (2,) * calls, (True,) * calls)
        v3 = v3_calls([float(t) for t in v3_plan.timesteps], [lam(t) for t in v3_plan.timesteps] + [math.inf],
                      "epsilon", stats, order=2, corrector=True)
        pipe = pipe_for("dpm++2m", calls)
        pipe.calls = v3
        rows.append({"sampler": "dpm-v3 (EMS)", "calls": calls, "steps": calls, "used_calls": calls,
                     "first_timestep": START, **score(pipe.sample(args.n, seed=args.seed))})
        print(rows[-1], flush=True)
        result = searcher.run(calls, max_candidates=args.search_candidates)
        searches[calls] = result.to_json()
        pipe.calls = searcher.table(result.plan)
        rows.append({"sampler": "searched", "calls": calls, "steps": calls, "used_calls": calls,
                     "first_timestep": START, "improved": result.improved, "best_fixed": result.best_fixed,
                     **score(pipe.sample(args.n, seed=args.seed))})
        print(rows[-1], result.to_json(), flush=True)
    result = {"model": args.model, "images": args.n, "seed": args.seed, "guidance": guidance, "start": START,
              "reference": "dpm++2m, 200 calls, trailing from t=950", "ems": stats.info,
              "search_seconds_total": round(time.time() - t0, 1), "searches": searches,
              "extractor": getattr(extractor, "name", str(args.extractor)),
              "seconds": round(time.time() - started, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    print("| solver | " + " | ".join(f"{c} calls" for c in budgets) + " |")
    print("| --- |" + " --- |" * len(budgets))
    for sampler in samplers:
        cells = []
        for calls in budgets:
            r = next(r for r in rows if r["sampler"] == sampler and r["calls"] == calls)
            cells.append("—" if r.get("psnr_db") is None else f"{r['psnr_db']:.1f} / {r['fd']:.2f}"
                         + (f" ({r['used_calls']})" if r["used_calls"] != r["calls"] else ""))
        print(f"| `{sampler}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
