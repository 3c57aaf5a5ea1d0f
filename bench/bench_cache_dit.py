"""Benchmark for BENCHMARKS.md: DiT per-branch caching (uniform, BAC +/- bubbling union).

    python bench/bench_cache_dit.py demo   --out /tmp/cd/bench   # quality + latency on demo-dit
    python bench/bench_cache_dit.py dit-s2 --out /tmp/cd/bench   # latency on a random DiT-S/2

Every variant is compiled with the real cache pass (``CacheConfig``) through ``compile_model``;
quality is paired PSNR of ORT samples against the uncached FP32 artifact (same seeds), latency is
end-to-end ``Pipeline.sample`` through ONNX Runtime (1 thread), medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

from dmc.artifact import read_manifest  # noqa: E402
from dmc.cache import CacheConfig  # noqa: E402
from dmc.cache import dit_blocks as D  # noqa: E402
from dmc.compress.pipeline import CompileOptions, compile_model  # noqa: E402
from dmc.models.adapters import make_adapter  # noqa: E402
from dmc.models.loading import load_model  # noqa: E402
from dmc.runtimes import load  # noqa: E402
from dmc.sampling import Recipe  # noqa: E402

STEPS, GUIDANCE, SEED = 20, 2.0, 0


def variants(kind: str) -> list[tuple[str, int, list]]:
    """(name, sampler steps, passes)."""
    cc = CacheConfig
    v = [("fp32", STEPS, [])]
    if kind == "demo":
        v += [("fp32 DDIM-10 (fewer steps)", 10, []), ("fp32 DDIM-7 (fewer steps)", 7, []),
              ("fp32 DDIM-5 (fewer steps)", 5, [])]
    for n in (2, 3, 4):
        v.append((f"uniform N={n}", STEPS, [cc(schedule="uniform", interval=n)]))
    if kind == "demo":
        for n in (2, 3, 4):
            v.append((f"CacheQuant DPS N={n} (all blocks)", STEPS, [cc(schedule="dp", interval=n)]))
    budgets = (10, 7, 5) if kind == "demo" else (7,)
    for m in budgets:
        v.append((f"BAC M={m} no BU", STEPS, [cc(schedule="bac", budget=m, n_bubbling=0, max_variants=None)]))
        v.append((f"BAC M={m} BU n=3", STEPS, [cc(schedule="bac", budget=m, n_bubbling=3, max_variants=None)]))
    v.append(("BAC M=7 BU n=3 max_variants=4", STEPS, [cc(schedule="bac", budget=7, n_bubbling=3, max_variants=4)]))
    if kind == "demo":
        v.append(("BAC M=7 BU n=3 max_variants=8", STEPS,
                  [cc(schedule="bac", budget=7, n_bubbling=3, max_variants=8)]))
    return v


def dit_s2_source(root: Path) -> str:
    """A random-weight DiT-S/2 (hidden 384, 12 layers, 6 heads, patch 2, 32x32x4) as a diffusers folder."""
    from diffusers import DiTTransformer2DModel

    folder = root / "dit-s2-random"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                      num_layers=12, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
        model.save_pretrained(folder, safe_serialization=True)
    return str(folder)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def flops_of(adapter, shape, pattern, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step = D.DiTCachedStep(adapter, pattern)
    ex = D.example_inputs(step, adapter, shape, batch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        step(*ex)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["demo", "dit-s2"])
    ap.add_argument("--out", default="/tmp/cd/bench")
    ap.add_argument("--n-quality", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--latency-images", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    source = "demo-dit" if args.kind == "demo" else dit_s2_source(root)
    loaded = load_model(source)
    adapter = make_adapter(loaded.model, loaded.class_name)
    shape = adapter.sample_shape
    full_flops = flops_of(adapter, shape, (True,) * (2 * len(loaded.model.transformer_blocks)), 2)
    flop_cache: dict = {}
    rows = []
    for name, steps, passes in variants(args.kind):
        out = root / f"{args.kind}-{slug(name)}.dmc"
        t0 = time.time()
        if not out.exists():
            compile_model(source, out, CompileOptions(recipe=Recipe(steps=steps, guidance=GUIDANCE, seed=SEED),
                                                      passes=passes, verify_images=2, scheduler_preset=None if source in ("demo", "demo-dit") else "ddpm-linear"))
        manifest = read_manifest(out, verify=False)
        record = next((p for p in manifest.data["passes"] if p.get("name") == "cache"), None)
        if record is None:
            refresh = np.ones((steps, 1), dtype=bool)
            flops = steps * full_flops
        else:
            refresh = np.asarray(record["refresh"], dtype=bool)
            flops = 0.0
            for row in refresh:
                key = tuple(bool(v) for v in row)
                if key not in flop_cache:
                    flop_cache[key] = flops_of(adapter, shape, key, 2)
                flops += flop_cache[key]
        rows.append({"name": name, "artifact": str(out), "steps": steps, "graphs": len(manifest.graphs),
                     "branch_fraction": float(refresh.mean()), "flop_ratio": flops / (STEPS * full_flops),
                     "compile_s": round(time.time() - t0, 1), "verification": manifest.data["verification"]})
        print(f"compiled {name}: {rows[-1]['graphs']} graphs, branches run {rows[-1]['branch_fraction']:.2f}, "
              f"FLOPs x{rows[-1]['flop_ratio']:.3f}", flush=True)

    pipes = {r["name"]: load(r["artifact"], threads=1) for r in rows}
    if args.kind == "demo":
        from dmc.evaluate import paired_fidelity

        ref = pipes["fp32"](args.n_quality, seed=SEED)
        for r in rows:
            got = pipes[r["name"]](args.n_quality, seed=SEED)
            fid = paired_fidelity(got, ref)
            r.update(psnr_mean=fid["psnr_mean"], psnr_worst=fid["psnr_worst"], ssim_mean=fid["ssim_mean"],
                     rmse_mean=fid["rmse_mean"])
            print(f"quality {r['name']}: PSNR {fid['psnr_mean']:.2f} dB (worst {fid['psnr_worst']:.2f})", flush=True)

    for n in args.latency_images:
        times = {r["name"]: [] for r in rows}
        for p in pipes.values():  # warm-up
            p.sample(n, seed=SEED)
        names = [r["name"] for r in rows]
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]  # rotate: interleaved, no fixed position
            for name in order:
                t0 = time.perf_counter()
                pipes[name].sample(n, seed=SEED, batch_size=max(n, 1))
                times[name].append(time.perf_counter() - t0)
        base = times["fp32"]
        for r in rows:
            t = times[r["name"]]
            r[f"latency_ms_n{n}"] = 1000 * statistics.median(t)
            r[f"speedup_n{n}"] = statistics.median([b / x for b, x in zip(base, t)])  # paired per round
            r[f"latency_all_ms_n{n}"] = [round(1000 * x, 1) for x in t]
        print(f"latency n={n}: " + ", ".join(f"{r['name']} {r[f'latency_ms_n{n}']:.0f} ms" for r in rows),
              flush=True)
    rows.insert(0, {"source": source, "weights_sha256": loaded.sha256, "full_flops_batch2": full_flops})
    (root / f"{args.kind}-results.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
