"""The ``dmc`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import click

from dmc.cache.config import SCHEDULES as CACHE_SCHEDULES
from dmc.errors import DmcError
from dmc.runtimes.executor import BACKENDS as _BACKENDS
from dmc.sampling.schedules import PRESETS
from dmc.sampling.solvers import SOLVERS
from dmc.export.opsets import DEFAULT_OPSET, SUPPORTED_OPSETS

EPILOG_COMPRESS = """\b
Examples:
  dmc compress demo --out demo.dmc                   # the built-in digits UNet, FP32
  dmc compress demo --out demo-int8.dmc --int8       # PTQ4DM INT8
  dmc compress demo --out fast.dmc --int8 --cache    # INT8 + DeepCache, jointly calibrated
  dmc compress demo --out small.dmc --prune 0.2      # 20 % of parameters pruned (learned masks)
  dmc compress unet/ --out my.dmc --sampler dpm++2m --steps 25
  dmc compress model.safetensors --config config.json --out my.dmc
  dmc compress unet/ --scheduler-preset sd15 --sampler unipc-bh2 --steps 10
  dmc compress demo --out six.dmc --steps auto --calls 6 --int8 --cache   # searched 6-call schedule
  dmc compress demo --out v3.dmc --sampler dpm-v3 --steps 8         # DPM-Solver-v3 (model statistics)
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dmc")
def cli() -> None:
    """dmc: compile diffusion models (UNet or DiT) into fast, deployable artifacts.

    MODEL is a diffusers model folder, a .safetensors file, or a built-in name:
    `demo` (digits UNet) or `demo-dit` (digits DiT).
    """


class _StepsType(click.ParamType):
    """An integer 1..1000 or ``auto``."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if str(value).lower() == "auto":
            return "auto"
        try:
            steps = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither an integer nor 'auto'", param, ctx)
        if not 1 <= steps <= 1000:
            self.fail(f"{steps} is not in the range 1<=x<=1000", param, ctx)
        return steps


def _step_plan(sampler: str, sampler_given: bool, steps, calls):
    """(recipe sampler, recipe steps, step plan, EMS in the search) for the CLI's --sampler/--steps/--calls."""
    from dmc.sampling.step_plan import BASE_SAMPLER

    if steps == "auto":
        if calls is None:
            raise DmcError("--steps auto needs a model-call budget: --calls N")
        if sampler_given and sampler not in (BASE_SAMPLER, "dpm-v3"):
            raise DmcError(f"--steps auto searches DPM-Solver++/v3 tables; --sampler {sampler} cannot be searched "
                           f"(drop it, or use {BASE_SAMPLER} or dpm-v3)")
        return BASE_SAMPLER, calls, "search", sampler == "dpm-v3"
    if calls is not None:
        raise DmcError("--calls is the budget of --steps auto; with a fixed --steps the calls follow the sampler")
    if sampler == "dpm-v3":
        return BASE_SAMPLER, steps, "dpm-v3", None
    return sampler, steps, None, None


@cli.command(epilog=EPILOG_COMPRESS)
@click.argument("model")
@click.option("--out", "-o", type=click.Path(), help="Artifact folder to write (default: <model>.dmc).")
@click.option("--sampler", type=click.Choice([*SOLVERS, "dpm-v3"]), default="ddim", show_default=True,
              help="Compiled solver (README: samplers); unset: ddim, or flow-euler for flow-matching models "
                   "(SD3, Flux); dpm-v3: DPM-Solver-v3 with statistics computed from the model.")
@click.option("--steps", type=_StepsType(), default="20", show_default=True,
              help="Scheduler steps N: N model calls (heun: 2N-1, plms: N+1, pndm: N+9); auto: search the "
                   "timesteps and per-call solver for --calls N model calls.")
@click.option("--calls", type=click.IntRange(2, 100), default=None,
              help="Model-call budget of --steps auto.")
@click.option("--search-candidates", type=click.IntRange(min=1), default=None,
              help="Most call tables --steps auto evaluates (default 60; each costs --calls calls on 16 images).")
