"""Op-by-op profile of the INT8 graphs (issue #17 item 1): where each path spends a model call.

    python bench/profile_int8.py --fp32 fp32.dmc --int8 int8.dmc [more.dmc ...] \
        [--int8-ov int8ov.dmc ...] [--threads 1] [--calls 8] [--no-nncf] [--json out.json]

Every variant runs the same ``--calls`` model inputs, taken from the FP32 artifact's own trajectory
(seed 0, spread over the sampling run), after one warm-up call:

- dmc ``--int8`` on ONNX Runtime (``enable_profiling``: each kernel's time, by op type);
- dmc ``--int8 --profile ov-cpu`` on OpenVINO, and OpenVINO + NNCF's default ``nncf.quantize``
  (80 trajectory inputs) of the FP32 graph (``PERF_COUNT``: each compiled node's time with the
  kernel it ran, whose name ends in its precision, e.g. ``brgconv_avx2_I8``).

Printed per variant: ms per call by (op type, precision) and the ms spent in int8 kernels, which
says what runs INT8 in one model and float in the other. Run in a quiet process: the figures are
per-kernel sums, so a loaded machine inflates all of them alike, not their shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))


def trajectory_feeds(fp32_artifact: str, n: int, threads: int) -> list[dict]:
    from dmc.runtimes import load

    pipe = load(fp32_artifact, threads=threads)
    feeds: list[dict] = []
    pipe.sample(max(1, -(-n // len(pipe.calls))), seed=0,
                on_call=lambda k, f, raw, x: feeds.append({kk: np.array(v) for kk, v in f.items()}))
    idx = np.linspace(0, len(feeds) - 1, n).round().astype(int)
    return [feeds[i] for i in idx]


def profile_ort(graph_path: str, feeds: list[dict], threads: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dmc-prof-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(graph_path, options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        session.run(None, {k: v for k, v in feeds[0].items() if k in names})  # warm-up, dropped below
        for f in feeds:
            session.run(None, {k: v for k, v in f.items() if k in names})
        events = json.load(open(session.end_profiling()))
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    warm_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    table: dict = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < warm_end:
            continue
        op = e["args"].get("op_name", "?")
        table[(op, _ort_precision(op))] += e["dur"] / 1e3 / len(feeds)
    return dict(table)


def _ort_precision(op: str) -> str:
    if op.startswith("QLinear") or op in ("ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                                          "MatMulIntegerToFloat"):
        return "I8"
    if op in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "Q/DQ"
    return "FP32"


def profile_ov(model, feeds: list[dict], threads: int) -> dict:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_PRECISION_HINT": "f32",
                                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    names = [i.get_any_name() for i in compiled.inputs]
    request.infer({k: feeds[0][k] for k in names})
    table: dict = defaultdict(float)
    for f in feeds:
        request.infer({k: np.ascontiguousarray(f[k]) for k in names})
        for p in request.profiling_info:
            if p.status != p.Status.EXECUTED:
                continue
            precision = p.exec_type.rsplit("_", 1)[-1].upper() if "_" in p.exec_type else p.exec_type
            table[(p.node_type, precision)] += p.real_time.total_seconds() * 1e3 / len(feeds)
    return dict(table)


def nncf_model(fp32_artifact: str, feeds: list[dict], calib: list[dict]):
    import nncf
    import openvino as ov

    from dmc.artifact import read_manifest

    model = ov.Core().read_model(str(read_manifest(fp32_artifact).graph_path("full")))
    names = [i.get_any_name() for i in model.inputs]
    return nncf.quantize(model, nncf.Dataset([{k: f[k] for k in names} for f in calib]), subset_size=len(calib))


def render(name: str, table: dict) -> str:
    total = sum(table.values())
    int8 = sum(v for (op, prec), v in table.items() if prec in ("I8", "U8"))
    lines = [f"\n{name}: {total:.1f} ms per call (kernel sum), {int8:.1f} ms in int8 kernels "
             f"({100 * int8 / max(total, 1e-9):.0f} %)",
             "| op type | precision | ms per call | share |", "|---|---|---|---|"]
    for (op, prec), v in sorted(table.items(), key=lambda kv: -kv[1]):
        if v / max(total, 1e-9) >= 0.005:
            lines.append(f"| {op} | {prec} | {v:.2f} | {100 * v / total:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from dmc.artifact import read_manifest

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", required=True)
    p.add_argument("--int8", nargs="+", default=[], help="dmc INT8 artifacts to profile on ONNX Runtime")
    p.add_argument("--int8-ov", nargs="+", default=[], help="dmc ov-cpu INT8 artifacts to profile on OpenVINO")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--no-nncf", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    feeds = trajectory_feeds(args.fp32, args.calls, args.threads)
    tables = {"dmc FP32 (ONNX Runtime)": profile_ort(str(read_manifest(args.fp32).graph_path("full")), feeds,
                                                     args.threads)}
    for art in args.int8:
        tables[f"{art} (ONNX Runtime)"] = profile_ort(str(read_manifest(art).graph_path("full")), feeds, args.threads)
    for art in args.int8_ov:
        tables[f"{art} (OpenVINO)"] = profile_ov(str(read_manifest(art).graph_path("full")), feeds, args.threads)
    if not args.no_nncf:
        calib = trajectory_feeds(args.fp32, 80, args.threads)
        tables["OpenVINO + NNCF INT8 (default)"] = profile_ov(nncf_model(args.fp32, feeds, calib), feeds, args.threads)
    for name, table in tables.items():
        print(render(name, table))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: [[op, prec, v] for (op, prec), v in t.items()] for k, t in tables.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
