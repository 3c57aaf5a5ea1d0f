"""Unrolled-sampler memory and mask-learned pruning benchmarks.

    python bench/bench_prune.py memory [--models demo mid] [--steps 10]
    python bench/bench_prune.py quality [--ratios 0.1 0.2 0.3] [--n 256] [--targets params macs]

memory: one gradient of an end-to-end loss on the final sample w.r.t. every parameter, naive
(whole unrolled graph kept) vs per-step checkpointed, each in its own subprocess. Reported: peak
bytes of tensors saved for backward (activations only; parameters excluded), peak RSS growth of
the process over its state after loading and one no-grad sampling run, and wall time.

quality: the prune pass at each ratio, method (learned, magnitude = global L1, magnitude-layer =
L1 within each layer) and target (``--targets``: RATIO of the parameters or of the MACs per call), DDIM 20 steps, guidance 2, then ``dmc.evaluate.evaluate`` (what ``dmc eval``
runs) of every artifact against the unpruned model: paired PSNR/SSIM, Frechet distance to held-out
digits, class accuracy. Per-call latency: every artifact of a model and its unpruned FP32
artifact sample interleaved on ONNX Runtime (``--threads``), median seconds of the model calls.
``--models mid`` is the random-weight mid-size UNet: parameters and latency only (its samples
are chaotic, so quality figures would mean nothing); its learned masks train ``--mid-iterations``
iterations on DDIM ``--mid-steps`` (full-size training there costs tens of minutes per ratio).
Rows are appended to ``bench/results/prune_runs.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent
WORK = Path(os.environ.get("DMC_BENCH_DIR", Path(tempfile.gettempdir()) / "dmc-bench-prune"))


def _mid_unet():
    """The mid-size UNet of bench_int8.py's latency runs (random weights, 64x64x3)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=64, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
                       layers_per_block=2,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


class _Box:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


class SavedBytes:
    """Peak bytes of activations autograd keeps for backward (parameters are not counted)."""

    def __init__(self, params):
        self.skip = {p.data_ptr() for p in params}
        self.live = self.peak = 0

    def _release(self, n):
        self.live -= n

    def pack(self, t):
        if t.data_ptr() in self.skip:
            return t
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)

        box = _Box(t)
        weakref.finalize(box, self._release, n)
        return box

    @staticmethod
    def unpack(obj):
        return obj.tensor if isinstance(obj, _Box) else obj


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def memory_child(model_name: str, steps: int, mode: str, batch: int) -> dict:
    import torch

    from dmc.learn.unrolled import UnrolledSampler
    from dmc.models.builtin import SCHEDULER_CONFIG
    from dmc.sampling import Recipe
    from dmc.sampling.compile import compile_calls

    torch.set_num_threads(1)
    if model_name == "demo":
        from dmc.models.loading import load_model

        model = load_model("demo").model
        labels = {"class_labels": torch.arange(batch) % 10}
        uncond = {"class_labels": torch.full((batch,), 10)}
        guidance = 2.0
    else:
        model, labels, uncond, guidance = _mid_unet().eval(), {}, {}, None
    model.requires_grad_(True)
    cfg = model.config
    shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    calls = compile_calls(Recipe(steps=steps), SCHEDULER_CONFIG)
    fn = lambda x, t, **c: model(x, t, **c, return_dict=False)[0]  # noqa: E731
    sampler = UnrolledSampler(fn, calls, guidance)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = sampler.sample(x, labels, uncond)
    loss_fn = lambda y: (y - target).square().mean()  # noqa: E731
    base = _rss_mb()
    counter = SavedBytes(list(model.parameters()))
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        if mode == "naive":
            loss_fn(sampler.sample(x, labels, uncond)).backward()
        else:
            sampler.backward(x, loss_fn, labels, uncond)
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": model_name, "params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "batch": batch, "guidance": guidance, "mode": mode, "saved_activations_mb": round(counter.peak / 2**20, 1),
            "rss_growth_mb": round(peak_rss - base, 1), "seconds": round(seconds, 2)}


def cmd_memory(args) -> None:
    rows = []
    for model_name in args.models:
        for mode in ("naive", "checkpointed"):
            out = subprocess.run([sys.executable, __file__, "_memory_child", model_name, str(args.steps), mode,
                              str(args.batch)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| model | params | steps | batch | mode | saved activations (MB) | peak RSS growth (MB) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['steps']} | {r['batch']}"
              f"{' (x2 guided)' if r['guidance'] else ''} | {r['mode']} | {r['saved_activations_mb']} | "
              f"{r['rss_growth_mb']} | {r['seconds']} |")


def _mid_source() -> str:
    folder = WORK / "mid_unet"
    if not (folder / "config.json").exists():
        _mid_unet().save_pretrained(folder)
    return str(folder)


def per_call_seconds(paths: dict, threads: int, repeats: int) -> dict:
    """Median seconds per model call of each artifact, sampling one image interleaved over repeats."""
    import statistics

    from dmc.evaluate.bench import TimedExecutor
    from dmc.runtimes import load

    pipes = {}
    for name, path in paths.items():
        pipes[name] = load(path, threads=threads)
        pipes[name].executor = TimedExecutor(pipes[name].executor)
        pipes[name].sample(1, seed=0)  # warm-up: session start, allocator
        pipes[name].executor.records.clear()
    for r in range(repeats):
        for name in (list(pipes) if r % 2 == 0 else list(pipes)[::-1]):
            pipes[name].sample(1, seed=r, batch_size=1)
    return {name: statistics.median(s for _, s in pipe.executor.records) for name, pipe in pipes.items()}


