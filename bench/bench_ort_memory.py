"""Peak memory and speed of one ONNX Runtime session over an artifact's graph, per session option.

    python bench/bench_ort_memory.py ART.dmc --modes default nopattern noarena --batch 2 --runs 4

Each mode runs in its own process (peak RSS is per process): load the graph, then ``--runs`` calls
at ``--batch`` rows with random inputs. Modes: ``default`` (dmc's settings before the bound on the
memory pattern), ``nopattern`` (``enable_mem_pattern = False``), ``noarena``
(``enable_cpu_mem_arena = False``). Found the SD 1.5 verification peak (BENCHMARKS.md, issue 10).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(graph: str, mode: str, batch: int, runs: int, threads: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.log_severity_level = 3
    o.intra_op_num_threads = threads
    o.enable_mem_pattern = mode != "nopattern"
    o.enable_cpu_mem_arena = mode != "noarena"
    t = time.perf_counter()
    s = ort.InferenceSession(graph, o, providers=["CPUExecutionProvider"])
    out = {"mode": mode, "load_s": round(time.perf_counter() - t, 1),
           "after_load_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2), "calls_s": []}
    rng = np.random.default_rng(0)
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in i.shape]
        feeds[i.name] = (np.full(shape, 500, np.int64) if "int" in i.type
                         else rng.standard_normal(shape).astype(np.float32))
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        out["calls_s"].append(round(time.perf_counter() - t, 2))
    out["peak_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    return out


def main() -> None:
    if sys.argv[1:2] == ["_child"]:
        print(json.dumps(child(sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--graph", default="full")
    ap.add_argument("--modes", nargs="+", default=["default", "nopattern", "noarena"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    graph = f"{args.artifact}/graphs/{args.graph}.onnx"
    for mode in args.modes:
        proc = subprocess.run([sys.executable, __file__, "_child", graph, mode, str(args.batch), str(args.runs),
                               str(args.threads)], capture_output=True, text=True, check=True)
        print(proc.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
