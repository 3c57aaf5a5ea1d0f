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
from dmc.export.graphs import compact, write_graphs
from dmc.export.onnx_export import DEFAULT_OPSET, check_opset, export_onnx
from dmc.models.adapters import make_adapter
from dmc.models.families import refuse_unsupported_passes
from dmc.models.loading import inspect_source, load_model
from dmc.models.memory import COMPILE_FACTOR
from dmc.sampling import schedules
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
    scheduler_config: str | None = None  # training schedule (scheduler_config.json) for a bare model
    scheduler_preset: str | None = None  # or a named one (dmc.sampling.schedules.PRESETS)
    device: str = "cpu"  # torch side (calibration, references): "cpu" or "cuda"
    image_size: tuple[int, int] | None = None  # --size H W in pixels (shapes are static at that size)
    calib_prompts: list[str] | None = None  # text-to-image calibration prompts (default: dmc.data.prompts)
    verify_budget_s: float | None = None  # fewer than verify_images when full images would take longer
    fidelity_floor: float | None = None  # PSNR (dB) verification refuses below; None: the passes' own floor
    # the sampler was not chosen: a flow-matching model gets flow-euler (None: not said; the CLI says True/False)
    sampler_follows_schedule: bool | None = None
    steps_follow_model: bool | None = None  # --steps was not given: a policy samples at its own num_inference_steps
    calib_observations: str | None = None  # a policy's INT8 calibration histories (.npz, dmc.policies.conditions)
    int8_parts: tuple[str, ...] = ()  # text-to-image: "text" and/or "vae" get INT8 too (dmc.quantize.parts)
    # verification frees the torch weights before ONNX Runtime opens (a big model is never held twice);
    # True keeps them for callers that run the context's torch pipelines after compiling
    keep_torch: bool = False


def _log(options: CompileOptions, msg: str) -> None:
    if options.progress:
        print(f"[dmc] {msg}", file=sys.stderr, flush=True)


def prepare(source: str, options: CompileOptions) -> CompileContext:
    """Load the model and build the FP32 context (full graph exported) before any pass."""
    import torch

    from dmc.compress.device import check_device, to_device

    check_device(options.device)  # before any work
    if options.verify_images < 1:
        raise DmcError(f"verify_images must be at least 1, got {options.verify_images}")
    memory_factor = max([COMPILE_FACTOR] + [getattr(type(p), "COMPILE_MEMORY_FACTOR", 0.0) for p in options.passes])
    loaded = load_model(source, options.config_path, memory_factor)
    loaded.scheduler_config, loaded.scheduler_origin = schedules.resolve(
        source, loaded.scheduler_config, loaded.scheduler_origin, options.scheduler_config, options.scheduler_preset)
    if options.sampler_follows_schedule:
        from dmc.sampling.solvers import solver_for

        sampler = solver_for(options.recipe.sampler, schedules.family(loaded.scheduler_config))
        options.recipe = dataclasses.replace(options.recipe, sampler=sampler)
    adapter = make_adapter(loaded.model, loaded.class_name, options.recipe.resolution)
    if options.recipe.guidance is None:  # auto: guide class-conditional models
        guidance = 2.0 if adapter.conditioning().kind == "class" else 1.0
        options.recipe = dataclasses.replace(options.recipe, guidance=guidance)
    if options.recipe.guided and adapter.conditioning().kind == "none":
        raise DmcError("--guidance > 1 needs a conditional model (this one is unconditional)")
    ctx = CompileContext(loaded, adapter, options.recipe, [], progress=options.progress, device=options.device)
    ctx.calls = compile_calls(options.recipe, loaded.scheduler_config, ctx.sample_shape,
                              adapter.pipeline_sigmas(options.recipe.steps))
    c, h, w = ctx.sample_shape
    example = adapter.example_inputs(2)
    example = (torch.randn(2, c, h, w),) + tuple(example[1:])
    graph = export_onnx(adapter, example, adapter.input_names, [OUTPUT_NAME], options.opset)
    ctx.graphs["full"] = GraphVariant(graph, adapter, adapter.input_names, [OUTPUT_NAME], "the whole network")
    to_device(ctx)  # exported on the CPU; torch work after export runs on options.device
    return ctx