@click.option("--guidance", type=float, default=None,
              help="Classifier-free guidance scale (default 2.0 for class-conditional models, else off).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for calibration and verification.")
@click.option("--config", "config_path", type=click.Path(), help="config.json for a bare .safetensors.")
@click.option("--scheduler-config", type=click.Path(),
              help="The training schedule (a diffusers scheduler_config.json) for a bare model.")
@click.option("--scheduler-preset", type=click.Choice(list(PRESETS)),
              help="A named training schedule for a bare model, instead of --scheduler-config.")
@click.option("--int8", is_flag=True, help="PTQ4DM timestep-aware W8A8 quantization.")
@click.option("--calibration", type=click.Choice(["ndtc", "uniform", "noise", "single-step"]), default="ndtc",
              show_default=True, help="Calibration set for --int8.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most calibration chains (--calib-budget may keep fewer).")
@click.option("--calib-budget", type=float, default=45.0, show_default=True,
              help="Seconds trajectory recording may take (at least 4 chains are kept; 0 = no bound).")
@click.option("--scale-groups", type=click.IntRange(min=1), default=1, show_default=True,
              help="Activation-scale groups over the steps (one graph variant each).")
@click.option("--profile", type=click.Choice(["ort-cpu", "trt", "ov-cpu"]), default="ort-cpu", show_default=True,
              help="Q/DQ rules of the target: ort-cpu (ONNX Runtime), trt (TensorRT: symmetric int8) or "
                   "ov-cpu (OpenVINO: symmetric int8, private Q/DQ; run with --backend openvino).")
@click.option("--int8-attention/--no-int8-attention", default=None,
              help="Quantize attention's activation matmuls too (default: the profile's choice, on for "
                   "ov-cpu, where OpenVINO runs a fused INT8 attention; off for ort-cpu).")
@click.option("--keep-float", default=None, metavar="LIST",
              help="Float islands of --int8: comma list of first, last, time_embedding or fnmatch patterns on layer "
                   "names; 'none' quantizes every layer (default: first,last,time_embedding).")
@click.option("--int8-stream", is_flag=True,
              help="Quantize the residual stream too (conv outputs, residual adds, skip concats), as NNCF "
                   "does: faster on OpenVINO, lower fidelity (--profile ov-cpu; see BENCHMARKS.md #17).")
@click.option("--cache", is_flag=True, help="Feature caching (DeepCache for UNets, block caching for DiTs).")
@click.option("--cache-schedule", type=click.Choice(CACHE_SCHEDULES), default=None,
              help="Refresh schedule: uniform, CacheQuant's dp, BAC, or HarmoniCa's learned router. "
                   "Default: auto (dp for UNets, bac for DiTs, bac for DP-T policies at >= 50 calls, else dp).")
@click.option("--router-iterations", type=click.IntRange(min=1), default=None,
              help="Router training iterations (default 30; each runs the whole sampler).")
@click.option("--router-alpha", type=click.FloatRange(min=0), default=None,
              help="Router's compute weight alpha (default 1e-3): larger caches more.")
@click.option("--router-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Router: compute where the score r > this (HarmoniCa's rule); default: the budget's best calls.")
@click.option("--cache-interval", type=click.IntRange(min=1), default=None, help="N: about one full call in N (default 3).")
@click.option("--cache-budget", type=click.IntRange(min=1), default=None,
              help="BAC: refreshes per sub-block (default: calls / --cache-interval, rounded up).")
@click.option("--bac-bubbling", type=click.IntRange(min=0), default=None,
              help="BAC: upstream sub-blocks bubbling union refreshes with the FFNs below them (default 3).")
@click.option("--cache-variants", type=click.IntRange(min=1), default=None,
              help="Per-block schedules (BAC, router): at most N distinct graphs; fewer merges patterns by adding "
                   "refreshes (default 4; 16 for DP-T at 100 DDPM calls, see BENCHMARKS.md).")
