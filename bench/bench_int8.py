"""INT8 (PTQ4DM W8A8) benchmarks: quality vs calibration method, latency, artifact bytes.

    python bench/bench_int8.py quality [--models demo demo-dit] [--n 256] [--configs ndtc uniform ...]
    python bench/bench_int8.py paired [--configs ndtc uniform noise-minmax ...]   (after quality)
    python bench/bench_int8.py latency [--runs 25]

Quality: every config is compiled with the demo recipe (DDIM 20, guidance 2), sampled with
``dmc.runtimes.load(path)(n, seed=0)`` and compared with the FP32 artifact on the same seeds
(paired PSNR / RMSE) and with held-out real digits (Frechet distance in the digits classifier's
features; the delta is FD(INT8) - FD(FP32)). Results are appended as JSON lines to
``bench/results/int8_runs.jsonl`` and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WORK = Path(os.environ.get("DMC_BENCH_DIR", Path(tempfile.gettempdir()) / "dmc-bench-int8"))

CONFIGS = {
    # name: QuantizeConfig kwargs (None = the FP32 artifact)
    "fp32": None,
    "ndtc": {},
    "uniform": {"calibration": "uniform"},
    "single-step": {"calibration": "single-step"},
    "noise-minmax": {"calibration": "noise", "range_method": "minmax"},  # naive: ORT-default-like
    "noise": {"calibration": "noise"},
    "ndtc-minmax": {"range_method": "minmax"},
    "ndtc-nosplit": {"split_concat": False},
    "ndtc-K2": {"scale_groups": 2},
    "ndtc-K4": {"scale_groups": 4},
    "uniform-K4": {"calibration": "uniform", "scale_groups": 4},
    "ndtc-conv-only": {"op_types": ["Conv"]},
    "trt": {"profile": "trt"},
}


def compile_one(model: str, name: str, kwargs, out: Path, ctx=None) -> dict:
    """Compile one config. With ``ctx`` (a prepared FP32 context) the export is reused, so
    ``compile_s`` is pass + write + verify only; without it, it is the full ``compile_model`` time."""
    import copy

    import dmc.compress.pipeline as pipeline
    from dmc.quantize import QuantizeConfig
    from dmc.sampling.recipe import Recipe

    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    passes = [] if kwargs is None else [QuantizeConfig(**kwargs)]
    original = pipeline.prepare
    if ctx is not None:
        pipeline.prepare = lambda source, options: copy.deepcopy(ctx)
    t = time.time()
    try:
        pipeline.compile_model(model, out, pipeline.CompileOptions(recipe=Recipe(steps=20, guidance=2.0), passes=passes,
                                scheduler_preset=None if model in ("demo", "demo-dit") else "ddpm-linear"))
    finally:
        pipeline.prepare = original
    seconds = time.time() - t
    files = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    manifest = json.loads((out / "manifest.json").read_text())
    q = next((p for p in manifest["passes"] if p["name"] == "quantize"), None)
    build = json.loads((out / "build.json").read_text())  # timings live in the unchecked build log
    return {"compile_s": round(seconds, 1), "full_compile": ctx is None, "bytes": sum(files.values()),
            "weights_bytes": sum(v for k, v in files.items() if k.endswith("weights.bin")),
            "pass_s": build["pass_seconds"]["quantize"] if q else 0.0, "verify_psnr": manifest["verification"]["psnr_db"]}


def record_steps(pipe, n: int) -> dict:
    """The FP32 artifact's feeds and outputs at every call, for ``n`` eval-seed images."""
    steps: dict = {}
    pipe.sample(n, seed=0, on_call=lambda k, feeds, raw, x: steps.setdefault(k, []).append((dict(feeds), raw)))
    return steps


def step_errors(pipe, steps: dict) -> list[float]:
    """One-call relative RMSE of an artifact's prediction vs FP32 on the FP32 trajectory's own inputs:
    the quantization error per call without the chaotic amplification of whole trajectories."""
    out = []
    for k, items in sorted(steps.items()):
        graph = pipe.calls[k].graph
        e = [np.sqrt(np.mean((pipe.executor.run(graph, f)[0] - raw) ** 2) / np.mean(raw ** 2)) for f, raw in items]
        out.append(float(np.mean(e)))
    return out


