"""``dmc bench``: latency per model call and end to end per image, and peak memory.

Timing: after ``warmup`` untimed runs, each run samples ``n_images`` images in one batch
with a fixed seed; ``executor.run`` is timed per call (grouped by graph variant) and the
whole ``Pipeline.sample`` per image. Medians and p90 are over runs (per call: over every
call of every run). With ``vs`` the two targets alternate A,B / B,A each repeat in one
process, and the ratio is the median of the per-pair ratios, which cancels most of the
drift of a shared machine.

Memory: each target is opened and run once in a fresh subprocess that reports its peak
RSS (``VmHWM``) and its RSS after imports, before loading; the difference (``delta_mb``) is
what loading and running the target costs. ``ru_maxrss`` deltas inside one process would
hide the second target behind the first's high-water mark, and even in a child
``ru_maxrss`` starts at the parent's RSS (Linux carries it across fork and exec), so the
child reads ``VmHWM``, the high-water mark of its own address space.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dmc.errors import DmcError

BENCH_FORMAT = "dmc-bench"


class TimedExecutor:
    """Wraps an executor; records ``(graph, seconds)`` for every ``run``."""

    def __init__(self, inner):
        self.inner = inner
        self.records: list[tuple[str, float]] = []
        self.name = getattr(inner, "name", type(inner).__name__)

    def __getattr__(self, attr):  # the rest of the executor contract (providers, to_numpy, ...)
        return getattr(self.inner, attr)

    def output_names(self, graph: str) -> list[str]:
        return self.inner.output_names(graph)

    def run(self, graph: str, feeds: dict) -> list:
        t = time.perf_counter()
        out = self.inner.run(graph, feeds)
        self.records.append((graph, time.perf_counter() - t))
        return out


def open_target(spec: str, recipe_from: str | None = None, threads: int | None = None):
    """An artifact (ONNX Runtime), or a model source run by torch under ``recipe_from``'s recipe."""
    from dmc.evaluate.evaluate import is_artifact, open_artifact, open_model

    if is_artifact(spec):
        return open_artifact(spec, threads)
    if recipe_from is None or not is_artifact(recipe_from):
        raise DmcError(f"{spec}: not a dmc artifact; a model can only be benchmarked against an artifact "
                       "(it runs under that artifact's recipe), e.g. `dmc bench ARTIFACT --vs MODEL`")
    from dmc.artifact import read_manifest
    from dmc.sampling.step_plan import base_calls
    from dmc.runtimes.text2image import has_prompt_pipeline

    manifest = read_manifest(recipe_from, verify=False)
    if has_prompt_pipeline(manifest):
        from dmc.data.prompts import EVAL_PROMPTS
        from dmc.evaluate.evaluate import open_prompt_model

        return open_prompt_model(spec, manifest, list(EVAL_PROMPTS), threads)
    return open_model(spec, manifest.recipe, threads, training_schedule=manifest.data.get("training_schedule"),
                      calls=base_calls(manifest.data))


def _stats(values_s: list[float]) -> dict:
    v = np.asarray(values_s, dtype=np.float64) * 1e3
    med = float(np.median(v))
    return {"median_ms": med, "p90_ms": float(np.percentile(v, 90)), "min_ms": float(v.min()),
            "mean_ms": float(v.mean()), "count": int(v.size),
            "noise": float((np.percentile(v, 90) - med) / med) if med > 0 else 0.0}


def run_once(target, n_images: int, seed: int) -> dict:
    """One run as a user makes it: ``n_images`` samples, or for a text-to-image target prompt -> image
    (encode, denoise, decode). Returns the stages' seconds (text-to-image only, else empty)."""
    if target.prompts is None:
        target.pipeline.sample(n_images, seed, batch_size=n_images)
        return {}
    target.pipeline(prompt=target.prompts_for(0, n_images), n=n_images, seed=seed, batch_size=n_images)
    return dict(target.pipeline.last_timings)


