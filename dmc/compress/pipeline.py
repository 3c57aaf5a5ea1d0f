"""``compile_model``: load -> adapter -> recipe -> export -> passes -> assemble -> verify -> write."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmc.artifact import ArtifactWriter, read_manifest
from dmc.compress.context import CompileContext, GraphVariant
from dmc.compress.passes import run_passes
from dmc.errors import DmcError
from dmc.export.graphs import write_graphs
from dmc.export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx
from dmc.models.adapters import make_adapter
from dmc.models.loading import load_model
from dmc.sampling.compile import compile_calls
from dmc.sampling.recipe import Recipe

OUTPUT_NAME = "prediction"


@dataclass
class CompileOptions:
    recipe: Recipe = field(default_factory=Recipe)
    passes: list = field(default_factory=list)  # pass configs (QuantizeConfig, CacheConfig, ...)
    config_path: str | None = None
    opset: int = DEFAULT_OPSET
    verify_images: int = 4
    force: bool = False
    progress: bool = False


def _log(options: CompileOptions, msg: str) -> None:
    if options.progress:
        print(f"[dmc] {msg}", file=sys.stderr, flush=True)


def prepare(source: str, options: CompileOptions) -> CompileContext:
    """Load the model and build the FP32 context (full graph exported) before any pass."""
    import torch

    loaded = load_model(source, options.config_path)
    adapter = make_adapter(loaded.model, loaded.class_name)
    if options.recipe.guidance is None:  # auto: guide class-conditional models
        guidance = 2.0 if adapter.conditioning().kind == "class" else 1.0
        options.recipe = dataclasses.replace(options.recipe, guidance=guidance)
    if options.recipe.guided and adapter.conditioning().kind == "none":
        raise DmcError("--guidance > 1 needs a conditional model (this one is unconditional)")
    calls = compile_calls(options.recipe, loaded.scheduler_config)
    ctx = CompileContext(loaded, adapter, options.recipe, calls)
    c, h, w = ctx.sample_shape
    example = adapter.example_inputs(2)
    example = (torch.randn(2, c, h, w),) + tuple(example[1:])
    graph = export_onnx(adapter, example, adapter.input_names, [OUTPUT_NAME], options.opset)
    ctx.graphs["full"] = GraphVariant(graph, adapter, adapter.input_names, [OUTPUT_NAME], "the whole network")
    return ctx


def reference_pipeline(source: str, recipe: Recipe, config_path: str | None = None):
    """The uncompressed torch model driven by the runtime's sampler loop (no export): the
    reference that ``dmc eval`` and calibration compare against."""
    from dmc.compress.torch_executor import TorchExecutor
    from dmc.runtimes.pipeline import Pipeline

    loaded = load_model(source, config_path)
    adapter = make_adapter(loaded.model, loaded.class_name)
    calls = compile_calls(recipe, loaded.scheduler_config)
    for c in calls:
        c.graph = "full"
    executor = TorchExecutor({"full": adapter}, {"full": adapter.input_names}, {"full": [OUTPUT_NAME]})
    shape = adapter.sample_shape if not recipe.resolution else (adapter.in_channels, *recipe.resolution)
    return Pipeline(recipe, calls, shape, adapter.conditioning().to_json(), executor)


def compile_model(source: str, out: str | Path, options: CompileOptions | None = None) -> Path:
    options = options or CompileOptions()
    check_opset(options.opset)
    started = time.time()
    # claim the output, check it is writable with room to spare, before any work
    writer = ArtifactWriter(out, overwrite=options.force, need_bytes=estimate_artifact_bytes(source))
    with writer:
        _log(options, f"loading {source} and exporting ONNX")
        ctx = prepare(source, options)
        if options.passes:
            from dmc.compress.plan import complete_plan, with_seed

            run_passes(ctx, with_seed(complete_plan(options.passes), options.recipe.seed))
        _log(options, "writing graphs")
        write_graphs({n: g.onnx for n, g in ctx.graphs.items()}, writer.root / "graphs")
        if ctx.tables:
            np.savez(writer.root / "tables.npz", **ctx.tables)
        for rel, data in ctx.extra_files.items():
            (writer.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.root / rel).write_bytes(data)
        manifest = build_manifest(ctx, time.time() - started)
        _log(options, "verifying the artifact against torch")
        manifest["verification"] = verify(ctx, writer.root, manifest, options.verify_images)
        return writer.finish(manifest, {**build_log(time.time() - started), **ctx.build_facts})


def estimate_artifact_bytes(source: str) -> int:
    """Free space to ask for: FP32 weights (x2 for an fp16 source) plus variants, with a margin."""
    from dmc.models.loading import weights_file

    try:
        size = weights_file(source).stat().st_size
    except (DmcError, OSError):
        return 0  # the load reports a bad source properly
    return 3 * size + 16 * (1 << 20)


def build_manifest(ctx: CompileContext, seconds: float) -> dict:
    import diffusers
    import onnx
    import torch

    import dmc

    model = ctx.loaded.model
    return {
        "model": {
            "class": ctx.loaded.class_name,
            "family": ctx.adapter.family,
            "source": ctx.loaded.source,
            "source_sha256": ctx.loaded.sha256,
            "config": ctx.loaded.config,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "sample_shape": list(ctx.sample_shape),
            "conditioning": ctx.adapter.conditioning().to_json(),
            "config_assumptions": ctx.loaded.assumptions,
        },
        "recipe": ctx.recipe.to_json(),
        "training_schedule": ctx.loaded.scheduler_config,
        "sampler": {"calls": [c.to_json() for c in ctx.calls]},
        "graphs": {
            name: {
                "file": f"graphs/{name}.onnx",
                "computes": g.computes,
                "precision": g.precision,
                "inputs": [_io(i) for i in g.onnx.graph.input],
                "outputs": [_io(o) for o in g.onnx.graph.output],
            }
            for name, g in ctx.graphs.items()
        },
        "weights": "graphs/weights.bin",
        "tables": "tables.npz" if ctx.tables else None,
        "precision": ctx.precision,
        "target": ctx.target,
        "passes": ctx.passes,
        "warnings": list(ctx.warnings),
        "provenance": {
            "dmc": dmc.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version(),
            "seed": ctx.recipe.seed,
        },
    }


def build_log(seconds: float) -> dict:
    """Facts that differ between identical builds: kept out of the manifest so it is reproducible."""
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "compile_seconds": round(seconds, 1),
            "host": platform.node(), "machine": platform.machine(), "pid": os.getpid()}


def _io(value) -> dict:
    import onnx

    t = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims}


def verify(ctx: CompileContext, root: Path, manifest: dict, n: int) -> dict:
    """Sample ``n`` images with the written graphs and with torch; refuse the artifact below the floor.

    The torch side computes the same thing the graphs should (each graph's reference module), so this
    checks export and assembly, not the compression's quality, which ``dmc eval`` measures.
    """
    import json

    from dmc.artifact.writer import MANIFEST
    from dmc.runtimes import load

    (root / MANIFEST).write_text(json.dumps({"format": "dmc-artifact", "format_version": 1, **manifest,
                                             "files": {}}))
    manifest_obj = read_manifest(root, verify=False)
    from dmc.runtimes.onnxruntime_executor import OnnxRuntimeExecutor
    from dmc.runtimes.pipeline import Pipeline

    runtime = Pipeline.from_manifest(manifest_obj, OnnxRuntimeExecutor(manifest_obj, providers=["CPUExecutionProvider"]))
    got = runtime.sample(n, seed=ctx.recipe.seed)
    want = ctx.torch_pipeline(reference=True).sample(n, seed=ctx.recipe.seed)
    for side, images in (("artifact (ONNX Runtime)", got), ("torch reference", want)):
        if not np.isfinite(images).all():
            raise DmcError(f"verification failed: the {side} samples contain non-finite values (NaN or inf); "
                           "nothing was written")
    rmse = float(np.sqrt(np.mean((np.clip(got, -1, 1) - np.clip(want, -1, 1)) ** 2)) / 2)  # on the [0, 1] scale
    psnr = float("inf") if rmse == 0 else float(-20 * np.log10(rmse))
    result = {"images": n, "rmse": rmse, "psnr_db": min(psnr, 100.0), "floor_psnr_db": ctx.fidelity_floor_psnr}
    (root / MANIFEST).unlink()
    check_fidelity(psnr, ctx.fidelity_floor_psnr)
    del load
    return result


def check_fidelity(psnr: float, floor: float) -> None:
    """Written so that NaN fails: a comparison with NaN is False, so pass only on ``psnr >= floor``."""
    if not (psnr >= floor):
        raise DmcError(f"verification failed: artifact samples differ from the torch reference "
                       f"(PSNR {psnr:.1f} dB < floor {floor} dB); nothing was written")