def quality(args) -> None:
    from dmc.evaluate import frechet_with_ci, load_extractor, paired_fidelity, reference_features
    from dmc.quantize import describe
    from dmc.runtimes import load

    extractor = load_extractor()
    ref = reference_features(extractor)
    results = []
    from dmc.compress.pipeline import CompileOptions, prepare
    from dmc.sampling.recipe import Recipe

    for model in args.models:
        base = None
        preset = None if model in ("demo", "demo-dit") else "ddpm-linear"
        ctx = prepare(model, CompileOptions(recipe=Recipe(steps=20, guidance=2.0), scheduler_preset=preset))
        for name in ["fp32"] + [c for c in args.configs if c != "fp32"]:
            out = WORK / model / name
            # the default config is timed as a real end-to-end compile (export included)
            info = compile_one(model, name, CONFIGS[name], out, ctx=None if name == "ndtc" else ctx)
            t = time.time()
            images = load(out, threads=2)(args.n, seed=0)
            info["sample_s"] = round(time.time() - t, 1)
            fd = frechet_with_ci(extractor(images), ref, n_boot=100)
            row = {"model": model, "config": name, "n": args.n, **info, "fd": fd["fd"],
                   "fd_ci": [fd["ci_low"], fd["ci_high"]]}
            if name == "fp32":
                base = {"images": images, "fd": fd["fd"], "bytes": info["bytes"],
                        "steps": record_steps(load(out, threads=2), args.step_images)}
            else:
                errs = step_errors(load(out, threads=2), base["steps"])
                row.update(step_err=float(np.mean(errs)), step_err_early=float(np.mean(errs[:10])),
                           step_err_late=float(np.mean(errs[10:-1])), step_err_per_call=[round(e, 4) for e in errs])
                pf = paired_fidelity(images, base["images"])
                row.update(psnr=pf["psnr_mean"], psnr_worst=pf["psnr_worst"], rmse=pf["rmse_mean"],
                           ssim=pf["ssim_mean"], fd_delta=fd["fd"] - base["fd"],
                           bytes_ratio=info["bytes"] / base["bytes"])
                d = describe(out)
                row["coverage"] = {g: e["summary"] for g, e in d["graphs"].items()}
                row["profile_problems"] = sum(len(e["profile_problems"]) for e in d["graphs"].values())
            results.append(row)
            print(json.dumps(row), flush=True)
            with open(ROOT / "results" / "int8_runs.jsonl", "a") as f:
                f.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    print()
    print("| model | config | one-call rel. error (all / early / late) | paired PSNR dB (mean / worst) | RMSE | FD (95% CI) | FD delta | bytes ratio | compile s (pass s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if r["config"] == "fp32":
            print(f"| {r['model']} | fp32 | - | - | - | {r['fd']:.2f} ({r['fd_ci'][0]:.2f}-{r['fd_ci'][1]:.2f}) | 0 | 1.00 | {r['compile_s']} |")
        else:
            print(f"| {r['model']} | {r['config']} | {r['step_err']:.4f} / {r['step_err_early']:.4f} / "
                  f"{r['step_err_late']:.4f} | {r['psnr']:.2f} / {r['psnr_worst']:.2f} | {r['rmse']:.4f} | "
                  f"{r['fd']:.2f} ({r['fd_ci'][0]:.2f}-{r['fd_ci'][1]:.2f}) | {r['fd_delta']:+.2f} | "
                  f"{r['bytes_ratio']:.3f} | {r['compile_s']}{'' if r['full_compile'] else '*'} ({r['pass_s']}) |")


def paired(args) -> None:
    """Per-image head-to-head of calibrations on the artifacts ``quality`` compiled: for the same
    seeds, how often one config's image is closer to FP32 than another's, with a bootstrap interval
    of the mean RMSE difference (paired comparisons cancel most seed-to-seed variance)."""
    from dmc.runtimes import load

    rng = np.random.default_rng(0)
    for model in args.models:
        fp = load(WORK / model / "fp32", threads=2)(args.n, seed=0).astype(np.float32) / 255
        rmse = {}
        for name in args.configs:
            img = load(WORK / model / name, threads=2)(args.n, seed=0).astype(np.float32) / 255
            rmse[name] = np.sqrt(((img - fp) ** 2).reshape(args.n, -1).mean(1))
        print(f"\n{model}, N={args.n}: per-image RMSE vs FP32 (median PSNR dB)")
        for name, r in rmse.items():
            print(f"  {name:14s} mean RMSE {r.mean():.5f}  median PSNR {np.median(-20 * np.log10(np.maximum(r, 1e-5))):.2f}")
        ref = args.configs[0]
        for name in args.configs[1:]:
            d = rmse[name] - rmse[ref]  # > 0: ref closer to FP32
            boots = [d[rng.integers(0, len(d), len(d))].mean() for _ in range(2000)]
            lo, hi = np.quantile(boots, [0.025, 0.975])
            wins = float(np.mean(rmse[ref] < rmse[name]))
            row = {"bench": "paired", "model": model, "ref": ref, "other": name, "n": args.n,
                   "ref_wins": wins, "mean_rmse_diff": float(d.mean()), "ci95": [float(lo), float(hi)]}
            print(f"  {ref} vs {name}: {ref} closer on {wins:.0%} of images; mean RMSE({name}) - RMSE({ref}) = "
                  f"{d.mean():+.5f} [{lo:+.5f}, {hi:+.5f}]", flush=True)
            with open(ROOT / "results" / "int8_runs.jsonl", "a") as f:
                f.write(json.dumps({**row, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


# ---------------------------------------------------------------------------------------------- latency

def _save_random(kind: str, folder: Path) -> None:
    import torch

    torch.manual_seed(0)
    if kind == "unet":
        from diffusers import UNet2DModel

        model = UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                            layers_per_block=2,
                            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    else:
        from diffusers import DiTTransformer2DModel

        model = DiTTransformer2DModel(num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8,
                                      num_layers=12, sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
    model.save_pretrained(folder)


def latency(args) -> None:
    """ORT CPU latency per model call, FP32 vs INT8, on random-weight models of realistic size.

    Random weights make sampled images meaningless (verification against torch would refuse the
    INT8 artifact), so this builds the graphs with the compiler's own pieces (prepare, the quantize
    pass on a trajectory calibration, write_graphs) and times them; it also prints the one-call
    relative error of INT8 vs FP32 as a sanity check.
    """
    import copy

    import onnxruntime as ort

    from dmc.compress.pipeline import CompileOptions, prepare
    from dmc.export.graphs import write_graphs
    from dmc.quantize import QuantizeConfig
    from dmc.quantize.coverage import coverage, summary_line
    from dmc.quantize.pass_ import quantize
    from dmc.sampling.recipe import Recipe

    rows = []
    for kind in args.kinds:
        if kind in ("demo", "demo-dit"):  # the artifacts `quality` compiled
            dirs = {"fp32": WORK / kind / "fp32" / "graphs", "int8": WORK / kind / "ndtc" / "graphs"}
            if not all((d / "full.onnx").exists() for d in dirs.values()):
                raise SystemExit(f"run `quality --models {kind}` first")
        else:
            src = WORK / f"random-{kind}"
            if not src.exists():
                _save_random(kind, src)
            variants = {"fp32": None, "int8": {}}
            if kind == "unet":
                variants["int8-conv-only"] = {"op_types": ["Conv"]}
            dirs = {n: WORK / f"random-{kind}-{n}" for n in variants}
        if kind not in ("demo", "demo-dit") and (
                args.recompile or not all((d / "full.onnx").exists() for d in dirs.values())):
            t = time.time()
            ctx = prepare(str(src), CompileOptions(recipe=Recipe(steps=20, guidance=1.0), scheduler_preset="ddpm-linear"))
            print(f"{kind}: exported in {time.time() - t:.0f} s, "
                  f"{sum(p.numel() for p in ctx.loaded.model.parameters()) / 1e6:.1f} M params", flush=True)
            for name, kw in variants.items():
                c = copy.deepcopy(ctx)
                t = time.time()
                if kw is not None:
                    quantize(c, QuantizeConfig(calibration="uniform", num_samples=8, batch_size=4, **kw))
                shutil.rmtree(dirs[name], ignore_errors=True)
                write_graphs({"full": c.graphs["full"].onnx}, dirs[name])
                print(f"  {name}: built in {time.time() - t:.0f} s; {summary_line(coverage(dirs[name] / 'full.onnx'))}",
                      flush=True)
            del ctx, c
        sessions = {}
        for name, d in dirs.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = 2
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            sessions[name] = ort.InferenceSession(str(d / "full.onnx"), so, providers=["CPUExecutionProvider"])
        inp = {i.name: i for i in sessions["fp32"].get_inputs()}
        c, h, w = inp["sample"].shape[1:]
        for batch in args.batches:
            rng = np.random.default_rng(0)
            feeds = {"sample": rng.standard_normal((batch, c, h, w), dtype=np.float32),
                     "timestep": np.full(batch, 500, np.float32)}
            if "class_labels" in inp:
                feeds["class_labels"] = np.arange(batch, dtype=np.int64) % 10
            ref = sessions["fp32"].run(None, feeds)[0]
            times = {n: [] for n in sessions}
            err = {}
            for n, s in sessions.items():
                out = s.run(None, feeds)[0]
                err[n] = float(np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref ** 2)))
                for _ in range(2):
                    s.run(None, feeds)
            for _ in range(args.runs):
                for n, s in sessions.items():  # interleaved
                    t = time.perf_counter()
                    s.run(None, feeds)
                    times[n].append((time.perf_counter() - t) * 1000)
            med = {n: statistics.median(v) for n, v in times.items()}
            for n in sessions:
                row = {"model": kind, "variant": n, "batch": batch, "median_ms": round(med[n], 2),
                       "speedup": round(med["fp32"] / med[n], 3), "runs": args.runs, "rel_rmse": round(err[n], 4),
                       "bytes": sum(p.stat().st_size for p in dirs[n].rglob("*") if p.is_file()
                                    and p.suffix in (".onnx", ".bin"))}
                rows.append(row)
                print(json.dumps(row), flush=True)
                with open(ROOT / "results" / "int8_runs.jsonl", "a") as f:
                    f.write(json.dumps({"bench": "latency", **row, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    print()
    print("| model | variant | batch | median ms | speed-up vs FP32 | rel. RMSE vs FP32 | graph+weights MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['median_ms']} | x{r['speedup']} | "
              f"{r['rel_rmse']} | {r['bytes'] / 1e6:.1f} |")


def main(argv=None) -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--models", nargs="+", default=["demo", "demo-dit"])
    q.add_argument("--configs", nargs="+", default=["ndtc", "uniform", "single-step", "noise-minmax"],
                   choices=list(CONFIGS))
    q.add_argument("--n", type=int, default=256)
    q.add_argument("--step-images", type=int, default=32)
    pa = sub.add_parser("paired")
    pa.add_argument("--models", nargs="+", default=["demo", "demo-dit"])
    pa.add_argument("--configs", nargs="+", default=["ndtc", "uniform", "noise-minmax", "noise", "ndtc-minmax"])
    pa.add_argument("--n", type=int, default=256)
    lat = sub.add_parser("latency")
    lat.add_argument("--kinds", nargs="+", default=["unet", "dit"], help="unet, dit (random mid-size) or demo, demo-dit")
    lat.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    lat.add_argument("--runs", type=int, default=25)
    lat.add_argument("--recompile", action="store_true")
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    (ROOT / "results").mkdir(exist_ok=True)
    {"quality": quality, "paired": paired, "latency": latency}[args.cmd](args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent))
    main()