@click.option("--size", type=int, nargs=2, default=None, metavar="H W",
              help="Image size in pixels (static shapes; default: the model's own).")
@click.option("--calib-prompts", type=click.Path(), default=None,
              help="Text-to-image: calibration prompts, one per line (default: dmc's built-in set).")
@click.option("--calib-observations", type=click.Path(dir_okay=False), default=None,
              help="Policies: INT8 calibration observation histories (.npz, one [N, n_obs_steps, ...] array per key).")
@click.option("--cache-method", type=click.Choice(["reuse", "forecast"]), default=None,
              help="reuse the last computed feature (default) or forecast it (TaylorSeer extrapolation).")
@click.option("--forecast-order", type=click.IntRange(1, 2), default=None, help="Forecast order (default 1).")
@click.option("--prune", type=float, default=None, metavar="RATIO",
              help="Structural pruning: remove this fraction of parameters, or of MACs with --prune-target macs "
                   "(EcoDiff learned masks).")
@click.option("--prune-target", type=click.Choice(["params", "macs"]), default=None,
              help="What RATIO counts: parameters (default) or MACs per model call (pruning for speed).")
@click.option("--prune-align", type=int, default=8, show_default=True, help="Pruned widths are multiples of this.")
@click.option("--prune-method", type=click.Choice(["learned", "magnitude", "magnitude-layer"]),
              default="learned", show_default=True,
              help="learned: masks trained through the sampler; magnitude(-layer): L1 baselines (global / per layer).")
@click.option("--prune-iterations", type=int, default=None, help="Mask-training iterations (default 60).")
@click.option("--prune-samples", type=int, default=None, help="Noise/label pairs the masks train on (default 16).")
@click.option("--opset", type=click.Choice([str(o) for o in SUPPORTED_OPSETS]), default=str(DEFAULT_OPSET),
              show_default=True, help="ONNX opset of the exported graphs.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where torch runs calibration and verification references (cuda needs a GPU torch sees).")
@click.option("--verify-images", type=int, default=4, show_default=True,
              help="Images sampled to verify the artifact against torch (after a 1-image check of the first calls).")
@click.option("--verify-budget", type=float, default=300.0, show_default=True,
              help="Seconds full-image verification may take: fewer images (at least 1) when slower; 0 = no bound.")
@click.option("--int8-parts", default=None, metavar="text,vae",
              help="Text-to-image: INT8 on the text encoder(s) and/or the VAE decoder too (the denoiser alone "
                   "by default), each verified against torch on held-out inputs.")
@click.option("--fidelity-floor", type=float, default=None,
              help="PSNR (dB) against torch below which the artifact is refused (default: 60 FP32, 25 with --int8); "
                   "with --int8-parts also each INT8 part's floor (default 25). Recorded in the manifest.")
