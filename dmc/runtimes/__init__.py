"""The embedded runtime: runs an artifact with numpy and an executor, never torch.

    from dmc.runtimes import load
    pipe = load("demo.dmc")
    images = pipe(n=16, seed=0)          # uint8 [16, H, W, C]

An artifact of a whole task opens as that task's runtime (``TASK_RUNTIMES``): a text-to-image
pipeline as ``TextToImage``, a robot policy as ``Policy`` (``act``).
"""

from __future__ import annotations

from pathlib import Path

from dmc.artifact import read_manifest
from dmc.runtimes.executor import BACKENDS, Executor, default_backend, open_executor
from dmc.runtimes.pipeline import Pipeline

# (module, predicate on the manifest, opener(manifest, pipe, backend, providers, threads)), first match wins
TASK_RUNTIMES = (
    ("dmc.runtimes.text2image", "has_prompt_pipeline", "open_text_to_image"),
    ("dmc.runtimes.policy", "has_policy", "open_policy"),
)


def load(path: str | Path, backend: str | None = None, providers: list[str] | None = None,
         threads: int | None = None) -> Pipeline:
    """Verify the artifact at ``path`` (format version and every checksum) and open its graphs
    with ``backend`` (a name in ``BACKENDS``; None: the backend the artifact was compiled for where
    installed, else onnxruntime). An artifact compiled from a text-to-image pipeline folder gives a
    ``TextToImage`` (``pipe(prompt=..., n=, seed=, guidance=)``), one from a policy a ``Policy``
    (``act(observations)``)."""
    import importlib

    from dmc.runtimes.executor import backend_class

    if backend is not None:
        backend_class(backend)  # an unknown name fails before the checksums are read
    manifest = read_manifest(path, verify=True)
    backend = backend or default_backend(manifest)
    cls = backend_class(backend)
    pipe = Pipeline.from_manifest(manifest, cls(manifest, providers=providers, threads=threads))
    for module, predicate, opener in TASK_RUNTIMES:
        task = importlib.import_module(module)
        if getattr(task, predicate)(manifest):
            return getattr(task, opener)(manifest, pipe, backend, providers, threads)
    return pipe


__all__ = ["load", "Pipeline", "Executor", "BACKENDS", "open_executor", "default_backend"]
