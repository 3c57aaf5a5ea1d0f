"""Task success of a policy at each compression level: FP32, --int8, --cache (BAC / uniform / DP) and
--int8 --cache, over the same seeded episodes of the demo task, with Wilson intervals.

    python bench/bench_policy_success.py [POLICY] [--work /tmp/dmc-bench-success] [--episodes 50] \
        [--interval 3] [--threads 1] [--calib expert|synthetic] [--variants fp32 int8 cache-uniform ...]

POLICY: ``demo-policy`` (default; the shipped 1D-UNet policy) or a LeRobot-layout folder that fits the
task (``dmc.policies.demo_task``: state [4], action [2]). Every cache variant has the same interval,
so each schedule has about the same number of full computations per cached point (BAC: the same
budget per sub-block). Each variant also reports its action error against the FP32 artifact on the
histories its own episodes visited (same initial noise), and latency per chunk.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

VARIANTS = {
    "fp32": dict(),
    "int8": dict(int8=True),
    "cache-uniform": dict(cache=True, cache_schedule="uniform"),
    "cache-dp": dict(cache=True, cache_schedule="dp"),
    "cache-bac": dict(cache=True, cache_schedule="bac"),
    "int8-cache-auto": dict(int8=True, cache=True),
    "int8-cache-uniform": dict(int8=True, cache=True, cache_schedule="uniform"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy", nargs="?", default="demo-policy")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dmc-bench-success"))
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--interval", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=20, help="chunks timed per variant")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--calib", choices=["expert", "synthetic"], default="expert",
                    help="INT8 ranges and cache schedules fitted on the expert's histories (seeds 500-539: neither "
                         "demonstrations nor evaluation episodes) or on dmc's synthetic histories")
    args = ap.parse_args()

    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.compress.plan import plan_passes
    from dmc.evaluate.bench_policy import benchmark_policy
    from dmc.evaluate.policy_eval import evaluate_policy

    args.work.mkdir(parents=True, exist_ok=True)
    tag = f"{Path(args.policy).name}-{args.calib}"
    calib = None
    if args.calib == "expert":
        import numpy as np

        from dmc.policies.demo_task import expert_histories

        calib = args.work / "expert-histories.npz"
        np.savez(calib, **expert_histories(range(500, 540)))
    rows = []
    fp32 = None
    for name in ["fp32"] + [v for v in args.variants if v != "fp32"]:
        out = args.work / f"{tag}-{name}.dmc"
        if not (out / "manifest.json").exists():
            kw = dict(VARIANTS[name])
            if kw.get("cache"):
                kw["cache_interval"] = args.interval
            t = time.time()
            options = CompileOptions(passes=plan_passes(**kw), verify_images=4, force=True)
            options.calib_observations = str(calib) if calib else None
            compile_model(args.policy, out, options)
            print(f"compiled {name} in {time.time() - t:.0f} s", flush=True)
        fp32 = fp32 or out
        manifest = json.loads((out / "manifest.json").read_text())
        cache = next((p for p in manifest["passes"] if p["name"] == "cache"), None)
        ev = evaluate_policy(str(out), args.episodes, args.seed, reference=None if out == fp32 else str(fp32),
                             threads=args.threads)
        bench = benchmark_policy(str(out), repeats=args.chunks, threads=args.threads)
        ro = ev["rollout"]
        rows.append({"variant": name, "successes": ro["successes"], "episodes": args.episodes,
                     "rate": ro["success_rate"], "ci": [ro["ci_low"], ro["ci_high"]],
                     "mean_steps": ro["mean_steps"],
                     "action_psnr_db": (ev["actions"] or {}).get("psnr_db"),
                     "action_rmse": (ev["actions"] or {}).get("rmse"),
                     "cost_ratio": cache and cache.get("cost_ratio"), "schedule": cache and cache.get("config", {}).get("schedule"),
                     "median_ms_per_chunk": bench["median_s"] * 1e3,
                     "vs_fp32_policy_psnr_db": manifest["verification"].get("vs_fp32_policy_psnr_db")})
        r = rows[-1]
        print(f"{name:20s} success {r['successes']:3d}/{args.episodes} = {r['rate']:.0%} "
              f"[{r['ci'][0]:.0%}, {r['ci'][1]:.0%}]  steps {r['mean_steps']:.1f}  "
              f"cost {r['cost_ratio'] if r['cost_ratio'] is not None else 1:.3f}  "
              f"actions {r['action_psnr_db'] if r['action_psnr_db'] is not None else float('nan'):.1f} dB  "
              f"{r['median_ms_per_chunk']:.1f} ms/chunk", flush=True)
    (args.work / f"{tag}-success.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
