"""Feature caching (DeepCache / CacheQuant) with and without INT8: latency and paired quality.

    python bench/bench_cache.py                       # demo + mid-size UNet, all variants
    python bench/bench_cache.py --models demo --runs 5 --images 64

Models: the trained demo UNet (16x16x1, quality and latency) and a mid-size UNet2DModel
(64x64x3, 27.8 M params, random weights: latency only). Recipe: DDIM 20 steps, guidance 2.
Variants are compiled artifacts; every latency is one end-to-end ``sample`` of one image (the
doubled guidance batch) on ONNX Runtime CPU, medians over interleaved runs; "torch eager" is the
FP32 diffusers model in the same sampler loop. Quality: paired PSNR against the FP32 artifact,
same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dmc.compress.passes import register_pass
from dmc.models.builtin import TRAINABLE_MODELS

RECIPE_KW = {"sampler": "ddim", "steps": 20, "guidance": 2.0, "seed": 0}
MID_CONFIG = TRAINABLE_MODELS["mid"]["config"]  # the same architecture, random weights here


def variants(mid: bool) -> dict:
    from dmc.cache import CacheConfig, CorrectConfig

    try:
        from dmc.quantize import QuantizeConfig
    except ImportError:
        QuantizeConfig = None
    # mid-size (random weights, latency only): small calibration/feature batches keep compiling affordable
    q = {"num_samples": 4, "batch_size": 4} if mid else {}
    out = {
        "fp32": [],
        "cache uniform N=3": [CacheConfig(schedule="uniform", interval=3, correction=False)],
        "cache DP N=3": [CacheConfig(schedule="dp", interval=3, correction=False,
                                     num_samples=1 if mid else 8)],
        "cache DP N=3 + DEC": [CacheConfig(schedule="dp", interval=3, num_samples=1 if mid else 8)],
    }
    if QuantizeConfig is not None:
        out.update({
            "int8": [QuantizeConfig(**q)],
            "cache DP + int8, separate": [out["cache DP N=3"][0], QuantizeConfig(calibrate_under_schedule=False, **q)],
            "cache DP + int8, joint": [out["cache DP N=3"][0], QuantizeConfig(**q)],
            "cache DP + int8, joint + DEC": [out["cache DP N=3 + DEC"][0], QuantizeConfig(**q),
                                             CorrectConfig(num_samples=1 if mid else 8)],
        })
    if not mid:  # ablations of the correction (quality only matters here)
        out["cache uniform N=3 + DEC"] = [CacheConfig(schedule="uniform", interval=3)]
        if QuantizeConfig is not None:
            out["cache DP + int8, joint + DEC a1 only"] = [out["cache DP N=3 + DEC"][0], QuantizeConfig(**q)]
    if mid:
        register_pass("correct", LatencyOnly)(_latency_only)
        out = {k: v + [LatencyOnly()] for k, v in out.items()}
    if mid:  # the latency of "separate" equals "joint" (same graphs); DEC-less cache DP is timed as "cache DP"
        for name in ("cache DP N=3 + DEC", "cache DP + int8, separate", "cache DP + int8, joint"):
            out.pop(name, None)
    return out


@dataclass
class LatencyOnly:
    """Bench-only last pass for the random-weight model: its samples are chaotic, so INT8 cannot pass
    the compile-time fidelity floor (verification still runs and is recorded); keep it for timing."""


def _latency_only(ctx, cfg) -> None:
    ctx.fidelity_floor_psnr = 0.0
    ctx.warnings.append("bench: random-weight model, fidelity floor disabled (latency only)")


def mid_model(folder: Path) -> str:
    """A random-weight UNet2DModel saved as a diffusers folder (seeded, so reproducible)."""
    if not (folder / "config.json").exists():
        import torch
        from diffusers import UNet2DModel

        torch.manual_seed(0)
        UNet2DModel(**MID_CONFIG).save_pretrained(folder, safe_serialization=True)
    return str(folder)


def build(source: str, work: Path, specs: dict, force: bool, verify_images: int = 4,
          scheduler_preset: str | None = "ddpm-linear") -> dict:
    """Compile each spec once under ``work``; ``scheduler_preset`` is the random mid model's training
    schedule (the demos and dmc-saved safetensors carry their own)."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    paths = {}
    work.mkdir(parents=True, exist_ok=True)
    for name, passes in specs.items():
        out = work / (name.replace(" ", "_").replace(",", "").replace("=", "").replace("+", "p") + ".dmc")
        if out.exists() and not force:
            paths[name] = out
            continue
        shutil.rmtree(out, ignore_errors=True)
        t = time.time()
        try:
            compile_model(source, out, CompileOptions(recipe=Recipe(**RECIPE_KW), passes=passes,
                                                       verify_images=verify_images,
                                                       scheduler_preset=None if source in ("demo", "demo-dit") else scheduler_preset))
        except Exception as e:  # report and keep going: one broken variant must not hide the others
            print(f"  {name}: FAILED {type(e).__name__}: {str(e).splitlines()[0]}", flush=True)
            continue
        print(f"  {name}: compiled in {time.time() - t:.0f} s", flush=True)
        paths[name] = out
    return paths


def cache_record(path: Path) -> dict:
    data = json.loads((path / "manifest.json").read_text())
    return next((p for p in data.get("passes", []) if p.get("name") == "cache"), {})


