"""Click commands ``dmc eval``, ``dmc bench``, ``dmc check``, ``dmc report`` (registered by ``dmc.cli``).

Each is a thin layer over the Python API (``evaluate``, ``benchmark``, ``check``, ``report``).
``--json`` prints exactly one JSON document on stdout; progress and tables go to stderr.
Errors are ``DmcError`` (one line, exit 2); ``dmc check`` exits 1 on a regression.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dmc.errors import DmcError


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _read_prompts(path: str | None) -> list[str] | None:
    from dmc.runtimes.text2image import read_prompts

    return None if path is None else read_prompts(path)


def _dump(doc: dict) -> None:
    click.echo(json.dumps(doc, indent=1, allow_nan=False))


class _Limit(click.ParamType):
    """A float, or ``off`` to switch that check off."""

    name = "FLOAT|off"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) or value is None:
            return value
        if str(value).lower() == "off":
            return "off"
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'off'", param, ctx)


LIMIT = _Limit()


# --- dmc eval -------------------------------------------------------------------------


@click.command("eval")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", "reference", metavar="MODEL_OR_ARTIFACT", default=None,
              help="Reference to compare with: a model (demo name, diffusers folder, .safetensors; run by torch "
                   "under the artifact's recipe) or another artifact. Default: the model the artifact was built from.")
@click.option("--n", "--num-images", "n", type=int, default=None, show_default="1000",
              help="Number of images (same seeds on both sides). Under torchrun write --num-images "
                   "(torchrun's parser takes --n for its own --nnodes/--nproc-per-node).")
@click.option("--seed", type=int, default=None, help="Noise seed (default: the artifact recipe's seed).")
@click.option("--features", metavar="SPEC", default=None,
              help="Frechet features: 'digits' (default, the shipped digits classifier), pytorch-fid Inception "
                   "weights (.pth/.pt/.safetensors) or any ONNX embedding (.onnx).")
@click.option("--batch-size", type=int, default=None, show_default="50", help="Images per sampling batch.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Text-to-image artifacts: prompts, one per line (image i gets prompt i mod count); "
                   "default: dmc's built-in evaluation prompts.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch.")
@click.option("--per-image", is_flag=True, help="Include per-image RMSE/PSNR/SSIM lists in the JSON.")
@click.option("--episodes", type=click.IntRange(min=1), default=None, show_default="50",
              help="Policies: seeded episodes of the task (closed-loop rollouts).")
@click.option("--task", default=None, show_default="reach-push", help="Policies: the simulated task to act in.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def eval_cmd(artifact, reference, n, seed, features, batch_size, prompts_file, threads, per_image, as_json,
             episodes=None, task=None):
    """Compare ARTIFACT's samples with a reference from identical seeds and class labels.

    Reports paired per-image RMSE / PSNR / SSIM (mean and worst), the Frechet distance to the
    held-out digits with a bootstrap CI, and, for class-conditional digit models, the classifier
    accuracy against the asked class. Runs sharded under torchrun with the same numbers.

    A text-to-image artifact is compared on decoded images with the uncompressed pipeline (default:
    the pipeline folder it was compiled from, run by torch) for the same prompts and seeds; its
    Frechet distance, to the reference's images, is measured when --features is given.

    \b
    Examples:
      dmc eval demo.dmc --reference demo --n 1000 --seed 0
      dmc eval int8.dmc --reference fp32.dmc --n 256 --json > eval.json
      dmc eval demo.dmc --features pt_inception-2015-12-05-6726825d.pth
      dmc eval sd-int8.dmc --reference sd-pipeline/ --n 48 --prompts my-prompts.txt
      torchrun --nproc_per_node 2 -m dmc.evaluate.distributed demo.dmc --reference demo --num-images 1000

    A robot policy artifact is judged by task success: closed-loop episodes of a simulated task
    (--task, --episodes, seeds from --seed), the success rate with its 95% Wilson interval and, with
    --reference ARTIFACT, the action error against it under the same noise:

    \b
      dmc eval policy-int8.dmc --episodes 50 --reference policy-fp32.dmc
    """
    from dmc.evaluate.distributed import Comm
    from dmc.runtimes.policy import is_policy_artifact

    if is_policy_artifact(artifact):
        return _eval_policy(artifact, reference, episodes or n, seed, task, threads, as_json)
    if episodes is not None or task is not None:
        raise DmcError("--episodes/--task are for robot policy artifacts; this one samples images (use --n)")
    from dmc.evaluate.evaluate import DEFAULT_BATCH, DEFAULT_N, evaluate, format_eval

    _threads(threads)
    comm = Comm.from_env()
    try:
        result = evaluate(artifact, reference, n=n or DEFAULT_N, seed=seed, features=features,
                          batch_size=batch_size or DEFAULT_BATCH, threads=threads, per_image=per_image,
                          progress=True, prompts=_read_prompts(prompts_file))
    finally:
        comm.close()
    if result is None:  # not rank 0
        return
    for w in result["warnings"]:
        _err(f"warning: {w}")
    if as_json:
        _dump(result)
    else:
        click.echo(format_eval(result))


def _eval_policy(artifact, reference, episodes, seed, task, threads, as_json) -> None:
    from dmc.evaluate.bench import is_artifact_path
    from dmc.evaluate.policy_eval import DEFAULT_EPISODES, DEFAULT_SEED, DEFAULT_TASK, evaluate_policy, format_policy_eval

    if reference is not None and not is_artifact_path(reference):
        raise DmcError(f"--reference {reference}: a policy is compared with another policy artifact (e.g. its FP32 one)")
    _threads(threads)
    result = evaluate_policy(artifact, episodes or DEFAULT_EPISODES, DEFAULT_SEED if seed is None else seed,
                             task or DEFAULT_TASK, reference, threads, progress=not as_json)
    if as_json:
        _dump(result)
    else:
        click.echo(format_policy_eval(result))


# --- dmc bench ------------------------------------------------------------------------


@click.command("bench")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--vs", "vs", metavar="OTHER", default=None,
              help="Interleave with OTHER: another artifact, or a model run by torch under ARTIFACT's recipe.")
@click.option("--n-images", type=int, default=1, show_default=True, help="Images per run (one batch).")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed runs (per target).")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="Measure peak RSS of each target in a fresh subprocess.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--control-hz", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Policies: the robot's control rate; reports the chunks ready within n_action_steps / Hz.")
@click.option("--compare-backends", is_flag=True,
              help="Time the artifact on every installed CPU backend (ONNX Runtime, OpenVINO), check each reproduces "
                   "its verified output, and say which to use on this machine.")
@click.option("--warm-start", type=click.IntRange(min=1), default=None,
              help="Policies: time act(warm_start=K): K model calls per chunk from the previous plan.")
def bench_cmd(artifact, vs, n_images, repeats, warmup, threads, seed, memory, as_json, control_hz=None,
              warm_start=None, compare_backends=False):
    """Latency of ARTIFACT per model call and end to end per image (median, p90), and peak memory.

    With --vs the two run interleaved and the ratio (ARTIFACT / OTHER per image, < 1 is faster)
    is the median of per-pair ratios.

    \b
    Examples:
      dmc bench int8.dmc --vs fp32.dmc --repeats 20
      dmc bench demo.dmc --vs demo --json > bench.json     # ORT artifact vs torch eager
      dmc bench pusht.dmc --control-hz 10 --repeats 50     # a policy: latency per action chunk
      dmc bench int8.dmc --compare-backends                # the fastest backend here that reproduces it
    """
    from dmc.evaluate.bench import benchmark, format_bench

    from dmc.runtimes.policy import is_policy_artifact

    _threads(threads)
    if compare_backends:
        if vs is not None:
            raise DmcError("--compare-backends compares one artifact on several backends; drop --vs")
        from dmc.evaluate.backends import compare_backends as compare, format_backends

        result = compare(artifact, n_images=n_images, repeats=repeats, warmup=warmup, threads=threads, seed=seed)
        if as_json:
            _dump(result)
        else:
            click.echo(format_backends(result))
        return
    if is_policy_artifact(artifact):
        from dmc.evaluate.bench_policy import benchmark_policy, format_policy_bench

        result = benchmark_policy(artifact, repeats=repeats, warmup=warmup, threads=threads, seed=seed,
                                  control_hz=control_hz, warm_start=warm_start)
        if as_json:
            _dump(result)
        else:
            click.echo(format_policy_bench(result))
        return
    result = benchmark(artifact, vs=vs, n_images=n_images, repeats=repeats, warmup=warmup, threads=threads,
                       seed=seed, memory=memory, progress=True)
    if as_json:
        _dump(result)
    else:
        click.echo(format_bench(result))


# --- dmc check ------------------------------------------------------------------------


def measure(artifact: str, baseline: dict | None, reference: str | None, n: int | None, seed: int | None,
            features: str | None, repeats: int | None, threads: int | None, do_eval: bool = True,
            do_bench: bool = True, memory: bool = True, vs: str | None = None,
            prompts: list[str] | None = None) -> dict:
    """Run eval and bench on ``artifact`` as ``dmc check ARTIFACT`` does: a ``dmc-measurement`` document.

    Settings missing from the flags are taken from the baseline's own eval/bench (so N, seed and
    features match); bench runs interleaved with ``vs``, else with the baseline's artifact when that
    still exists here.
    """
    from dmc.evaluate.bench import benchmark, is_artifact_path
    from dmc.evaluate.evaluate import DEFAULT_BATCH, DEFAULT_N, evaluate
    from dmc.evaluate.gate import MEASUREMENT_FORMAT, merge_documents

    base = merge_documents([baseline]) if baseline else {"eval": None, "bench": None}
    be, bb = base["eval"] or {}, base["bench"] or {}
    doc = {"format": MEASUREMENT_FORMAT, "format_version": 1, "eval": None, "bench": None}
    from dmc.runtimes.policy import is_policy_artifact

    if is_policy_artifact(artifact):
        return _measure_policy(doc, artifact, be, bb, reference, n, seed, repeats, threads, do_eval, do_bench)
    if do_eval:
        ref = reference
        if ref is None:  # the baseline's reference when it is still here, else the artifact's source model
            base_ref = be.get("reference") or {}
            cand = base_ref.get("path") or base_ref.get("source")
            from dmc.evaluate.evaluate import _demo_names

            ref = cand if cand and (cand in _demo_names() or Path(cand).exists()) else None
        doc["eval"] = evaluate(artifact, ref, n=n or be.get("n") or DEFAULT_N,
                               seed=seed if seed is not None else be.get("seed"),
                               features=features if features is not None else _features_spec(be),
                               batch_size=be.get("batch_size") or DEFAULT_BATCH, threads=threads,
                               per_image=False, progress=True, distributed=False, prompts=prompts)
    if do_bench:
        if vs is None:
            vs = (bb.get("artifact") or {}).get("target")
            vs = vs if vs and is_artifact_path(vs) and Path(vs).resolve() != Path(artifact).resolve() else None
        elif not is_artifact_path(vs):
            raise DmcError(f"--vs {vs}: not a dmc artifact (the gate compares against the baseline artifact)")
        doc["bench"] = benchmark(artifact, vs=vs, n_images=bb.get("n_images") or 1,
                                 repeats=repeats or bb.get("repeats") or 20, warmup=bb.get("warmup", 2),
                                 threads=threads if threads is not None else bb.get("threads"),
                                 memory=memory, progress=True)
    return doc


def _measure_policy(doc, artifact, be, bb, reference, n, seed, repeats, threads, do_eval, do_bench) -> dict:
    """``measure`` for a policy: task success (the baseline's task, episodes and seeds) and chunk latency."""
    from dmc.evaluate.bench_policy import benchmark_policy
    from dmc.evaluate.policy_eval import DEFAULT_EPISODES, DEFAULT_SEED, DEFAULT_TASK, evaluate_policy

    if do_eval:
        ref = reference or (be.get("reference") or {}).get("path")
        ref = ref if ref and Path(ref).exists() else None
        doc["eval"] = evaluate_policy(artifact, n or be.get("episodes") or DEFAULT_EPISODES,
                                      seed if seed is not None else be.get("seed", DEFAULT_SEED),
                                      be.get("task") or DEFAULT_TASK, ref, threads, progress=True)
    if do_bench:
        doc["bench"] = benchmark_policy(artifact, repeats=repeats or bb.get("chunks") or 20,
                                        threads=threads if threads is not None else bb.get("threads"),
                                        control_hz=bb.get("control_hz"))
    return doc


def _features_spec(eval_doc: dict) -> str | None:
    name = (eval_doc.get("frechet") or {}).get("features")
    if not name or name.startswith("digits"):
        return None
    raise DmcError(f"the baseline used features {name!r}: pass the same file with --features")


@click.command("check")
@click.argument("current", nargs=-1, metavar="CURRENT.json... | ARTIFACT")
@click.option("--baseline", "baselines", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Baseline measurement JSON (eval, bench or merged; repeat to merge several).")
@click.option("--write-baseline", type=click.Path(dir_okay=False), default=None,
              help="With ARTIFACT: write the measurement (eval + bench) to this JSON file.")
@click.option("--max-fd-increase", type=LIMIT, default=None, help="Max Frechet distance increase over the baseline.")
@click.option("--max-fd-above-ci", type=LIMIT, default=None,
              help="Max amount the FD may lie above the baseline's 95% bootstrap interval.")
@click.option("--min-psnr", type=LIMIT, default=None, help="Min mean PSNR (dB) of samples vs the reference.")
@click.option("--min-psnr-worst", type=LIMIT, default=None, help="Min PSNR (dB) of the worst image.")
@click.option("--min-ssim", type=LIMIT, default=None, help="Min mean SSIM vs the reference.")
@click.option("--max-accuracy-drop", type=LIMIT, default=None, help="Max drop of classifier accuracy.")
@click.option("--max-psnr-drop", type=LIMIT, default=None,
              help="Max drop (dB) of mean PSNR below the baseline's own (capped at psnr_ceiling).")
@click.option("--max-latency-ratio", type=LIMIT, default=None,
              help="Max current/baseline time per image (per action chunk for a policy).")
@click.option("--max-success-drop", type=LIMIT, default=None,
              help="Policies: max drop of the task success rate below the baseline's (same task, episodes, seeds).")
@click.option("--min-success-rate", type=LIMIT, default=None, help="Policies: min task success rate.")
@click.option("--latency-tolerance", type=float, default=None,
              help="Relative tolerance on the latency ratio (the measured noise is used when larger).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default="pyproject.toml", show_default=True,
              help="pyproject.toml whose [tool.dmc.check] table sets the thresholds (flags win).")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Write JUnit XML (one testcase per threshold).")
@click.option("--reference", default=None, metavar="MODEL_OR_ARTIFACT", help="ARTIFACT mode: eval reference.")
@click.option("--n", "n", type=int, default=None,
              help="ARTIFACT mode: images, or a policy's episodes (default: the baseline's).")
@click.option("--seed", type=int, default=None, help="ARTIFACT mode: seed (default: the baseline's).")
@click.option("--features", default=None, help="ARTIFACT mode: Frechet features (as `dmc eval`).")
@click.option("--repeats", type=int, default=None, help="ARTIFACT mode: bench runs (default: the baseline's).")
@click.option("--threads", type=int, default=None, help="ARTIFACT mode: CPU threads.")
@click.option("--vs", "vs", default=None, metavar="BASELINE_ARTIFACT",
              help="ARTIFACT mode: bench interleaved with this artifact (e.g. the baseline rebuilt in the same "
                   "job); default: the baseline's artifact if it exists here.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="ARTIFACT mode, text-to-image: evaluation prompts, one per line (the baseline's own file, so "
                   "both measure the same prompts; default: the built-in EVAL_PROMPTS).")
@click.option("--no-eval", is_flag=True, help="ARTIFACT mode: skip the quality measurement.")
@click.option("--no-bench", is_flag=True, help="ARTIFACT mode: skip the latency measurement.")
@click.option("--no-memory", is_flag=True, help="ARTIFACT mode: skip the peak-memory subprocesses of bench.")
@click.option("--json", "as_json", is_flag=True, help="Print the check result as one JSON document.")
@click.pass_context
def check_cmd(ctx, current, baselines, write_baseline, max_fd_increase, max_fd_above_ci, min_psnr, min_psnr_worst, min_ssim,
              max_accuracy_drop, max_psnr_drop, max_latency_ratio, latency_tolerance, config, junit, reference, n, seed,
              features, repeats, threads, vs, prompts_file, no_eval, no_bench, no_memory, as_json,
              max_success_drop=None, min_success_rate=None):
    """Fail (exit 1) when CURRENT regresses against --baseline.

    CURRENT is one or more measurement JSON files (`dmc eval --json`, `dmc bench --json`, merged
    automatically), or an ARTIFACT folder, which is measured first with eval and bench using
    the baseline's N, seed and bench settings. Thresholds: flags > [tool.dmc.check] in
    ./pyproject.toml > defaults; pass `off` to disable one.

    \b
    Examples:
      dmc check build/model.dmc --write-baseline baseline.json      # once, on main
      dmc check build/model.dmc --baseline baseline.json --junit gate.xml
      dmc check --baseline baseline.json eval.json bench.json --min-psnr 30
    """
    from dmc.evaluate.bench import is_artifact_path
    from dmc.evaluate.gate import check, format_table, load_thresholds, read_documents, write_junit

    if not current:
        raise DmcError("give CURRENT measurement JSON file(s) or an ARTIFACT folder")
    baseline = read_documents(list(baselines)) if baselines else None
    if len(current) == 1 and is_artifact_path(current[0]):
        _threads(threads)
        doc = measure(current[0], baseline, reference, n, seed, features, repeats, threads,
                      do_eval=not no_eval, do_bench=not no_bench, memory=not no_memory, vs=vs,
                      prompts=_read_prompts(prompts_file))
        if write_baseline:
            path = Path(write_baseline)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
            tmp.replace(path)
            _err(f"wrote measurement to {path}")
    else:
        if write_baseline:
            raise DmcError("--write-baseline needs an ARTIFACT to measure")
        bad = [c for c in current if Path(c).is_dir()]
        if bad:
            raise DmcError(f"{bad[0]}: a folder but not a dmc artifact (no manifest.json)")
        doc = read_documents(list(current))
    if baseline is None:
        if write_baseline:
            if as_json:
                _dump(doc)
            return
        raise DmcError("--baseline BASELINE.json is required (or --write-baseline PATH to create one)")
    overrides = {"max_fd_increase": max_fd_increase, "max_fd_above_ci": max_fd_above_ci, "min_psnr": min_psnr, "min_psnr_worst": min_psnr_worst,
                 "min_ssim": min_ssim, "max_accuracy_drop": max_accuracy_drop, "max_psnr_drop": max_psnr_drop,
                 "max_latency_ratio": max_latency_ratio, "latency_tolerance": latency_tolerance,
                 "max_success_drop": max_success_drop, "min_success_rate": min_success_rate}
    thresholds, source = load_thresholds(overrides, config)
    result = check(baseline, doc, thresholds)
    result["thresholds_from"] = source
    if junit:
        write_junit(result, junit)
    table = format_table(result)
    if as_json:
        _err(table)
        _dump(result)
    else:
        click.echo(table)
        click.echo(f"thresholds from {source}")
    if not result["passed"]:
        ctx.exit(1)


# --- dmc report -----------------------------------------------------------------------


@click.command("report")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
@click.option("--reference", default=None, metavar="MODEL_OR_ARTIFACT",
              help="Reference (default: the model the artifact was built from).")
@click.option("--out", "out", required=True, type=click.Path(), help="Report folder to create.")
@click.option("--n", "n", type=int, default=10, show_default=True, help="Images in the sample grid.")
@click.option("--seed", type=int, default=None, help="Seed (default: the artifact recipe's seed).")
@click.option("--repeats", type=int, default=5, show_default=True, help="Latency runs for the bar chart.")
@click.option("--threads", type=int, default=None, help="CPU threads for ONNX Runtime and torch.")
@click.option("--force", is_flag=True, help="Replace an existing report folder.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Text-to-image artifacts: prompts, one per line (default: the built-in evaluation prompts).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's metrics as one JSON document.")
def report_cmd(artifact, reference, out, n, seed, repeats, threads, force, prompts_file, as_json):
    """Write a report folder: sample grid with error heat map, trajectory error per sampler call,
    latency chart and index.html.

    \b
    Examples:
      dmc report int8.dmc --reference demo --out report/
      dmc report int8.dmc --reference fp32.dmc --out report/ --n 16 --force
    """
    from dmc.evaluate.report import report

    _threads(threads)
    path = report(artifact, reference, out, n=n, seed=seed, repeats=repeats, threads=threads, force=force,
                  progress=True, prompts=_read_prompts(prompts_file))
    if as_json:
        _dump(json.loads((path / "metrics.json").read_text()))
    else:
        click.echo(f"wrote {path}/index.html")


__all__ = ["bench_cmd", "check_cmd", "eval_cmd", "measure", "report_cmd"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(eval_cmd())
