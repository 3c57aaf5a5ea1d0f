#!/usr/bin/env python
"""Torch eager FP32 vs ONNX Runtime FP32 (the foundation issue's benchmark).

For each model: compile an FP32 artifact (no passes), then ``dmc.evaluate.benchmark`` runs
the artifact (ORT) and the same model in torch eager through the same sampler loop,
interleaved, batch 1: per model call (``executor.run`` timed per call) and end to end per
image, medians and p90 over the repeats, the ratio as the median of per-pair ratios, and
peak RSS of each side measured in a fresh subprocess.

Models: the demo UNet (trained, 16x16x1), a mid-size UNet2DModel (64x64x3,
block_out_channels (128,256,256,256), layers_per_block 2, random weights) and a
DiT-S/2-sized DiTTransformer2DModel (hidden 384 = 6 heads x 64, 12 layers, patch 2,
32x32x4, 1000 classes, random weights).

    python bench/bench_fp32.py --repeats 20 --threads 1 --out BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path


def build_source(name: str, work: Path) -> tuple[str, int, int]:
    """A model source for ``name``: (path, parameter count, sampler steps used for it)."""
    import diffusers
    import torch

    from dmc.models.builtin import SCHEDULER_CONFIG, demo_path
    from dmc.models.checkpoint import save_model

    path = work / f"{name}.safetensors"
    if name == "demo":
        shutil.copyfile(demo_path("demo"), path)  # frozen copy (the demo may still be retrained)
        from dmc.models.loading import load_model

        params = sum(p.numel() for p in load_model(str(path)).model.parameters())
        return str(path), params, 20
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "unet64":
            model = diffusers.UNet2DModel(
                sample_size=64, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                layers_per_block=2,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
        elif name == "dit-s2":
            model = diffusers.DiTTransformer2DModel(
                num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
        else:
            raise SystemExit(f"unknown model {name!r} (demo, unet64, dit-s2)")
    save_model(model.eval(), path, SCHEDULER_CONFIG)
    return str(path), sum(p.numel() for p in model.parameters()), 5


def run_one(name: str, work: Path, repeats: int, warmup: int, threads: int, steps: int | None) -> dict:
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.evaluate import benchmark
    from dmc.sampling.recipe import Recipe

    source, params, default_steps = build_source(name, work)
    steps = steps or default_steps
    t = time.time()
    artifact = compile_model(source, work / f"{name}.dmc",
                             CompileOptions(recipe=Recipe(steps=steps), verify_images=1, force=True))
    print(f"[bench] {name}: compiled in {time.time() - t:.0f} s; benchmarking", file=sys.stderr, flush=True)
    result = benchmark(artifact, vs=source, n_images=1, repeats=repeats, warmup=warmup, threads=threads,
                       progress=True)
    return {"name": name, "params": params, "steps": steps, "bench": result}


def row(r: dict) -> str:
    b = r["bench"]
    ort, pt = b["artifact"], b["vs"]
    call_o, call_t = ort["per_call"]["full"], pt["per_call"]["full"]
    e_o, e_t = ort["end_to_end_per_image"], pt["end_to_end_per_image"]
    ratio = b["ratio"]
    mem = lambda s: f"{s['memory']['peak_rss_mb']:.0f}" if "peak_rss_mb" in s.get("memory", {}) else "-"  # noqa: E731
    return (f"| {r['name']} | {r['params'] / 1e6:.2f} M | {r['steps']} | "
            f"{call_t['median_ms']:.2f} / {call_t['p90_ms']:.2f} | "
            f"{call_o['median_ms']:.2f} / {call_o['p90_ms']:.2f} | "
            f"**{1 / ratio['per_call']['median']:.2f}x** | "
            f"{e_t['median_ms']:.1f} / {e_t['p90_ms']:.1f} | {e_o['median_ms']:.1f} / {e_o['p90_ms']:.1f} | "
            f"**{ratio['end_to_end']['speedup']:.2f}x** ({1 / ratio['end_to_end']['p90']:.2f}-"
            f"{1 / ratio['end_to_end']['p10']:.2f}) | {mem(pt)} / {mem(ort)} |")


HEADER = ("| model | params | steps | torch per call ms (median / p90) | ORT per call ms (median / p90) | "
          "per call torch/ORT | torch per image ms (median / p90) | ORT per image ms (median / p90) | "
          "per image torch/ORT (p10-p90 of pairs) | peak RSS MB torch / ORT |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="demo,unet64,dit-s2")
    p.add_argument("--repeats", type=int, default=20, help="interleaved timed runs per model (>= 20 for the record)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads for both torch and ONNX Runtime")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: 20 demo, 5 for the big random-weight models)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--work", type=Path, default=None, help="keep artifacts here (default: a temp folder)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="dmc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    started = time.time()
    for name in args.models.split(","):
        r = run_one(name.strip(), work, args.repeats, args.warmup, args.threads, args.steps)
        rows.append(r)
        print(row(r), flush=True)
    machine = rows[0]["bench"]["machine"] if rows else {}
    cmd = "python bench/bench_fp32.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join([
        f"Command: `{cmd}`  ",
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores (shared), torch {torch.__version__}, "
        f"threads {args.threads} for both sides  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')}; total {time.time() - started:.0f} s  ",
        f"Batch 1, {args.repeats} interleaved runs per model after {args.warmup} warm-up runs; "
        "ratios are medians of per-pair ratios.",
        "",
        HEADER,
        *(row(r) for r in rows),
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