def reference_pipeline(source: str, recipe: Recipe, config_path: str | None = None,
                       training_schedule: dict | None = None):
    """The uncompressed torch model driven by the runtime's sampler loop (no export): the
    reference that ``dmc eval`` and calibration compare against. ``training_schedule`` (e.g. an
    artifact's) stands in for a bare model's missing one."""
    from dmc.compress.torch_executor import TorchExecutor
    from dmc.runtimes.pipeline import Pipeline

    loaded = load_model(source, config_path)
    schedule = training_schedule or schedules.resolve(source, loaded.scheduler_config, loaded.scheduler_origin)[0]
    adapter = make_adapter(loaded.model, loaded.class_name, recipe.resolution)
    shape = adapter.sample_shape if not recipe.resolution else (adapter.in_channels, *recipe.resolution)
    calls = compile_calls(recipe, schedule, shape, adapter.pipeline_sigmas(recipe.steps))
    for c in calls:
        c.graph = "full"
    executor = TorchExecutor({"full": adapter}, {"full": adapter.input_names}, {"full": [OUTPUT_NAME]})
    return Pipeline(recipe, calls, shape, adapter.conditioning().to_json(), executor)


def compile_model(source: str, out: str | Path, options: CompileOptions | None = None) -> Path:
    options = options or CompileOptions()
    check_opset(options.opset)
    from dmc.compress.sources import compiler_for

    special = compiler_for(source)  # e.g. a LeRobot policy folder
    if special is not None:
        return special(source, out, options)
    started = time.time()
    # claim the output, check it is writable with room to spare, before any work
    writer = ArtifactWriter(out, overwrite=options.force, need_bytes=estimate_artifact_bytes(source))
    with writer:
        refuse_unsupported_passes(inspect_source(source, options.config_path).family, options.passes)
        from dmc.export import pipeline_parts

        folder, options.recipe, notes = pipeline_parts.plan(source, options.recipe, options.image_size,
                                                            options.config_path)
        if options.int8_parts and folder is None:  # before any export or calibration
            raise DmcError("--int8-parts needs a whole diffusers pipeline folder (text encoders and VAE to quantize)")
        _log(options, f"loading {source} and exporting ONNX")
        ctx = prepare(source, options)
        ctx.warnings.extend(notes)
        parts = None
        if folder is not None:  # a whole pipeline folder: text encoder(s), tokenizer(s), VAE decoder too
            _log(options, "exporting the text encoder(s) and the VAE decoder")
            parts = pipeline_parts.build_parts(folder, pipeline_parts.image_size_of(folder, ctx.sample_shape),
                                               options.opset)
            ctx.extra_files.update(parts.files)
            ctx.prompt_conditions = pipeline_parts.calibration_conditions(parts, options.calib_prompts)
            ctx.verify_conditions = pipeline_parts.verification_conditions(parts)
        if options.passes:
            from dmc.compress.plan import complete_plan, with_seed

            run_passes(ctx, with_seed(complete_plan(options.passes), options.recipe.seed))
        if options.fidelity_floor is not None:  # the user's explicit choice, recorded with the verification
            ctx.fidelity_floor_psnr = float(options.fidelity_floor)
        if options.int8_parts:
            _quantize_parts(ctx, parts, options)
        _log(options, "writing graphs")
        # release: the in-memory graphs drop their weight bytes once written (verify reads the files)
        write_graphs({**{n: g.onnx for n, g in ctx.graphs.items()}, **(parts.graphs if parts else {})},
                     writer.root / "graphs", release=True)
        for g in ctx.graphs.values():
            g.onnx = compact(g.onnx)
        if parts is not None:
            parts.graphs = {n: compact(g) for n, g in parts.graphs.items()}
        if ctx.tables:
            np.savez(writer.root / "tables.npz", **ctx.tables)
        for rel, data in ctx.extra_files.items():
            (writer.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.root / rel).write_bytes(data)
        manifest = build_manifest(ctx, time.time() - started)
        _log(options, "verifying the artifact against torch")
        manifest["verification"] = verify(ctx, writer.root, manifest, options.verify_images, options.progress,
                                          options.verify_budget_s, keep_torch=options.keep_torch)
        if parts is not None:
            manifest["parts"] = parts.section
            manifest["parts"]["calibration_prompts"] = ctx.prompt_conditions.to_json()
            manifest["parts"]["verification"] = pipeline_parts.verify_parts(parts, writer.root, manifest)
        if ctx.warnings:
            manifest.setdefault("warnings", list(ctx.warnings))
        return writer.finish(manifest, {**build_log(time.time() - started), **ctx.build_facts})


def _quantize_parts(ctx: CompileContext, parts, options: CompileOptions) -> None:
    from dmc.quantize import QuantizeConfig
    from dmc.quantize.parts import quantize_parts
    from dmc.quantize.pass_ import FIDELITY_FLOOR_PSNR

    cfg = next((p for p in options.passes if isinstance(p, QuantizeConfig)), None) or QuantizeConfig()
    floor = FIDELITY_FLOOR_PSNR if options.fidelity_floor is None else float(options.fidelity_floor)
    _log(options, f"INT8 on the pipeline parts ({', '.join(options.int8_parts)})")
    quantize_parts(ctx, parts, tuple(options.int8_parts), cfg, floor)


