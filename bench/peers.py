"""Peers side by side (issue #14 item 7, #17): one interleaved session, same model, steps, seeds.

    python bench/peers.py --fp32 demo.dmc --int8 demo-int8.dmc --int8-ov demo-int8-ov.dmc \
        [--int8-cache fast.dmc] [--threads 1 2] [--repeats 5] [--n-quality 8]
    python bench/peers.py --build-mid out/peers-mid [--threads 2]   # the mid-size UNet, built here
    python bench/peers.py --build-mid out/peers-mid --mid-weights mid.safetensors   # trained (#17)

``--build-mid WORK`` compiles (once) the mid-size UNet (27.8 M parameters, class-conditional, DDIM 20,
guidance 2) as seven dmc artifacts under WORK (FP32; ``--int8`` and ``--int8 --cache`` for ONNX Runtime
and with ``--profile ov-cpu`` for OpenVINO; ``--int8 --profile ov-cpu --int8-stream``, also with
``--keep-float none``) and compares those. With ``--mid-weights`` (a model trained by
``scripts/train_demo.py --model mid``) they are compiled as ``dmc compress`` compiles them and must pass
their fidelity floor; without it bench_cache.py's random-weight model is used with the floor off (random
weights make samples chaotic, so the PSNR column measures that chaos, not INT8 quality).

Variants (every one drives the same call table and initial noise; only the executor differs):
torch eager FP32, ONNX Runtime FP32, OpenVINO FP32, OpenVINO INT8 quantized by NNCF's default
``nncf.quantize`` on 80 trajectory inputs, and dmc's artifacts (``--int8`` on ONNX Runtime,
``--int8 --profile ov-cpu`` on OpenVINO, ``--int8 --cache``). Each thread count runs in its own
process (thread pools of other runtimes spinning in one process distort the figures). Reported:
per call and end to end per image (medians over interleaved repeats), CPU seconds per image, and
the paired PSNR of each path's samples against ONNX Runtime FP32 on the same seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

NNCF_SUBSET = 80


class NncfExecutor:
    """OpenVINO INT8 model from ``nncf.quantize`` (default settings), behind the executor contract."""

    name = "openvino+nncf"

    def __init__(self, fp32_manifest, calibration_feeds: list[dict], threads: int):
        import nncf
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(fp32_manifest.graph_path("full")))
        self._inputs = [i.get_any_name() for i in model.inputs]
        self._outputs = [o.get_any_name() for o in model.outputs]
        data = nncf.Dataset([{k: f[k] for k in self._inputs} for f in calibration_feeds])
        quantized = nncf.quantize(model, data, subset_size=len(calibration_feeds))
        compiled = core.compile_model(quantized, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY"})
        self.request = compiled.create_infer_request()
        self.providers = ["CPU"]

    def input_names(self, graph):
        return self._inputs

    def output_names(self, graph):
        return self._outputs

    def run(self, graph, feeds):
        self.request.infer({k: np.ascontiguousarray(feeds[k]) for k in self._inputs})
        return [self.request.get_output_tensor(i).data.copy() for i in range(len(self._outputs))]

    def to_numpy(self, value):
        return value


def _calibration_feeds(pipe, n: int) -> list[dict]:
    """``n`` model inputs from the FP32 trajectory, spread over the calls (PTQ on real sampler states)."""
    feeds: list[dict] = []
    pipe.sample(max(1, n // len(pipe.calls) + 1), seed=1234,
                on_call=lambda k, f, raw, x: feeds.append({kk: np.array(v) for kk, v in f.items()}))
    idx = np.linspace(0, len(feeds) - 1, n).round().astype(int)
    return [feeds[i] for i in idx]


def _variants(args, threads: int) -> dict:
    from dmc.artifact import read_manifest
    from dmc.evaluate.evaluate import open_model
    from dmc.runtimes import load
    from dmc.runtimes.pipeline import Pipeline

    fp32 = read_manifest(args.fp32)
    v = {"torch eager FP32": open_model(fp32.model["source"], fp32.recipe, threads,
                                        training_schedule=fp32.data.get("training_schedule")).pipeline,
         "ORT FP32 (dmc FP32 artifact)": load(args.fp32, threads=threads),
         "OpenVINO FP32": load(args.fp32, backend="openvino", threads=threads)}
    calib = _calibration_feeds(v["ORT FP32 (dmc FP32 artifact)"], NNCF_SUBSET)
    v["OpenVINO + NNCF INT8 (default)"] = Pipeline.from_manifest(fp32, NncfExecutor(fp32, calib, threads))
    if args.int8:
        v["dmc --int8 (ORT)"] = load(args.int8, threads=threads)
    if args.int8_ov:
        v["dmc --int8 --profile ov-cpu (OpenVINO)"] = load(args.int8_ov, backend="openvino", threads=threads)
    if args.int8_ov_stream:
        v["dmc --int8 --profile ov-cpu --int8-stream (OpenVINO)"] = load(args.int8_ov_stream, backend="openvino",
                                                                         threads=threads)
    if args.int8_ov_stream_all:
        v["dmc --int8 --profile ov-cpu --int8-stream --keep-float none (OpenVINO)"] = load(
            args.int8_ov_stream_all, backend="openvino", threads=threads)
    if args.int8_cache:
        v["dmc --int8 --cache (ORT)"] = load(args.int8_cache, threads=threads)
    if args.int8_cache_ov:
        v["dmc --int8 --cache --profile ov-cpu (OpenVINO)"] = load(args.int8_cache_ov, backend="openvino",
                                                                   threads=threads)
    return v


def build_mid(work: str, weights: str | None = None) -> dict[str, str]:
    """The mid-size UNet as the FP32, --int8 (ORT), --int8 --profile ov-cpu, --int8 --cache (ORT) and
    --int8 --cache --profile ov-cpu artifacts (compiled once under ``work``): argument name -> path.

    ``weights``: a trained mid-size model (``scripts/train_demo.py --model mid``); its artifacts are
    compiled exactly as ``dmc compress`` does (same passes and defaults) and must pass their fidelity
    floor. Without it, bench_cache.py's random-weight model with the floor off (latency only)."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_cache
    from dmc.compress.plan import plan_passes

    wanted = {"fp32": "fp32", "int8": "int8", "int8_ov": "int8 ov-cpu", "int8_ov_stream": "int8 ov-cpu stream",
              "int8_ov_stream_all": "int8 ov-cpu stream all", "int8_cache": "int8 cache",
              "int8_cache_ov": "int8 cache ov-cpu"}
    if weights:
        budget = {"calib_budget": 45.0}  # the CLI's default
        specs = {"fp32": [], "int8": plan_passes(int8=True, **budget),
                 "int8 ov-cpu": plan_passes(int8=True, profile="ov-cpu", **budget),
                 "int8 ov-cpu stream": plan_passes(int8=True, profile="ov-cpu", int8_stream=True, **budget),
                 "int8 ov-cpu stream all": plan_passes(int8=True, profile="ov-cpu", int8_stream=True,
                                                       keep_float="none", **budget),
                 "int8 cache": plan_passes(int8=True, cache=True, **budget),
                 "int8 cache ov-cpu": plan_passes(int8=True, cache=True, profile="ov-cpu", **budget)}
        source, preset = str(weights), None
    else:
        from dmc.quantize import QuantizeConfig

        specs = bench_cache.variants(mid=True)
        specs["int8 ov-cpu"] = [QuantizeConfig(profile="ov-cpu", num_samples=4, batch_size=4), bench_cache.LatencyOnly()]
        specs["int8 ov-cpu stream"] = [QuantizeConfig(profile="ov-cpu", num_samples=4, batch_size=4, residual_stream=True),
                                       bench_cache.LatencyOnly()]
        specs["int8 ov-cpu stream all"] = [QuantizeConfig(profile="ov-cpu", num_samples=4, batch_size=4,
                                                          residual_stream=True, keep_float=()), bench_cache.LatencyOnly()]
        specs["int8 cache"] = specs["cache DP + int8, joint + DEC"]
        cache, _, correct, latency_only = specs["int8 cache"]
        specs["int8 cache ov-cpu"] = [cache, QuantizeConfig(profile="ov-cpu", num_samples=4, batch_size=4),
                                      correct, latency_only]
        source, preset = bench_cache.mid_model(Path(work) / "mid_unet"), "ddpm-linear"
    paths = bench_cache.build(source, Path(work), {v: specs[v] for v in wanted.values()}, force=False,
                              verify_images=1 if not weights else 4, scheduler_preset=preset)
    missing = [v for v in wanted.values() if v not in paths]
    if missing:
        raise SystemExit(f"peers: could not build {missing}")
    return {arg: str(paths[v]) for arg, v in wanted.items()}