class _Runner:
    def __init__(self, target, n_images: int, seed: int):
        self.target = target
        sampler = target.sampler  # the backbone's loop: its model calls are what per_call times
        self.timed = TimedExecutor(sampler.executor)
        sampler.executor = self.timed
        self.n_images, self.seed = n_images, seed
        self.e2e: list[float] = []  # seconds per image, one per run
        self.cpu: list[float] = []  # CPU seconds of this process per image (every thread), one per run
        self.stages: dict[str, list[float]] = {}  # text-to-image: seconds per image of each stage
        self.calls: dict[str, list[float]] = {}
        self.call_median: list[float] = []  # per run: median seconds of its model calls

    def run(self, record: bool = True) -> float:
        self.timed.records.clear()
        t, cpu = time.perf_counter(), time.process_time()
        stages = run_once(self.target, self.n_images, self.seed)
        per_image = (time.perf_counter() - t) / self.n_images
        if record:
            self.e2e.append(per_image)
            self.cpu.append((time.process_time() - cpu) / self.n_images)
            for stage, seconds in stages.items():
                self.stages.setdefault(stage.removesuffix("_s"), []).append(seconds / self.n_images)
            for graph, s in self.timed.records:
                self.calls.setdefault(graph, []).append(s)
            self.call_median.append(float(np.median([s for _, s in self.timed.records])))
        return per_image

    def summary(self) -> dict:
        pipe = self.target.sampler
        graphs = [c.graph for c in pipe.calls]
        return {
            "target": self.target.spec,
            "kind": self.target.kind,
            "executor": self.timed.name,
            "calls_per_image": len(pipe.calls),
            "calls_by_graph": {g: graphs.count(g) for g in dict.fromkeys(graphs)},
            "model_batch": self.n_images * (2 if pipe.recipe.guided else 1),
            "per_call": {g: _stats(v) for g, v in self.calls.items()},
            "per_call_all": _stats([s for v in self.calls.values() for s in v]),
            "end_to_end_per_image": _stats(self.e2e),
            # CPU time beside wall time: threads that spin or wait show up here, not in the wall clock
            "cpu_per_image": _stats(self.cpu),
            "stages_per_image": {k: _stats(v) for k, v in self.stages.items()} or None,
        }


def _ratio_summary(a: list[float], b: list[float]) -> dict:
    r = np.asarray(a) / np.asarray(b)
    med = float(np.median(r))
    return {"median": med, "p10": float(np.percentile(r, 10)), "p90": float(np.percentile(r, 90)),
            "ratio_of_medians": float(np.median(a) / np.median(b)), "speedup": 1.0 / med,
            "pairs": int(r.size), "noise": float((np.percentile(r, 90) - np.percentile(r, 10)) / 2 / med)}


def measure_memory(spec: str, recipe_from: str | None, n_images: int, threads: int | None,
                   timeout: float = 600) -> dict:
    """Peak RSS of a fresh process that opens ``spec`` and samples ``n_images`` once (see module doc)."""
    cmd = [sys.executable, "-m", "dmc.evaluate.bench", "--memory-child", spec, "--n-images", str(n_images)]
    if recipe_from:
        cmd += ["--recipe-from", recipe_from]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"memory probe failed: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


