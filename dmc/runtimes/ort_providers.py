"""ONNX Runtime GPU providers for ``dmc run --provider cuda|tensorrt|cpu`` (pure functions).

The TensorRT EP gets INT8 for Q/DQ graphs (``trt_int8_enable``; the scales come from the graph's
Q/DQ nodes, no calibration table), FP16 only where asked, and its engine and timing caches in
``<artifact>.ortcache/`` next to the artifact (never inside it: the artifact stays verifiable).
"""

from __future__ import annotations

from pathlib import Path

from dmc.errors import DmcError

SHORT = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider", "cpu": "CPUExecutionProvider"}


def cache_dir(artifact: str | Path) -> Path:
    a = Path(artifact).resolve()
    return a.parent / f"{a.name}.ortcache"


def tensorrt_options(artifact: str | Path, int8: bool, fp16: bool = False) -> dict[str, str]:
    cache = cache_dir(artifact)
    opts = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache / "trt-engines"),
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache / "trt-timing")}
    if int8:
        opts["trt_int8_enable"] = "True"
    if fp16:
        opts["trt_fp16_enable"] = "True"
    return opts


def provider_list(names: list[str], artifact: str | Path, int8: bool, fp16: bool = False) -> list:
    """``["tensorrt"]`` -> ``[("TensorrtExecutionProvider", {...}), "CUDAExecutionProvider", "CPUExecutionProvider"]``.

    Full provider names pass through unchanged. The TensorRT EP is backed by CUDA and CPU for the
    nodes it does not take (ORT's documented order).
    """
    out: list = []
    for n in names:
        full = SHORT.get(n.lower(), n)
        if not full.endswith("ExecutionProvider"):
            raise DmcError(f"unknown provider {n!r} (use cuda, tensorrt, cpu or a full ONNX Runtime provider name)")
        if full == "TensorrtExecutionProvider":
            out.append((full, tensorrt_options(artifact, int8, fp16)))
            out += [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p not in names]
        elif full not in out:
            out.append(full)
    seen, unique = set(), []
    for p in out:
        name = p[0] if isinstance(p, tuple) else p
        if name not in seen:
            seen.add(name)
            unique.append(p)
    return unique


def provider_name(p) -> str:
    return p[0] if isinstance(p, tuple) else p


def fallbacks(requested: list, sessions: dict) -> dict[str, list[str]]:
    """Per graph, the requested providers its session did not get (a silent fallback ORT does not raise)."""
    want = [provider_name(p) for p in requested if provider_name(p) != "CPUExecutionProvider"]
    return {g: [p for p in want if p not in s.get_providers()] for g, s in sessions.items()
            if any(p not in s.get_providers() for p in want)}
