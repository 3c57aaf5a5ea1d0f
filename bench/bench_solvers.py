#!/usr/bin/env python
"""Sample quality per compiled solver at a budget of model calls (issue #15, a first step to item 5).

The demo UNet (torch, the runtime's own sampler loop, guidance 2, the demo's training schedule)
samples the same seeds with every diffusion solver of the registry at 5, 10 and 20 model calls;
each is scored by paired PSNR (images clipped to [-1, 1], on the [0, 1] scale) against a
200-call DPM-Solver++(2M) reference of the same noise and labels. A solver whose calls per step
do not divide the budget gets the largest step count that fits (heun: 2N-1 calls, plms: N+1,
pndm: N+9, so pndm has no 5-call entry).

    nice python bench/bench_solvers.py --n 64 --out bench/results/solvers.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CALLS = (5, 10, 20)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    rmse = np.sqrt(np.mean((np.clip(a, -1, 1) - np.clip(b, -1, 1)) ** 2)) / 2
    return float("inf") if rmse == 0 else float(-20 * np.log10(rmse))


def steps_for(sampler: str, calls: int, schedule: dict) -> int | None:
    """The most scheduler steps whose table has at most ``calls`` model calls."""
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64, help="images per solver")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/solvers.json")
    args = ap.parse_args()

    import torch

    from dmc.compress.pipeline import reference_pipeline
    from dmc.models.builtin import SCHEDULER_CONFIG
    from dmc.sampling import Recipe
    from dmc.sampling.solvers import names

    torch.set_num_threads(1)
    started = time.time()
    reference = reference_pipeline("demo", Recipe(sampler="dpm++2m", steps=200, guidance=2.0)).sample(
        args.n, seed=args.seed)
    rows = []
    for sampler in names("diffusion"):
        for calls in CALLS:
            steps = steps_for(sampler, calls, SCHEDULER_CONFIG)
            if steps is None:
                rows.append({"sampler": sampler, "calls": calls, "steps": None, "psnr_db": None})
                continue
            pipe = reference_pipeline("demo", Recipe(sampler=sampler, steps=steps, guidance=2.0))
            got = pipe.sample(args.n, seed=args.seed)
            rows.append({"sampler": sampler, "calls": calls, "steps": steps, "used_calls": len(pipe.calls),
                         "psnr_db": round(psnr(got, reference), 2)})
            print(rows[-1], flush=True)
    result = {"model": "demo", "images": args.n, "seed": args.seed, "guidance": 2.0,
              "reference": "dpm++2m, 200 calls", "seconds": round(time.time() - started, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| sampler | " + " | ".join(f"{c} calls" for c in CALLS) + " |")
    print("| --- |" + " --- |" * len(CALLS))
    for sampler in names("diffusion"):
        cells = []
        for r in (r for r in rows if r["sampler"] == sampler):
            cells.append("—" if r["psnr_db"] is None else
                         f"{r['psnr_db']:.2f}" + (f" ({r['used_calls']})" if r["used_calls"] != r["calls"] else ""))
        print(f"| `{sampler}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