def cmd_quality(args) -> None:
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.evaluate.evaluate import evaluate
    from dmc.prune import PruneConfig
    from dmc.sampling import Recipe

    WORK.mkdir(parents=True, exist_ok=True)
    results = ROOT / "results" / "prune_runs.jsonl"
    rows = []
    for model in args.models:
        mid = model == "mid"
        source = _mid_source() if mid else model
        steps = args.mid_steps if mid else args.steps
        extra = {"scheduler_preset": "ddpm-linear"} if mid else {}
        recipe = Recipe(steps=steps, guidance=1.0 if mid else 2.0)
        unpruned = WORK / f"{model}-unpruned.dmc"
        compile_model(source, unpruned, CompileOptions(recipe=recipe, force=True, verify_images=1, **extra))
        paths, model_rows = {"unpruned": unpruned}, []
        for ratio, method, target in [(r, m, t) for r in args.ratios for m in args.methods for t in args.targets]:
            label = method if target == "params" else f"{method}/macs"
            path = WORK / f"{model}-{label.replace('/', '-')}-{ratio}.dmc"
            cfg = PruneConfig(ratio=ratio, method=method, target=target)
            if mid:
                cfg = PruneConfig(ratio=ratio, method=method, target=target, iterations=args.mid_iterations)
            start = time.perf_counter()
            compile_model(source, path, CompileOptions(recipe=recipe, force=True, passes=[cfg],
                                                       verify_images=1 if mid else 4, **extra))
            seconds = time.perf_counter() - start
            manifest = json.loads((path / "manifest.json").read_text())
            rec = next(p for p in manifest["passes"] if p["name"] == "prune")
            row = {"model": model, "ratio": ratio, "method": label, "target": target, "steps": steps,
                   "n": args.n, "params_before": rec["params_before"], "params_after": rec["params_after"],
                   "params_ratio": rec["params_ratio"], "macs_ratio": rec["macs_ratio"],
                   "compile_seconds": round(seconds, 1),
                   "train_seconds": (rec.get("training") or {}).get("seconds"),
                   "train_iterations": cfg.iterations if method == "learned" else None,
                   "constant_branches": sum(r["constant"] for r in rec["layers"]),
                   "date": time.strftime("%Y-%m-%d")}
            if not mid:
                ev = evaluate(path, reference=model, n=args.n)
                row.update({
                    "psnr_mean": ev["paired"]["psnr_mean"], "ssim_mean": ev["paired"]["ssim_mean"],
                    "fd": ev["frechet"]["fd"], "fd_ci": [ev["frechet"]["ci_low"], ev["frechet"]["ci_high"]],
                    "fd_reference_model": ev["frechet"]["reference_model_fd"],
                    "fd_delta": ev["frechet"]["fd_delta"],
                    "accuracy": (ev.get("classifier") or {}).get("accuracy"),
                    "accuracy_reference": (ev.get("classifier") or {}).get("reference_accuracy")})
            paths[f"{label}-{ratio}"] = path
            model_rows.append(row)
            print(json.dumps(row), flush=True)
        latency = per_call_seconds(paths, args.threads, args.repeats)
        for row in model_rows:
            row.update({"per_call_ms": round(1e3 * latency[f"{row['method']}-{row['ratio']}"], 3),
                        "unpruned_per_call_ms": round(1e3 * latency["unpruned"], 3),
                        "threads": args.threads, "latency_repeats": args.repeats})
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
        rows += model_rows
    print("\n| model | ratio | method | params kept | MACs kept | ms per call (unpruned) | x faster | paired PSNR (dB) | SSIM | "
          "FD [95% CI] (unpruned FD) | class acc. (unpruned) | constant branches | compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        acc = f"{r['accuracy']:.3f} ({r['accuracy_reference']:.3f})" if r.get("accuracy") is not None else "-"
        quality = (f"{r['psnr_mean']:.2f} | {r['ssim_mean']:.3f} | {r['fd']:.2f} [{r['fd_ci'][0]:.2f}, "
                   f"{r['fd_ci'][1]:.2f}] ({r['fd_reference_model']:.2f})") if "fd" in r else "- | - | -"
        print(f"| {r['model']} | {r['ratio']} | {r['method']} | {r['params_ratio']:.1%} | {r['macs_ratio']:.1%} | "
              f"{r['per_call_ms']:.2f} "
              f"({r['unpruned_per_call_ms']:.2f}) | {r['unpruned_per_call_ms'] / r['per_call_ms']:.2f} | {quality} | "
              f"{acc} | {r['constant_branches']} | {r['compile_seconds']} |")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory_child":
        print(json.dumps(memory_child(argv[1], int(argv[2]), argv[3], int(argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--models", nargs="+", default=["demo", "mid"])
    mem.add_argument("--steps", type=int, default=10)
    mem.add_argument("--batch", type=int, default=4)
    qual = sub.add_parser("quality")
    qual.add_argument("--models", nargs="+", default=["demo"])
    qual.add_argument("--ratios", nargs="+", type=float, default=[0.1, 0.2, 0.3])
    qual.add_argument("--methods", nargs="+", default=["learned", "magnitude", "magnitude-layer"])
    qual.add_argument("--steps", type=int, default=20)
    qual.add_argument("--n", type=int, default=256)
    qual.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the latency runs")
    qual.add_argument("--repeats", type=int, default=5, help="interleaved sampling runs of the latency")
    qual.add_argument("--targets", nargs="+", choices=["params", "macs"], default=["params"])
    qual.add_argument("--mid-iterations", type=int, default=8)
    qual.add_argument("--mid-steps", type=int, default=10)
    args = ap.parse_args(argv)
    {"memory": cmd_memory, "quality": cmd_quality}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
