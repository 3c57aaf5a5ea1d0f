"""Latency per action chunk of a PushT-sized diffusion policy: torch eager vs dmc FP32 vs dmc --int8.

    python bench/bench_policy.py [--work /tmp/dmc-bench-policy] [--threads 1 2] [--chunks 20] \
        [--kind keypoints|image] [--net unet|transformer] [--sampler ddpm --steps 100] [--control-hz 10] [--cache]

The policy is LeRobot's default diffusion policy at PushT's sizes (UNet down_dims 512/1024/2048,
horizon 16, 2 observation steps, 8 actions; ``--kind keypoints``: 2-d state + 16 keypoints,
``image``: 2-d state + one 96x96 camera through ResNet-18 with an 84x84 crop), random weights
written in LeRobot's layout (``dmc.policies.layout``), its own sampler (DDPM, 100 steps, LeRobot's
default) unless ``--sampler/--steps`` say otherwise. Every variant acts on the same observation
histories with the same seeds; each thread count runs in its own process. Reported per chunk:
median and p99 seconds, and the share of chunks that fit the control period of ``--control-hz``
(a chunk of 8 actions must be ready before the robot runs out: 8 / control-hz seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def build(work: Path, kind: str, sampler: str | None, steps: int | None, cache: bool = False,
          net: str = "unet") -> dict[str, Path]:
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.compress.plan import plan_passes
    from dmc.policies.layout import write_policy
    from dmc.sampling import Recipe

    folder = work / f"policy-{kind}-{net}"
    if not (folder / "model.safetensors").exists():
        inputs = {"observation.state": ("STATE", (2,))}
        stats = {"observation.state": {"min": np.zeros(2), "max": np.full(2, 512.0)},
                 "action": {"min": np.zeros(2), "max": np.full(2, 512.0)}}
        extra = {}
        if kind == "image":
            inputs["observation.image"] = ("VISUAL", (3, 96, 96))
            stats["observation.image"] = {"mean": np.full((3, 1, 1), 0.5), "std": np.full((3, 1, 1), 0.25)}
            extra["crop_shape"] = [84, 84]
        else:
            inputs["observation.environment_state"] = ("ENV", (16,))
            stats["observation.environment_state"] = {"min": np.zeros(16), "max": np.full(16, 512.0)}
        if net == "transformer":  # DP-T at Diffusion Policy's hybrid-image config size (layout.TRANSFORMER_DEFAULTS)
            extra["noise_net"] = "transformer"
        write_policy(folder, inputs, 2, stats, **extra)
    recipe = Recipe(sampler=sampler or "ddim", steps=steps or 20)
    paths = {}
    variants = [("fp32", []), ("int8", plan_passes(int8=True, calib_budget=45.0))]  # the CLI's budget
    if cache:
        variants += [("cache", plan_passes(cache=True)), ("int8-cache", plan_passes(int8=True, cache=True,
                                                                                   calib_budget=45.0))]
    for name, passes in variants:
        out = work / f"{kind}-{net}-{name}-{sampler or 'own'}-{steps or 'own'}.dmc"
        if not (out / "manifest.json").exists():
            options = CompileOptions(recipe=recipe, passes=passes, verify_images=2, force=True,
                                     sampler_follows_schedule=sampler is None, steps_follow_model=steps is None)
            t = time.time()
            compile_model(str(folder), out, options)
            print(f"  {out.name}: compiled in {time.time() - t:.0f} s", file=sys.stderr)
        paths[name] = out
    return {"folder": folder, **paths}


def child(args) -> dict:
    import torch

    from dmc.policies.compile import torch_policy, verification_observations
    from dmc.policies.lerobot import read_policy
    from dmc.policies.model import load_denoiser, load_observation_encoder
    from dmc.runtimes import load

    torch.set_num_threads(args.child_threads)
    paths = json.loads(args.child)
    spec = read_policy(paths["folder"])
    manifest = json.loads((Path(paths["fp32"]) / "manifest.json").read_text())
    variants = {"torch eager FP32": torch_policy(spec, load_denoiser(spec), load_observation_encoder(spec), manifest),
                "dmc FP32 (ONNX Runtime)": load(paths["fp32"], threads=args.child_threads),
                "dmc --int8 (ONNX Runtime)": load(paths["int8"], threads=args.child_threads)}
    for key, name in (("cache", "dmc --cache (ONNX Runtime)"), ("int8-cache", "dmc --int8 --cache (ONNX Runtime)")):
        if key in paths:
            variants[name] = load(paths[key], threads=args.child_threads)
    obs = verification_observations(spec, args.chunks, seed=5)
    one = lambda i: {k: v[i] for k, v in obs.items()}  # noqa: E731
    times: dict[str, list[float]] = {k: [] for k in variants}
    for name, policy in variants.items():  # warm-up
        policy.act(one(0), seed=0)
    for i in range(args.chunks):  # interleaved: every variant sees the same history and seed in turn
        for name in (list(variants) if i % 2 == 0 else list(variants)[::-1]):
            t = time.perf_counter()
            variants[name].act(one(i), seed=i)
            times[name].append(time.perf_counter() - t)
    period = spec.n_action_steps / args.control_hz
    return {name: {"median_s": float(np.median(t)), "p99_s": float(np.percentile(t, 99)),
                   "within_period": float(np.mean(np.array(t) <= period)), "period_s": period}
            for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dmc-bench-policy")
    p.add_argument("--kind", choices=["keypoints", "image"], default="keypoints")
    p.add_argument("--sampler", default=None, help="default: the policy's own (DDPM)")
    p.add_argument("--steps", type=int, default=None, help="default: the policy's own (100)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--control-hz", type=float, default=10.0)
    p.add_argument("--cache", action="store_true", help="also --cache and --int8 --cache")
    p.add_argument("--net", choices=["unet", "transformer"], default="unet",
                   help="the noise network: LeRobot's 1D UNet or Diffusion Policy's transformer (DP-T)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    paths = {k: str(v) for k, v in build(args.work, args.kind, args.sampler, args.steps, args.cache, args.net).items()}
    rows = []
    for threads in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(paths), "--child-threads", str(threads),
                              "--chunks", str(args.chunks), "--control-hz", str(args.control_hz)],
                             capture_output=True, text=True, env=env, check=True).stdout
        for name, r in json.loads(out.strip().splitlines()[-1]).items():
            rows.append({"threads": threads, "variant": name, **r})
    print(f"\n| threads | variant | median s per chunk | p99 s | within {rows[0]['period_s']:.2f} s |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['threads']} | {r['variant']} | {r['median_s']:.3f} | {r['p99_s']:.3f} | "
              f"{r['within_period']:.0%} |")
    for name in ("int8", "cache", "int8-cache"):
        if name in paths:
            v = json.loads((Path(paths[name]) / "manifest.json").read_text())["verification"]
            print(f"{name}: verified {v['psnr_db']:.1f} dB vs its graphs' torch modules, "
                  f"{v.get('vs_fp32_policy_psnr_db', float('nan')):.1f} dB vs the FP32 policy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