def quality(paths: dict, images: int) -> dict:
    from dmc.evaluate import paired_fidelity
    from dmc.runtimes import load

    ref = load(paths["fp32"], threads=2)(images, seed=100)
    out = {}
    for name, path in paths.items():
        if name == "fp32":
            continue
        f = paired_fidelity(load(path, threads=2)(images, seed=100), ref)
        out[name] = {"psnr": f["psnr_mean"], "psnr_worst": f["psnr_worst"], "ssim": f["ssim_mean"]}
        print(f"  {name}: PSNR {f['psnr_mean']:.2f} dB", flush=True)
    return out


def latency(source: str, paths: dict, runs: int, threads: int) -> dict:
    import torch

    from dmc.compress.pipeline import reference_pipeline
    from dmc.sampling.schedules import PRESETS
    from dmc.runtimes import load
    from dmc.sampling import Recipe

    torch.set_num_threads(threads)
    pipes = {name: load(path, threads=threads) for name, path in paths.items()}
    pipes["torch eager fp32"] = reference_pipeline(source, Recipe(**RECIPE_KW), training_schedule=None if source == "demo"
                                                    else PRESETS["ddpm-linear"])
    for pipe in pipes.values():  # warm-up: session init, allocator
        pipe.sample(1, seed=0)
    times = {name: [] for name in pipes}
    cpu = {name: [] for name in pipes}
    for r in range(runs):
        for name, pipe in pipes.items():
            t, c = time.perf_counter(), time.process_time()
            pipe.sample(1, seed=r)
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        print(f"  run {r + 1}/{runs}: " + ", ".join(f"{n} {v[-1]:.2f}s" for n, v in times.items()), flush=True)
    # CPU seconds of this process (all its threads): steadier than wall time on a shared machine
    return {name: {"median_s": statistics.median(v), "runs": v, "median_cpu_s": statistics.median(cpu[name]),
                   "cpu_runs": cpu[name]} for name, v in times.items()}


def render(results: dict) -> str:
    """Markdown tables of a results JSON (the narrative in cache.md is written by hand)."""
    lines = []
    for model, entry in results.items():
        v = entry["variants"]
        eager = (v.get("torch eager fp32") or {}).get("latency")
        fp32 = (v.get("fp32") or {}).get("latency")
        lines += [f"### {model}", "",
                  "| variant | schedule | MAC ratio | PSNR vs FP32 (dB) | SSIM | latency (s, median) | CPU s | "
                  "x vs ORT FP32 | x vs torch eager |", "|---|---|---|---|---|---|---|---|---|"]
        for name, d in v.items():
            lat, q = d.get("latency") or {}, d.get("quality") or {}
            sp = lambda ref: f"{ref['median_s'] / lat['median_s']:.2f}" if ref and lat else "-"  # noqa: E731
            lines.append(f"| {name} | `{d.get('schedule') or '-'}` | {d.get('cost_ratio') or '-'} | "
                         f"{q.get('psnr', float('nan')):.2f} | {q.get('ssim', float('nan')):.4f} | "
                         f"{lat.get('median_s', float('nan')):.3f} | {lat.get('median_cpu_s', float('nan')):.3f} | "
                         f"{sp(fp32)} | {sp(eager)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="demo,mid")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for ORT and torch (1: on a shared 2-vCPU machine, 2-thread OpenMP spin-waits)")
    ap.add_argument("--only", default="", help="semicolon-separated variant names (default: all)")
    ap.add_argument("--work", default="out/bench_cache")
    ap.add_argument("--json", default="bench/results/cache.json")
    ap.add_argument("--force", action="store_true", help="recompile existing artifacts")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--render", action="store_true", help="print the results JSON as Markdown tables and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.json).read_text())))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    results = json.loads(Path(args.json).read_text()) if Path(args.json).exists() else {}
    for model in args.models.split(","):
        source = "demo" if model == "demo" else mid_model(work / "mid_unet")
        specs = variants(model != "demo")
        if args.only:
            keep = {"fp32", *args.only.split(";")}
            specs = {k: v for k, v in specs.items() if k in keep}
        print(f"[{model}] compiling {len(specs)} variants", flush=True)
        paths = build(source, work / model, specs, args.force, 4 if model == "demo" else 1)
        if "fp32" not in paths:
            print(f"[{model}] the FP32 artifact failed to build; skipping", flush=True)
            continue
        entry = results.setdefault(model, {"variants": {}})
        for name, path in paths.items():
            rec = cache_record(path)
            entry["variants"].setdefault(name, {}).update({
                "schedule": rec.get("schedule"), "cost_ratio": rec.get("cost_ratio"),
                "correction": {k: rec["correction"][k] for k in ("rel_l1_before_mean", "rel_l1_after_mean")}
                if rec.get("correction") else None,
            })
        if model == "demo" and not args.skip_quality:
            print(f"[{model}] quality ({args.images} images)", flush=True)
            for name, q in quality(paths, args.images).items():
                entry["variants"][name]["quality"] = q
        if not args.skip_latency:
            print(f"[{model}] latency ({args.runs} interleaved runs, {args.threads} threads)", flush=True)
            for name, lat in latency(source, paths, args.runs, args.threads).items():
                entry["variants"].setdefault(name, {})["latency"] = lat
        entry["recipe"] = RECIPE_KW
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
