"""BAC on its home ground: DP-T at 100 DDPM calls per chunk, per-sub-block schedules (with and without
bubbling union) against shared uniform / CacheQuant DP schedules, judged by task success.

    python bench/bench_policy_bac.py POLICY_FOLDER --calib-observations obs.npz [--work /tmp/bps] [--episodes 50]

POLICY_FOLDER: a DP-T policy for ``dmc.policies.demo_task`` (``scripts/train_demo_policy.py --net transformer``);
obs.npz: ``expert_histories`` (as ``bench_policy_success.py`` writes it). Every variant runs the same
episodes (seeds 1000...) and noise; action PSNR is against the FP32 artifact at the same sampler.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

VARIANTS = {  # name -> CacheConfig fields (None: FP32)
    "fp32": None,
    "uniform-i5": dict(schedule="uniform", interval=5),
    "dp-i5": dict(schedule="dp", interval=5),
    "uniform-i4": dict(schedule="uniform", interval=4),
    "uniform-i2": dict(schedule="uniform", interval=2),
    "dp-i2": dict(schedule="dp", interval=2),
    "bac-b10-v16": dict(schedule="bac", budget=10, max_variants=16),
    "bac-b20-v16": dict(schedule="bac", budget=20, max_variants=16),
    "bac-b20-v16-nobu": dict(schedule="bac", budget=20, max_variants=16, n_bubbling=0),
    "bac-b20-v4": dict(schedule="bac", budget=20, max_variants=4),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("policy")
    ap.add_argument("--calib-observations", required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bps"))
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()

    from dmc.cache import CacheConfig
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.compress.plan import complete_plan
    from dmc.evaluate.policy_eval import evaluate_policy
    from dmc.sampling import Recipe

    args.work.mkdir(parents=True, exist_ok=True)
    ref = None
    for name in ["fp32"] + [v for v in args.variants if v != "fp32"]:
        out = args.work / f"{Path(args.policy).name}-ddpm{args.steps}-{name}.dmc"
        fields = VARIANTS[name]
        options = CompileOptions(recipe=Recipe(sampler="ddpm", steps=args.steps),
                                 passes=complete_plan([CacheConfig(**fields)]) if fields else [], verify_images=2,
                                 force=True, sampler_follows_schedule=False, steps_follow_model=False)
        options.calib_observations = args.calib_observations
        compile_model(args.policy, out, options)
        cache = [p for p in json.loads((out / "manifest.json").read_text())["passes"] if p["name"] == "cache"]
        ev = evaluate_policy(str(out), args.episodes, 1000, reference=None if ref is None else str(ref))
        ref = ref or out
        ro = ev["rollout"]
        print(f"{name:18s} cost {cache[0]['cost_ratio'] if cache else 1:.3f}  graphs "
              f"{cache[0]['distinct_patterns'] if cache else 1:2d}  success {ro['successes']}/{args.episodes} "
              f"[{ro['ci_low']:.0%}, {ro['ci_high']:.0%}]  action PSNR "
              f"{ev['actions']['psnr_db'] if ev['actions'] else float('nan'):.1f} dB", flush=True)


if __name__ == "__main__":
    main()