def compress(model, out, sampler, steps, guidance, seed, config_path, int8, cache, opset, force,
             scheduler_config=None, scheduler_preset=None, **opts):
    """Compile MODEL into an artifact folder (graphs, sampler table, manifest)."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    out = out or f"{Path(model.rstrip('/')).stem}.dmc"
    sampler_given = click.get_current_context().get_parameter_source("sampler") != click.core.ParameterSource.DEFAULT
    sampler, steps, opts["step_plan"], opts["ems_in_search"] = _step_plan(sampler, sampler_given, steps, opts["calls"])
    recipe = Recipe(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    from dmc.compress.plan import plan_from_options
    from dmc.quantize.parts import parse_groups

    options = CompileOptions(recipe=recipe, passes=plan_from_options(int8, cache, seed, opts), config_path=config_path,
                             opset=int(opset), force=force, progress=True, scheduler_config=scheduler_config,
                             scheduler_preset=scheduler_preset, device=opts["device"],
                             verify_images=opts["verify_images"], verify_budget_s=opts["verify_budget"] or None,
                             fidelity_floor=opts["fidelity_floor"],
                             int8_parts=parse_groups(opts["int8_parts"]),
                             sampler_follows_schedule=not sampler_given and opts["step_plan"] is None,
                             steps_follow_model=click.get_current_context().get_parameter_source("steps")
                             == click.core.ParameterSource.DEFAULT and opts["step_plan"] is None)
    needs_int8 = [flag for flag, given in (("--int8-stream", opts["int8_stream"]),
                                           ("--keep-float", opts["keep_float"] is not None)) if given]
    if needs_int8 and not int8:
        raise DmcError(f"{needs_int8[0]} shapes an INT8 graph: it needs --int8")
    if opts["fidelity_floor"] is not None and not math.isfinite(opts["fidelity_floor"]):
        raise DmcError(f"--fidelity-floor must be a finite number of dB, got {opts['fidelity_floor']}")
    if opts.get("size"):
        options.image_size = tuple(opts["size"])
    if opts.get("calib_observations"):
        options.calib_observations = opts["calib_observations"]
    if opts.get("calib_prompts"):
        from dmc.runtimes.text2image import read_prompts

        options.calib_prompts = read_prompts(opts["calib_prompts"])
    path = compile_model(model, out, options)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for w in manifest.get("warnings", []):
        click.echo(f"dmc: warning: {w}", err=True)
    v = manifest["verification"]
    what = f"{v['chunks']} action chunks" if "chunks" in v else f"{v['images']} images"
    click.echo(f"wrote {path} ({manifest['precision']}, {len(manifest['graphs'])} graph(s), "
               f"verified on {what}: PSNR {v['psnr_db']:.1f} dB vs torch)")
    int8_parts = (manifest.get("parts") or {}).get("verification", {}).get("int8_psnr_db") or {}
    if int8_parts:
        click.echo("  INT8 parts on held-out inputs: " + ", ".join(f"{k} {v:.1f} dB" for k, v in int8_parts.items()))


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--n", "n", type=click.IntRange(min=1), default=None, help="Number of images (default 20; one per --prompt).")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Seed (default: the artifact's recipe seed).")
@click.option("--class-label", type=int, default=None, help="One class for all images (default: cycle classes).")
@click.option("--prompt", "prompts", multiple=True, help="Text-to-image: a prompt (repeat for several).")
@click.option("--negative-prompt", default=None, help="Text-to-image: the negative prompt.")
@click.option("--guidance", type=float, default=None, help="Text-to-image: guidance scale (default: the recipe's; Flux: its distilled scale, default 3.5).")
@click.option("--latents", "latents_path", type=click.Path(), default=None,
              help="Also write the final latents to this .npy (the only output of a backbone-only latent model).")
@click.option("--out", "-o", type=click.Path(), default="samples.png", show_default=True)
@click.option("--provider", multiple=True, help="ONNX Runtime provider(s): cuda, tensorrt, cpu or a full name.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Intra-op threads (default: all cores).")
@click.option("--backend", type=click.Choice(list(_BACKENDS)), default=None,
              help="Runtime that executes the graphs (dmc.runtimes.executor.BACKENDS). Default: the one the "
                   "artifact was compiled for where installed (--profile ov-cpu: openvino), else onnxruntime.")
def run(artifact, n, seed, class_label, out, provider, threads, backend, prompts=(), negative_prompt=None,
        guidance=None, latents_path=None):
    """Sample N images from ARTIFACT (no torch) and write them as a PNG grid.

    \b
    Example:
      dmc run demo.dmc --n 20 --out digits.png
      dmc run sd.dmc --prompt "a red fox in the snow" --negative-prompt blurry --n 4 --out fox.png
      dmc run unet.dmc --latents latents.npy   # backbone-only latent model: latents, no image
    """
    from dmc.runtimes import load
    from dmc.runtimes.images import save_grid
    from dmc.runtimes.policy import refuse_policy

    refuse_policy(artifact, "dmc run")
    providers = None
    if provider:  # short names cuda|tensorrt|cpu get their options (TensorRT EP caches next to the artifact)
        from dmc.artifact import read_manifest
        from dmc.runtimes.ort_providers import provider_list

        providers = provider_list(list(provider), artifact, read_manifest(artifact, verify=False).data.get("precision") == "int8")
    if provider and backend is None:  # --provider names ONNX Runtime providers
        backend = "onnxruntime"
    pipe = load(artifact, backend=backend, providers=providers, threads=threads)
    chunk = getattr(pipe.executor, "images_per_call", None)  # TensorRT engines are tuned for this many images
    from dmc.runtimes.text2image import sample_for_cli

    images = sample_for_cli(pipe, n, seed, class_label, prompts, negative_prompt, guidance, latents_path,
                            batch_size=chunk or 16)
    if images is None:
        click.echo(f"wrote {latents_path} (latents; this artifact has no VAE decoder)")
        return
    n = len(images)
    cols = 10 if pipe.cond["kind"] == "class" and n >= 10 else math.ceil(math.sqrt(n))
    save_grid(images, out, cols=cols)
    click.echo(f"wrote {out} ({n} images, {images.shape[1]}x{images.shape[2]})")


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--schedule-png", type=click.Path(), help="Also draw the cache schedule to this PNG.")
def inspect(artifact, as_json, schedule_png):
    """Show what ARTIFACT holds: model, recipe, graphs, passes, INT8 coverage, cache schedule.

    \b
    Examples:
      dmc inspect demo.dmc
      dmc inspect fast.dmc --schedule-png schedule.png
      dmc inspect demo.dmc --json | jq .graphs
    """
    from dmc.inspect import describe, format_text

    info = describe(artifact, schedule_png=schedule_png)
    click.echo(json.dumps(info, indent=1, default=str) if as_json else format_text(info))


@cli.command()
@click.option("--out", "-o", type=click.Path(), default="demo.dmc", show_default=True)
@click.option("--png", type=click.Path(), default="digits.png", show_default=True)
@click.option("--int8", is_flag=True)
@click.option("--cache", is_flag=True)
@click.option("--force", is_flag=True)
@click.pass_context
def demo(ctx, out, png, int8, cache, force):
    """Compile the built-in digits UNet and sample a grid from the artifact (works offline).

    \b
    Example:
      dmc demo --out demo.dmc --png digits.png
    """
    ctx.invoke(compress, model="demo", out=out, int8=int8, cache=cache, force=force)
    ctx.invoke(run, artifact=out, n=20, out=png)


def _register_optional_commands() -> None:
    try:
        from dmc.evaluate.cli import bench_cmd, check_cmd, eval_cmd, report_cmd
    except ImportError:
        return
    cli.add_command(eval_cmd, "eval")
    cli.add_command(bench_cmd, "bench")
    cli.add_command(check_cmd, "check")
    cli.add_command(report_cmd, "report")


def _register_engine_command() -> None:
    from dmc.engines.cli import build_engine_cmd  # TensorRT itself is imported only when it runs

    cli.add_command(build_engine_cmd, "build-engine")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"dmc: warning: {message}", file=sys.stderr)


def _on_kill(*_) -> None:
    """SIGTERM: remove any half-written artifact's temporary folder and lock and the scratch folders, then exit 143."""
    from dmc.artifact.writer import abandon_all
    from dmc.scratch import remove_all

    abandon_all()
    remove_all()
    os._exit(143)


def main(argv=None) -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    _register_optional_commands()
    _register_engine_command()
    warnings.showwarning = _show_warning
    signal.signal(signal.SIGTERM, _on_kill)
    try:
        # standalone_mode=False returns (not raises) a ctx.exit(code): `dmc check` failing a gate must exit 1
        code = cli.main(args=argv, prog_name="dmc", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        print("dmc: aborted", file=sys.stderr)
        sys.exit(130)
    except DmcError as e:
        print(f"dmc: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # disk full, read-only, permissions: the environment, not a bug
        print(f"dmc: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("dmc: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, not bad input: still no traceback unless asked for
        if os.environ.get("DMC_DEBUG"):
            raise
        print(f"dmc: internal error: {type(e).__name__}: {e} (set DMC_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
