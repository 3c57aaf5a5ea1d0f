"""``dmc bench ARTIFACT --compare-backends``: which installed CPU backend runs this artifact fastest here,
among those that reproduce its verified output.

Every backend opens the same artifact; runs alternate between them (rotating the order each repeat, as
``--vs`` does) and each is timed end to end per image. Speed alone does not pick: a Q/DQ graph written for
one runtime's kernels can compute something else on another (ONNX Runtime and OpenVINO differ by 16.7 dB on
the demo's ort-cpu INT8 graph, BENCHMARKS.md issue #17), so each backend's images, from the same seed, are
compared with those of the artifact's own backend, and only a backend within the artifact's verification
floor (its ``floor_psnr_db``) is recommended.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from dmc.errors import DmcError

CPU_BACKENDS = {"onnxruntime": "onnxruntime", "openvino": "openvino"}  # backend -> the package it needs


def installed_cpu_backends() -> list[str]:
    return [b for b, package in CPU_BACKENDS.items() if importlib.util.find_spec(package) is not None]


def _images(target, n_images: int, seed: int) -> np.ndarray:
    if target.prompts is None:
        return np.asarray(target.pipeline.sample(n_images, seed, batch_size=n_images), dtype=np.float64)
    return np.asarray(target.pipeline(prompt=target.prompts_for(0, n_images), n=n_images, seed=seed,
                                      batch_size=n_images), dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 100.0 if mse == 0 else float(min(100.0, 10 * np.log10(peak ** 2 / mse)))


def compare_backends(artifact: str, backends: list[str] | None = None, n_images: int = 1, repeats: int = 10,
                     warmup: int = 1, threads: int | None = None, seed: int = 0) -> dict:
    from dmc.artifact import read_manifest
    from dmc.evaluate.bench import BENCH_FORMAT, _Runner, _stats, machine
    from dmc.evaluate.evaluate import open_artifact
    from dmc.runtimes.executor import default_backend
    from dmc.runtimes.policy import is_policy_artifact

    if is_policy_artifact(artifact):
        raise DmcError(f"{artifact}: --compare-backends times image artifacts; time a policy per backend "
                       "with `dmc bench POLICY` and `load(POLICY, backend=...)`")
    manifest = read_manifest(artifact, verify=False)
    own = default_backend(manifest)
    names = backends or installed_cpu_backends()
    missing = [b for b in names if b not in installed_cpu_backends()]
    if missing:
        raise DmcError(f"backend {missing[0]!r} is not installed here (CPU backends installed: "
                       f"{', '.join(installed_cpu_backends())})")
    names = [own] + [b for b in names if b != own]
    targets = {b: open_artifact(artifact, threads, backend=b) for b in names}
    images = {b: _images(t, n_images, seed) for b, t in targets.items()}
    peak = 2.0 if manifest.data.get("parts") is None else 255.0  # samples in [-1, 1]; decoded images 0..255
    runners = {b: _Runner(t, n_images, seed) for b, t in targets.items()}
    order = list(runners)
    for _ in range(warmup):
        for r in runners.values():
            r.run(record=False)
    for i in range(repeats):
        for b in order[i % len(order):] + order[: i % len(order)]:  # rotate who runs first
            runners[b].run()
    floor = float((manifest.data.get("verification") or {}).get("floor_psnr_db") or 25.0)
    rows = {}
    for b, r in runners.items():
        psnr = _psnr(images[b], images[own], peak)
        rows[b] = {"end_to_end_per_image": _stats(r.e2e), "psnr_vs_own_db": psnr,
                   "reproduces": psnr >= floor, "executor_providers": list(getattr(r.timed, "providers", []) or [])}
    fastest = min(rows, key=lambda b: rows[b]["end_to_end_per_image"]["median_ms"])
    usable = [b for b in rows if rows[b]["reproduces"]]
    pick = min(usable, key=lambda b: rows[b]["end_to_end_per_image"]["median_ms"])
    return {"format": BENCH_FORMAT, "format_version": 1, "kind": "backends", "artifact": str(artifact),
            "own_backend": own, "floor_psnr_db": floor, "backends": rows, "fastest": fastest, "recommended": pick,
            "n_images": n_images, "repeats": repeats, "threads": threads, "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}


def format_backends(r: dict) -> str:
    lines = [f"{'backend':<14} {'per image (median / p90)':>26} {'vs own (dB)':>12}  reproduces"]
    for b, row in r["backends"].items():
        e = row["end_to_end_per_image"]
        own = " (own)" if b == r["own_backend"] else ""
        lines.append(f"{b + own:<14} {e['median_ms']:>12.1f} / {e['p90_ms']:>8.1f} ms {row['psnr_vs_own_db']:>12.1f}  "
                     f"{'yes' if row['reproduces'] else 'NO'}")
    note = "" if r["fastest"] == r["recommended"] else \
        f" ({r['fastest']} is faster but does not reproduce the verified output within {r['floor_psnr_db']:g} dB)"
    lines.append(f"use {r['recommended']}: `dmc run {r['artifact']} --backend {r['recommended']}`{note}")
    return "\n".join(lines)
