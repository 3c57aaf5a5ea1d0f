"""ONNX Runtime's intra-op spinning, on or off, for one artifact: wall and CPU time per run.

    python bench/bench_ort_spinning.py ART [--threads 2] [--runs 15]

Each setting runs in its own process (a pool that spun in the same process would distort the other);
``session.intra_op.allow_spinning`` is forced for every session of the artifact. An image artifact samples
2 images per run; a policy acts on one synthetic history per run. Medians after 3 warm-up runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def child(art: str, threads: int, spin: str, runs: int) -> dict:
    import dmc.runtimes.onnxruntime_executor as executor

    original = executor.OnnxRuntimeExecutor.__init__

    def forced(self, *args, **kwargs):
        kwargs["session_config"] = {executor.SPIN: spin}
        original(self, *args, **kwargs)

    executor.OnnxRuntimeExecutor.__init__ = forced
    from dmc.runtimes import load
    from dmc.runtimes.policy import Policy

    target = load(art, threads=threads)
    if isinstance(target, Policy):
        from dmc.evaluate.bench_policy import synthetic_observations

        obs = synthetic_observations(target, runs, 0)
        step = lambda i: target.act({k: v[i] for k, v in obs.items()}, seed=i)  # noqa: E731
    else:
        step = lambda i: target.sample(2, seed=i, batch_size=2)  # noqa: E731
    wall, cpu = [], []
    for i in range(runs):
        t, c = time.perf_counter(), time.process_time()
        step(i)
        if i >= 3:
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
    return {"spinning": spin == "1", "wall_ms": float(np.median(wall) * 1e3), "cpu_ms": float(np.median(cpu) * 1e3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.artifact, args.threads, args.child, args.runs)))
        return
    for spin in ("1", "0"):
        out = subprocess.run([sys.executable, __file__, args.artifact, "--threads", str(args.threads), "--runs",
                              str(args.runs), "--child", spin], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{args.artifact}  threads {args.threads}  spinning {'on ' if r['spinning'] else 'off'}  "
              f"wall {r['wall_ms']:.1f} ms  CPU {r['cpu_ms']:.1f} ms")


if __name__ == "__main__":
    main()