def estimate_artifact_bytes(source: str) -> int:
    """Free space to ask for: FP32 weights (x2 for an fp16 source) plus variants, with a margin."""
    from dmc.models.loading import weights_files

    try:
        size = sum(p.stat().st_size for p in weights_files(source))
    except (DmcError, OSError):
        return 0  # the load reports a bad source properly
    return 3 * size + 16 * (1 << 20)


def build_manifest(ctx: CompileContext, seconds: float) -> dict:
    model = ctx.loaded.model
    return {
        "model": {
            "class": ctx.loaded.class_name,
            "family": ctx.adapter.family,
            "architecture": ctx.loaded.family,
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
        "training_schedule_origin": ctx.loaded.scheduler_origin,
        **artifact_sections(ctx, {n: (g.onnx, g.computes, g.precision) for n, g in ctx.graphs.items()}),
    }


def artifact_sections(ctx, graphs: dict) -> dict:
    """The manifest sections every artifact shares: call table, graphs (``name -> (onnx model, computes,
    precision)``), weights, tables, precision/target/backend, passes, warnings and provenance."""
    import diffusers
    import onnx
    import torch

    import dmc

    return {
        "sampler": {"calls": [c.to_json() for c in ctx.calls]},
        "graphs": {
            name: {
                "file": f"graphs/{name}.onnx",
                "computes": computes,
                "precision": precision,
                "inputs": [_io(i) for i in model.graph.input],
                "outputs": [_io(o) for o in model.graph.output],
            }
            for name, (model, computes, precision) in graphs.items()
        },
        "weights": "graphs/weights.bin",
        "tables": "tables.npz" if ctx.tables else None,
        "precision": ctx.precision,
        "target": ctx.target,
        "backend": ctx.backend,
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


def verify(ctx: CompileContext, root: Path, manifest: dict, n: int, progress: bool = False,
           budget_s: float | None = None, keep_torch: bool = False) -> dict:
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
    from dmc.runtimes.executor import cpu_providers, default_backend, open_executor
    from dmc.runtimes.pipeline import Pipeline

    from dmc.compress.device import images_per_batch, release_torch
    from dmc.compress.verify_early import (compare_first_group, images_within_budget, paired_psnr,
                                           reference_first_group, torch_price)

    # torch first, then free it, then ONNX Runtime: a big model's weights are never held twice
    if progress:  # one line per side: bench_compile_cost --stages splits peak memory on them
        print("[dmc] verification: the torch reference", file=sys.stderr, flush=True)
    reference = ctx.torch_pipeline(reference=True)
    first = reference_first_group(ctx, reference, progress)
    n = images_within_budget(torch_price(first), n, budget_s)
    batch = images_per_batch(ctx, 16)
    want = reference.sample(n, seed=ctx.recipe.seed, progress=progress, batch_size=batch)
    del reference
    if not keep_torch:
        release_torch(ctx)
    backend = default_backend(manifest_obj)  # what `dmc run` and load() will use: verify that
    if progress:
        print(f"[dmc] verification: the artifact in {backend}", file=sys.stderr, flush=True)
    runtime = Pipeline.from_manifest(manifest_obj, open_executor(backend, manifest_obj, providers=cpu_providers(backend)))
    if ctx.verify_conditions is not None:  # text-to-image: both sides sample under the same held-out prompts
        runtime = ctx.verify_conditions.wrap(runtime)
    early = compare_first_group(ctx, runtime, first, progress)  # raises, with the figure, when far off
    got = runtime.sample(n, seed=ctx.recipe.seed, progress=progress, batch_size=batch)
    for side, images in ((f"artifact ({backend})", got), ("torch reference", want)):
        if not np.isfinite(images).all():
            raise DmcError(f"verification failed: the {side} samples contain non-finite values (NaN or inf); "
                           "nothing was written")
    rmse, psnr = paired_psnr(got, want)
    result = {"images": n, "backend": backend, "rmse": rmse, "psnr_db": min(psnr, 100.0),
              "floor_psnr_db": ctx.fidelity_floor_psnr,
              "first_calls": {k: v for k, v in early.items() if k != "seconds_per_image_call"}}
    if ctx.verify_conditions is not None:
        result["prompts"] = ctx.verify_conditions.to_json()
    ctx.build_facts["verify_seconds_per_image_call"] = early.get("seconds_per_image_call")  # varies: build.json
    (root / MANIFEST).unlink()
    check_fidelity(psnr, ctx.fidelity_floor_psnr)
    del load
    return result


def check_fidelity(psnr: float, floor: float) -> None:
    """Written so that NaN fails: a comparison with NaN is False, so pass only on ``psnr >= floor``."""
    if not (psnr >= floor):
        raise DmcError(f"verification failed: artifact samples differ from the torch reference "
                       f"(PSNR {psnr:.1f} dB < floor {floor} dB); nothing was written")
