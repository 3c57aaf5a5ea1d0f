"""The ``dmc`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

import click

from dmc.errors import DmcError
from dmc.runtimes.executor import BACKENDS as _BACKENDS

EPILOG_COMPRESS = """\b
Examples:
  dmc compress demo --out demo.dmc                   # the built-in digits UNet, FP32
  dmc compress demo --out demo-int8.dmc --int8       # PTQ4DM INT8
  dmc compress demo --out fast.dmc --int8 --cache    # INT8 + DeepCache, jointly calibrated
  dmc compress unet/ --out my.dmc --sampler dpm++2m --steps 25
  dmc compress model.safetensors --config config.json --out my.dmc
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dmc")
def cli() -> None:
    """dmc: compile diffusion models (UNet or DiT) into fast, deployable artifacts.

    MODEL is a diffusers model folder, a .safetensors file, or a built-in name:
    `demo` (digits UNet) or `demo-dit` (digits DiT).
    """


def _pass_configs(int8: bool, cache: bool, opts: dict) -> list:
    passes = []
    if cache:
        from dmc.cache import CacheConfig

        kw = {"schedule": opts["cache_schedule"], "interval": opts["cache_interval"]}
        passes.append(CacheConfig(**{k: v for k, v in kw.items() if v is not None}))
    if int8:
        from dmc.quantize import QuantizeConfig

        kw = {"calibration": opts["calibration"], "num_samples": opts["calib_samples"],
              "scale_groups": opts["scale_groups"], "profile": opts["profile"]}
        passes.append(QuantizeConfig(**kw))
    if cache and int8:  # CacheQuant's quantization correction, fitted after both passes
        from dmc.cache.correction import CorrectConfig

        passes.append(CorrectConfig())
    return passes


@cli.command(epilog=EPILOG_COMPRESS)
@click.argument("model")
@click.option("--out", "-o", type=click.Path(), help="Artifact folder to write (default: <model>.dmc).")
@click.option("--sampler", type=click.Choice(["ddim", "dpm++2m"]), default="ddim", show_default=True)
@click.option("--steps", type=int, default=20, show_default=True, help="Model calls per image.")
@click.option("--guidance", type=float, default=None,
              help="Classifier-free guidance scale (default 2.0 for class-conditional models, else off).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration and verification.")
@click.option("--config", "config_path", type=click.Path(), help="config.json for a bare .safetensors.")
@click.option("--int8", is_flag=True, help="PTQ4DM timestep-aware W8A8 quantization.")
@click.option("--calibration", type=click.Choice(["ndtc", "uniform", "noise", "single-step"]), default="ndtc",
              show_default=True, help="Calibration set for --int8.")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--scale-groups", type=int, default=1, show_default=True,
              help="Activation-scale groups over the steps (one graph variant each).")
@click.option("--profile", type=click.Choice(["ort-cpu", "trt"]), default="ort-cpu", show_default=True,
              help="Q/DQ rules of the target: ort-cpu (fastest here) or trt (TensorRT: symmetric int8).")
@click.option("--cache", is_flag=True, help="Feature caching (DeepCache for UNets, block caching for DiTs).")
@click.option("--cache-schedule", type=click.Choice(["uniform", "dp", "bac"]), default=None,
              help="Refresh schedule: uniform, CacheQuant's dp, or BAC (DiT blocks). Default: the pass's own.")
@click.option("--cache-interval", type=int, default=None, help="N: about one full call in N (default 3).")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
def compress(model, out, sampler, steps, guidance, seed, config_path, int8, cache, opset, force, **opts):
    """Compile MODEL into an artifact folder (graphs, sampler table, manifest)."""
    from dmc.compress.pipeline import CompileOptions, compile_model
    from dmc.sampling import Recipe

    out = out or f"{Path(model.rstrip('/')).stem}.dmc"
    recipe = Recipe(sampler=sampler, steps=steps, guidance=guidance, seed=seed)
    options = CompileOptions(recipe=recipe, passes=_pass_configs(int8, cache, opts), config_path=config_path,
                             opset=opset, force=force, progress=True)
    path = compile_model(model, out, options)
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    for w in manifest.get("warnings", []):
        click.echo(f"dmc: warning: {w}", err=True)
    v = manifest["verification"]
    click.echo(f"wrote {path} ({manifest['precision']}, {len(manifest['graphs'])} graph(s), "
               f"verified on {v['images']} images: PSNR {v['psnr_db']:.1f} dB vs torch)")


@cli.command()
@click.argument("artifact", type=click.Path())
@click.option("--n", "n", type=int, default=20, show_default=True, help="Number of images.")
@click.option("--seed", type=int, default=None, help="Seed (default: the artifact's recipe seed).")
@click.option("--class-label", type=int, default=None, help="One class for all images (default: cycle classes).")
@click.option("--out", "-o", type=click.Path(), default="samples.png", show_default=True)
@click.option("--provider", multiple=True, help="ONNX Runtime provider(s): cuda, tensorrt, cpu or a full name.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--backend", type=click.Choice(list(_BACKENDS)), default="onnxruntime", show_default=True,
              help="Runtime that executes the graphs (see dmc.runtimes.executor.BACKENDS).")
def run(artifact, n, seed, class_label, out, provider, threads, backend):
    """Sample N images from ARTIFACT (no torch) and write them as a PNG grid.

    \b
    Example:
      dmc run demo.dmc --n 20 --out digits.png
    """
    from dmc.runtimes import load
    from dmc.runtimes.images import save_grid

    providers = None
    if provider:  # short names cuda|tensorrt|cpu get their options (TensorRT EP caches next to the artifact)
        from dmc.artifact import read_manifest
        from dmc.runtimes.ort_providers import provider_list

        providers = provider_list(list(provider), artifact, read_manifest(artifact, verify=False).data.get("precision") == "int8")
    pipe = load(artifact, backend=backend, providers=providers, threads=threads)
    chunk = getattr(pipe.executor, "images_per_call", None)  # TensorRT engines are tuned for this many images
    images = pipe(n=n, seed=seed, class_labels=class_label, progress=True, **({"batch_size": chunk} if chunk else {}))
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


def main(argv=None) -> None:
    """Console entry point: user errors become one line on stderr and a non-zero exit."""
    _register_optional_commands()
    _register_engine_command()
    warnings.showwarning = _show_warning
    try:
        cli.main(args=argv, prog_name="dmc", standalone_mode=False)
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
