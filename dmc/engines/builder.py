"""``dmc build-engine``: TensorRT engines from an artifact's graphs, through Polygraphy's loaders.

Network typing (see ``trt_api``): Q/DQ (INT8) and FP32 graphs are built as *strongly typed*
networks, so TensorRT takes every precision from the graph (the Q/DQ nodes) and cannot silently
pick another; no precision builder flag is set (``BuilderFlag.INT8`` is deprecated under strong
typing in 10.x and removed in 11). ``--fp16`` needs weak typing (``BuilderFlag.FP16``, plus
``BuilderFlag.INT8`` for Q/DQ graphs), which only TensorRT 10.x has. Every build reads back the
engine inspector's per-layer JSON and records the precision each layer really got.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from dmc.artifact import read_manifest
from dmc.artifact.manifest import sha256_path
from dmc.engines import keys, precision, trt_api
from dmc.engines.plan import EnginePlan, plan_engines
from dmc.errors import DmcError


@dataclass
class BuildOptions:
    fp16: bool = False
    workspace_mb: int | None = None
    timing_cache: str | None = None
    builder_optimization_level: int | None = None
    require_int8: bool = False
    images: int = 4


def network_typing(plan: EnginePlan, opts: BuildOptions, trt) -> dict:
    """How to build one plan: strongly typed or not, and which precision flags."""
    if not opts.fp16:
        return {"strongly_typed": True, "fp16": False, "int8_flag": False}
    if not trt_api.has_weak_typing(trt):
        raise DmcError(f"TensorRT {trt.__version__} removed BuilderFlag.FP16 (weak typing): build without "
                       "--fp16 (strongly typed, precisions from the graph), or convert the graph to FP16 first "
                       "(e.g. ModelOpt AutoCast)")
    return {"strongly_typed": False, "fp16": True, "int8_flag": plan.int8}


def _config(loaders, trt, plan: EnginePlan, typing: dict, opts: BuildOptions, timing_cache: str):
    profile = loaders.Profile()
    for name, (lo, opt, hi) in plan.shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    kwargs = {"profiles": [profile], "profiling_verbosity": trt.ProfilingVerbosity.DETAILED,
              "load_timing_cache": timing_cache}
    if typing["fp16"]:
        kwargs["fp16"] = True
    if typing["int8_flag"]:
        kwargs["int8"] = True
    if opts.workspace_mb:
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(opts.workspace_mb) << 20}
    if opts.builder_optimization_level is not None:
        if not 0 <= opts.builder_optimization_level <= 5:
            raise DmcError(f"--builder-optimization-level must be 0..5 (got {opts.builder_optimization_level})")
        kwargs["builder_optimization_level"] = opts.builder_optimization_level
    return loaders.CreateConfig(**kwargs)


def build_engines(artifact: str | Path, opts: BuildOptions, backend=None, key: keys.EngineKey | None = None) -> dict:
    """Build every graph variant's engine into ``engines/<key>/``; returns the engines manifest.

    ``backend`` is ``(tensorrt, polygraphy.backend.trt)``; tests pass a recording stand-in.
    Nothing is written unless every engine builds (and, with ``require_int8``, proves INT8).
    """
    artifact = Path(artifact)
    manifest = read_manifest(artifact, verify=True)
    trt, loaders = backend or trt_api.import_tensorrt()
    trt_api.check_version(trt)
    if key is None:
        cc, name = trt_api.compute_capability()
        key = keys.EngineKey(cc, trt.__version__, name)
    plans = plan_engines(manifest, opts.images)
    if opts.require_int8 and not any(p.int8 for p in plans):
        raise DmcError(f"{artifact}: --require-int8 but the artifact has no INT8 graphs (compile with --int8 "
                       "--profile trt)")
    if any(p.int8 for p in plans) and manifest.data.get("target") != "trt":
        warnings.warn(f"{artifact}: INT8 graphs were compiled for target {manifest.data.get('target')!r}, not "
                      "'trt'; TensorRT wants the trt Q/DQ profile (--profile trt)", stacklevel=2)
    final = artifact / keys.ENGINES_DIR / key.dirname
    final.parent.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key.dirname}-", dir=final.parent))
    try:
        timing_cache = opts.timing_cache or str(tmp / "timing.cache")  # shared by this build's variants
        engines, problems = {}, []
        for plan in plans:
            typing = network_typing(plan, opts, trt)
            network = loaders.NetworkFromOnnxPath(plan.onnx_path, strongly_typed=typing["strongly_typed"])
            config = _config(loaders, trt, plan, typing, opts, timing_cache)
            file = f"{plan.variant}.plan"
            t0 = time.perf_counter()
            try:
                engine = loaders.SaveEngine(loaders.EngineFromNetwork(network, config, save_timing_cache=timing_cache),
                                            path=str(tmp / file))()
            except DmcError:
                raise
            except Exception as e:  # TensorRT reports build failures (e.g. out of memory) as exceptions
                first = str(e).splitlines()[0] if str(e) else repr(e)
                raise DmcError(f"TensorRT could not build {plan.variant}: {first}"
                               + ("; try a smaller --workspace or --images" if "memory" in str(e).lower() else "")) from None
            seconds = time.perf_counter() - t0
            info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
            (tmp / f"{plan.variant}.layers.json").write_text(info if isinstance(info, str) else json.dumps(info))
            intended = (precision.intended_int8_layers(onnx.load(plan.onnx_path, load_external_data=False))
                        if plan.int8 else [])
            report = precision.precision_report(precision.parse_layers(info), intended)
            problem = precision.report_problem(plan.variant, report)
            if problem:
                problems.append(problem)
            engines[plan.variant] = {**plan.to_json(), "file": file, "layers_file": f"{plan.variant}.layers.json",
                                     "typing": typing, "build_seconds": round(seconds, 2), "precision": report,
                                     "device_memory_bytes": trt_api.device_memory_size(engine)}
            del engine
        for p in problems:
            warnings.warn(f"build-engine: {p}", stacklevel=2)
        if problems and opts.require_int8:
            raise DmcError(f"--require-int8: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        if not opts.timing_cache:
            (tmp / "timing.cache").unlink(missing_ok=True)
        data = {
            "format": keys.ENGINES_FORMAT, "format_version": keys.ENGINES_FORMAT_VERSION,
            "key": key.to_json(), "artifact_manifest_sha256": keys.artifact_manifest_sha(artifact),
            "images_per_call": opts.images, "build": asdict(opts), "engines": engines, "warnings": problems,
            "files": {p.name: sha256_path(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        keys.write_engines_manifest(tmp, data)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return data
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
