"""DiT-S/2 latency with a real (non-uniform) BAC pattern: the demo-dit BAC schedule transplanted.

On random weights every block gets the same BAC schedule (2 graphs), so this compiles the
random DiT-S/2 with demo-dit's "BAC M=7 BU n=3" schedule, layer i of DiT-S taking demo layer
i // 2 (same 16 distinct per-call patterns), and times it interleaved with the uncached and
uniform artifacts compiled by cache_dit_bench.py.

    python bench/bench_cache_dit_transplant.py --out /tmp/cd/bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from dmc.artifact import read_manifest  # noqa: E402
from dmc.cache.dit_blocks import build_dit_cache  # noqa: E402
from dmc.cache.schedules import distinct_rows  # noqa: E402
from dmc.compress.passes import register_pass  # noqa: E402
from dmc.compress.pipeline import CompileOptions, compile_model  # noqa: E402
from dmc.runtimes import load  # noqa: E402
from dmc.sampling import Recipe  # noqa: E402


@dataclass
class Fixed:
    refresh: np.ndarray


@register_pass("cache", Fixed)
def _install(ctx, cfg):
    build_dit_cache(ctx, cfg, cfg.refresh)
    ctx.passes.append({"name": "cache", "method": "dit-blocks (fixed schedule)",
                       "refresh": cfg.refresh.tolist()})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/cd/bench")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(args.out)
    demo = read_manifest(root / "demo-BAC_M_7_BU_n_3.dmc", verify=False)
    small = np.asarray(next(p for p in demo.data["passes"] if p["name"] == "cache")["refresh"], dtype=bool)
    cols = [2 * (i // 2) + j for i in range(12) for j in (0, 1)]
    refresh = small[:, cols]
    out = root / "dit-s2-BAC_M_7_BU_n_3_transplanted.dmc"
    if not out.exists():
        t0 = time.time()
        compile_model(str(root / "dit-s2-random"), out,
                      CompileOptions(recipe=Recipe(steps=20, guidance=2.0), passes=[Fixed(refresh)], verify_images=1,
                                      scheduler_preset="ddpm-linear"))
        print(f"compiled in {time.time() - t0:.0f} s", flush=True)
    print(f"{len(distinct_rows(refresh)[0])} patterns, branches run {refresh.mean():.3f}", flush=True)
    names = {"fp32": "dit-s2-fp32.dmc", "uniform N=2": "dit-s2-uniform_N_2.dmc",
             "uniform N=3": "dit-s2-uniform_N_3.dmc", "BAC transplanted": out.name}
    pipes = {k: load(root / v, threads=1) for k, v in names.items()}
    for p in pipes.values():
        p.sample(1, seed=0)
    times = {k: [] for k in names}
    order = list(names)
    for rnd in range(args.rounds):
        for k in order[rnd % len(order):] + order[:rnd % len(order)]:
            t0 = time.perf_counter()
            pipes[k].sample(1, seed=0)
            times[k].append(time.perf_counter() - t0)
    res = {k: {"median_ms": 1000 * statistics.median(v),
               "speedup": statistics.median([b / x for b, x in zip(times["fp32"], v)]),
               "all_ms": [round(1000 * x) for x in v]} for k, v in times.items()}
    res["BAC transplanted"].update(patterns=len(distinct_rows(refresh)[0]), branch_fraction=float(refresh.mean()))
    (root / "dit-s2-transplant.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
