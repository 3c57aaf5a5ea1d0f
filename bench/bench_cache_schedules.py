"""Cache schedules side by side at equal numbers of full computations (issue #12, item 5).

    python bench/bench_cache_schedules.py --models demo demo-dit --out bench/results/cache_schedules.jsonl

For each model: the FP32 artifact and one artifact per schedule, all compiled with the real
cache pass through ``compile_model`` (recipe: dpm++2m 20 steps, the models' default guidance),
every one with 7 refreshes of 20 calls per cache point (uniform N=3; DP at N=3; BAC, router and
their forecasts with budget 7), except the two rows with HarmoniCa's threshold rule, whose compute
follows α. DiT rows can refresh more than their budget: BAC's bubbling union and the cap of 4
distinct per-call graphs add refreshes (the cost column is the fraction of branch computations run). Quality is ``dmc eval`` against the model itself (torch FP32,
same seeds): paired PSNR and the Fréchet distance with its bootstrap interval. The router's
training time is reported separately (it is part of the compile).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dmc.cache import CacheConfig
from dmc.compress.pipeline import CompileOptions, compile_model
from dmc.evaluate.evaluate import evaluate
from dmc.sampling import Recipe

STEPS, INTERVAL, BUDGET = 20, 3, 7


def variants() -> dict[str, list]:
    cc = CacheConfig
    return {
        "fp32": [],
        "uniform N=3": [cc(schedule="uniform", interval=INTERVAL)],
        "CacheQuant DP N=3": [cc(schedule="dp", interval=INTERVAL)],
        "BAC M=7": [cc(schedule="bac", budget=BUDGET)],
        "router M=7 (HarmoniCa)": [cc(schedule="router", budget=BUDGET)],
        "uniform N=3 + forecast 1": [cc(schedule="uniform", interval=INTERVAL, method="forecast", order=1)],
        "uniform N=3 + forecast 2": [cc(schedule="uniform", interval=INTERVAL, method="forecast", order=2)],
        "router M=7 + forecast 1": [cc(schedule="router", budget=BUDGET, method="forecast", order=1)],
        # HarmoniCa's own rule (compute where r > θ): the compute follows α, not a budget
        "router r>0.5, alpha 1e-2": [cc(schedule="router", router_threshold=0.5, router_alpha=1e-2)],
        "router r>0.5, alpha 3e-2": [cc(schedule="router", router_threshold=0.5, router_alpha=3e-2)],
    }


def run(model: str, work: Path, n: int, only: list[str] | None, out_file: Path | None,
        router: dict | None = None) -> list[dict]:
    """``router``: CacheConfig overrides for the router rows (a smaller training budget on big models)."""
    import dataclasses

    rows = []
    for name, passes in variants().items():
        if only and name not in only:
            continue
        if router:
            passes = [dataclasses.replace(p, **router) if getattr(p, "schedule", None) == "router" else p
                      for p in passes]
        out = work / f"{model}-{name.replace(' ', '_').replace('=', '').replace('(', '').replace(')', '')}.dmc"
        t = time.time()
        compile_model(model, out, CompileOptions(recipe=Recipe(sampler="dpm++2m", steps=STEPS), passes=passes,
                                                 force=True))
        compile_s = time.time() - t
        manifest = json.loads((out / "manifest.json").read_text())
        cache = next((p for p in manifest["passes"] if p["name"] == "cache"), None)
        ev = evaluate(out, n=n)
        row = {"model": model, "variant": name, "compile_s": round(compile_s, 1),
               "schedule": cache["schedule"] if cache else "F" * STEPS,
               "cost_ratio": cache["cost_ratio"] if cache else 1.0,
               "router_s": cache.get("router", {}).get("seconds") if cache else None,
               "psnr_mean": round(ev["paired"]["psnr_mean"], 2), "psnr_worst": round(ev["paired"]["psnr_worst"], 2),
               "fd": round(ev["frechet"]["fd"], 3),
               "fd_ci": [round(ev["frechet"]["ci_low"], 3), round(ev["frechet"]["ci_high"], 3)],
               "reference_fd": round(ev["frechet"]["reference_model_fd"], 3)}
        row["date"] = time.strftime("%Y-%m-%d")
        print(json.dumps(row), flush=True)
        rows.append(row)
        if out_file is not None:  # one line per row: partial runs add up
            with out_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["demo", "demo-dit"])
    ap.add_argument("--n", type=int, default=64, help="images per evaluation")
    ap.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dmc-cache-schedules"))
    ap.add_argument("--out", type=Path, default=None, help="append each row to this JSON-lines file")
    ap.add_argument("--router-iterations", type=int, default=None, help="router rows: SDT iterations (default 30)")
    ap.add_argument("--router-batch", type=int, default=None, help="router rows: trajectories per iteration (4)")
    args = ap.parse_args()
    router = {k: v for k, v in (("router_iterations", args.router_iterations), ("router_batch", args.router_batch))
              if v is not None}
    args.work.mkdir(parents=True, exist_ok=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [r for m in args.models for r in run(m, args.work, args.n, args.only, args.out, router)]
    print(f"\n| model | variant | schedule | cost | PSNR mean / worst (dB) | FD [CI] | compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | `{r['schedule']}` | {r['cost_ratio']:.2f} | "
              f"{r['psnr_mean']:.1f} / {r['psnr_worst']:.1f} | {r['fd']:.3f} [{r['fd_ci'][0]:.3f}, {r['fd_ci'][1]:.3f}] | "
              f"{r['compile_s']:.0f} |")


if __name__ == "__main__":
    main()
