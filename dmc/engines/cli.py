"""The ``dmc build-engine`` command."""

from __future__ import annotations

import click


@click.command("build-engine")
@click.argument("artifact", type=click.Path())
@click.option("--fp16", is_flag=True, help="Allow FP16 kernels for float layers (weak typing: TensorRT 10.x only).")
@click.option("--workspace", "workspace_mb", type=int, default=None, help="Builder workspace limit in MB "
              "(lower it on a Jetson if the build runs out of memory).")
@click.option("--timing-cache", type=click.Path(), default=None, help="Timing cache file to load and update.")
@click.option("--builder-optimization-level", type=int, default=None, help="0..5 (TensorRT's default: 3).")
@click.option("--require-int8", is_flag=True, help="Fail if any layer the artifact quantized does not run INT8.")
@click.option("--images", type=int, default=4, show_default=True,
              help="Images per call the engines are tuned for (batch 2x this under guidance).")
def build_engine_cmd(artifact, fp16, workspace_mb, timing_cache, builder_optimization_level, require_int8, images):
    """Build TensorRT engines for ARTIFACT on this machine's GPU, into ARTIFACT/engines/<sm>-trt<version>/.

    \b
    Example (on the Jetson, after copying the artifact there):
      dmc build-engine demo-int8.dmc --require-int8
      dmc run demo-int8.dmc --backend tensorrt --out digits.png
    """
    from dmc.engines import precision
    from dmc.engines.builder import BuildOptions, build_engines

    data = build_engines(artifact, BuildOptions(fp16, workspace_mb, timing_cache, builder_optimization_level,
                                                require_int8, images))
    click.echo(f"built {len(data['engines'])} engine(s) for {data['key']['dir']} in {artifact}/engines/{data['key']['dir']}")
    for variant, e in data["engines"].items():
        click.echo(f"  {variant:<12} {precision.summary_line(e['precision'])}")
