"""The embedded runtime: runs an artifact with numpy and an executor, never torch.

    from dmc.runtimes import load
    pipe = load("demo.dmc")
    images = pipe(n=16, seed=0)          # uint8 [16, H, W, C]
"""

from __future__ import annotations

from pathlib import Path

from dmc.artifact import read_manifest
from dmc.runtimes.pipeline import Pipeline

BACKENDS = ("onnxruntime",)


def load(path: str | Path, backend: str = "onnxruntime", providers: list[str] | None = None,
         threads: int | None = None) -> Pipeline:
    """Verify the artifact at ``path`` (format version and every checksum) and open its graphs."""
    manifest = read_manifest(path, verify=True)
    if backend == "onnxruntime":
        from dmc.runtimes.onnxruntime_executor import OnnxRuntimeExecutor

        executor = OnnxRuntimeExecutor(manifest, providers=providers, threads=threads)
    else:
        from dmc.errors import DmcError

        raise DmcError(f"unknown backend {backend!r} (available: {', '.join(BACKENDS)})")
    return Pipeline.from_manifest(manifest, executor)


__all__ = ["load", "Pipeline"]