def child(args) -> dict:
    from dmc.evaluate.bench import TimedExecutor

    threads = args.child_threads
    variants = _variants(args, threads)
    timed = {}
    for name, pipe in variants.items():
        timed[name] = pipe.executor = TimedExecutor(pipe.executor)
    e2e = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    calls = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.warmup + args.repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            timed[name].records.clear()
            t, c = time.perf_counter(), time.process_time()
            variants[name].sample(1, seed=0, batch_size=1)
            if r >= args.warmup:
                e2e[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
                calls[name].append(float(np.median([s for _, s in timed[name].records])))
    ref = variants["ORT FP32 (dmc FP32 artifact)"].sample(args.n_quality, seed=0)
    out = {}
    for name in names:
        x = variants[name].sample(args.n_quality, seed=0)
        mse = float(np.mean((x - ref) ** 2))
        out[name] = {"per_image_s": float(np.median(e2e[name])), "cpu_s_per_image": float(np.median(cpu[name])),
                     "per_call_ms": 1e3 * float(np.median(calls[name])),
                     "psnr_vs_ort_fp32_db": float(10 * np.log10(4.0 / mse)) if mse > 0 else float("inf")}
    return {"threads": threads, "repeats": args.repeats, "results": out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32")
    p.add_argument("--build-mid", metavar="WORK", help="compile and compare the mid-size UNet's artifacts")
    p.add_argument("--int8")
    p.add_argument("--int8-ov")
    p.add_argument("--int8-ov-stream")
    p.add_argument("--int8-ov-stream-all", help="--int8-stream --keep-float none (no float islands)")
    p.add_argument("--int8-cache")
    p.add_argument("--int8-cache-ov")
    p.add_argument("--mid-weights", help="with --build-mid: a trained mid-size model (scripts/train_demo.py --model mid)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--n-quality", type=int, default=8)
    p.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_mid:  # compiles in the parent; each child finds the artifacts built
        for arg, path in build_mid(args.build_mid, args.mid_weights).items():
            setattr(args, arg, path)
    if not args.fp32:
        p.error("--fp32 (or --build-mid) is required")
    if args.child_threads:
        print(json.dumps(child(args)))
        return 0
    rows = []
    for threads in args.threads:  # one process per thread count
        cmd = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), "--child-threads", str(threads)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    for r in rows:
        base = r["results"]["torch eager FP32"]["per_image_s"]
        print(f"\n{r['threads']} thread(s), {r['repeats']} interleaved repeats, medians")
        print("| variant | s per image | CPU s per image | ms per call | x torch eager | PSNR vs ORT FP32 (dB) |")
        print("|---|---|---|---|---|---|")
        for name, v in r["results"].items():
            print(f"| {name} | {v['per_image_s']:.3f} | {v['cpu_s_per_image']:.3f} | {v['per_call_ms']:.2f} | "
                  f"{base / v['per_image_s']:.2f} | {v['psnr_vs_ort_fp32_db']:.1f} |")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