def _peak_mb() -> float:
    """Peak RSS of this process image. ``VmHWM`` belongs to the address space made at exec; ``ru_maxrss``
    is the fallback (off Linux), but it also counts the parent's RSS copied by fork before exec."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _memory_child(spec: str, recipe_from: str | None, n_images: int, threads: int | None) -> dict:
    if not is_artifact_path(spec):
        import torch  # noqa: F401  (imported before the baseline so the baseline includes it)

        import dmc.compress.pipeline  # noqa: F401
    else:
        import onnxruntime  # noqa: F401

        import dmc.runtimes  # noqa: F401
    before = _rss_mb()
    target = open_target(spec, recipe_from, threads)
    loaded = _rss_mb()
    run_once(target, n_images, 0)
    peak = _peak_mb()
    return {"method": "fresh subprocess, peak RSS (VmHWM)", "rss_after_imports_mb": round(before, 1),
            "rss_after_load_mb": round(loaded, 1), "peak_rss_mb": round(peak, 1),
            "delta_mb": round(peak - before, 1)}


def is_artifact_path(spec: str) -> bool:
    p = Path(spec)
    return p.is_dir() and (p / "manifest.json").is_file()


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def benchmark(artifact: str | Path, vs: str | None = None, n_images: int = 1, repeats: int = 20,
              warmup: int = 2, threads: int | None = None, seed: int = 0, memory: bool = True,
              progress: bool = False) -> dict:
    """Latency (and peak memory) of ``artifact``, optionally interleaved with ``vs`` (an artifact or a model).

    Returns ``{"artifact": {...}, "vs": {...} | None, "ratio": {...} | None, ...}``; ``ratio`` is
    artifact time / vs time per image (< 1: the artifact is faster), median over interleaved pairs.
    """
    if repeats < 1 or n_images < 1 or warmup < 0:
        raise DmcError("--repeats and --n-images must be at least 1, --warmup at least 0")
    started = time.time()
    artifact = str(artifact)
    a = _Runner(open_target(artifact, None, threads), n_images, seed)
    b = _Runner(open_target(str(vs), artifact, threads), n_images, seed) if vs is not None else None
    runners = [a] if b is None else [a, b]
    for i in range(warmup):
        for r in runners:
            r.run(record=False)
    for i in range(repeats):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            r.run()
        if progress:
            print(f"[dmc] bench run {i + 1}/{repeats}: " + "  ".join(
                f"{r.target.label} {r.e2e[-1] * 1e3:.1f} ms/image" for r in runners), file=sys.stderr, flush=True)
    result = {
        "format": BENCH_FORMAT, "format_version": 1,
        "artifact": a.summary(),
        "vs": b.summary() if b else None,
        "ratio": None,
        "n_images": n_images, "repeats": repeats, "warmup": warmup, "seed": seed,
        "threads": threads, "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
    }
    if b is not None:
        result["ratio"] = {"end_to_end": _ratio_summary(a.e2e, b.e2e),
                           "per_call": _ratio_summary(a.call_median, b.call_median)}
    if memory:
        if progress:
            print("[dmc] measuring peak memory in subprocesses", file=sys.stderr, flush=True)
        result["artifact"]["memory"] = measure_memory(artifact, None, n_images, threads)
        if b is not None:
            result["vs"]["memory"] = measure_memory(str(vs), artifact, n_images, threads)
    result["seconds"] = round(time.time() - started, 2)
    return result


def format_bench(result: dict) -> str:
    lines = [f"{'target':<40} {'per call (median / p90)':>26} {'per image (median / p90)':>28} {'peak RSS':>10}"]
    for key in ("artifact", "vs"):
        s = result.get(key)
        if not s:
            continue
        c, e = s["per_call_all"], s["end_to_end_per_image"]
        mem = s.get("memory") or {}
        rss = f"{mem['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in mem else "-"
        name = f"{Path(s['target']).name or s['target']} [{s['executor']}]"
        lines.append(f"{name:<40} {c['median_ms']:>11.2f} / {c['p90_ms']:>8.2f} ms "
                     f"{e['median_ms']:>12.1f} / {e['p90_ms']:>8.1f} ms {rss:>10}")
        if s.get("cpu_per_image"):
            lines.append(f"  CPU time per image {s['cpu_per_image']['median_ms']:>31.1f} ms (every thread of the process)")
        for stage, st in (s.get("stages_per_image") or {}).items():
            lines.append(f"  stage {stage:<32} {'':>26} {st['median_ms']:>12.1f} / {st['p90_ms']:>8.1f} ms")
        for g, st in s["per_call"].items():
            if len(s["per_call"]) > 1:
                lines.append(f"  graph {g:<32} {st['median_ms']:>11.2f} / {st['p90_ms']:>8.2f} ms  "
                             f"({st['count']} calls)")
    if result.get("ratio"):
        r = result["ratio"]["end_to_end"]
        lines.append(f"ratio artifact/vs per image: {r['median']:.3f} (p10 {r['p10']:.3f}, p90 {r['p90']:.3f}, "
                     f"{r['pairs']} interleaved pairs) = {r['speedup']:.2f}x speed-up; per call "
                     f"{result['ratio']['per_call']['median']:.3f}")
    lines.append(f"{result['n_images']} image(s) per run, {result['repeats']} runs after {result['warmup']} "
                 f"warm-up; {result['machine']['cpu']}, {result['machine']['cores']} cores")
    return "\n".join(lines)


def _child_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dmc.evaluate.bench")
    p.add_argument("--memory-child", required=True)
    p.add_argument("--recipe-from")
    p.add_argument("--n-images", type=int, default=1)
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    print(json.dumps(_memory_child(args.memory_child, args.recipe_from, args.n_images, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
