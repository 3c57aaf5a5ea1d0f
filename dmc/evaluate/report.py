"""``dmc report``: a folder of PNGs and an ``index.html`` comparing an artifact with its reference.

- ``samples.png``: reference and compressed samples from the same seeds side by side, and a heat
  map of the absolute error per pixel;
- ``trajectory.png``: RMSE between the two sampler trajectories at every model call (the state
  ``x`` after each call and the raw model output), recorded with ``Pipeline.sample``'s ``on_call``;
- ``latency.png``: per-call and per-image latency of both (a short ``benchmark``);
- ``metrics.json`` and ``index.html``.

The folder is written to a temporary sibling and renamed into place, so a failed report
leaves nothing half-written.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dmc.errors import DmcError

FILES = ("samples.png", "trajectory.png", "latency.png")


def _record(target, n: int, seed: int, labels) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Images in [0, 1] (``Target.unit_images``) plus, per model call k, the state x_k after the call and
    the raw model output."""
    xs: dict[int, list] = {}
    raws: dict[int, list] = {}

    def on_call(k, feeds, raw, x_next):
        xs.setdefault(k, []).append(np.array(x_next, dtype=np.float64))
        raws.setdefault(k, []).append(np.array(raw, dtype=np.float64))

    out = target.unit_images(0, n, seed, labels, on_call=on_call)
    ks = sorted(xs)
    return out, [np.concatenate(xs[k]) for k in ks], [np.concatenate(raws[k]) for k in ks]


def _per_image_rmse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(axis=1))


def _caption(i: int, labels, prompts) -> str:
    if prompts is not None:
        import textwrap

        return f"#{i} " + "\n".join(textwrap.wrap(prompts[i], 22, max_lines=3, placeholder="..."))
    return f"#{i}" + ("" if labels is None else f" class {labels[i]}")


def _samples_png(path: Path, ref_u: np.ndarray, art_u: np.ndarray, labels, psnr: np.ndarray,
                 ref_name: str, art_name: str, prompts: list[str] | None = None) -> None:
    from matplotlib.figure import Figure

    n = len(ref_u)
    err = np.abs(art_u - ref_u).mean(axis=-1)  # [n, H, W], [0, 1] scale
    vmax = max(float(err.max()), 1e-6)
    width, height = (1.25, 4.6) if prompts is None else (1.6, 5.2)  # room for the prompt captions
    fig = Figure(figsize=(width * n + 1.6, height), dpi=110)
    axes = fig.subplots(3, n, squeeze=False)
    gray = ref_u.shape[-1] == 1
    im = None
    for i in range(n):
        for row, img in enumerate((ref_u[i], art_u[i])):
            ax = axes[row, i]
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1,
                      interpolation="nearest")
        im = axes[2, i].imshow(err[i], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        axes[0, i].set_title(_caption(i, labels, prompts), fontsize=6 if prompts else 8)
        axes[2, i].set_xlabel(f"{psnr[i]:.1f} dB", fontsize=8)
        for row in range(3):
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
    for row, name in enumerate((f"reference\n{ref_name}", f"compressed\n{art_name}", "|error|")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.colorbar(im, ax=axes[2, :].tolist(), fraction=0.02, pad=0.01, label="abs error ([0,1] scale)")
    fig.suptitle(f"Same seeds and {'prompts' if prompts else 'class labels'}: reference (top), compressed (middle), error heat map "
                 "(bottom, PSNR per image)", fontsize=9)
    fig.savefig(path)


def _trajectory_png(path: Path, x_err: np.ndarray, out_err: np.ndarray, timesteps: list[float],
                    graphs: list[str]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    k = np.arange(len(x_err))
    floor = 1e-9  # log axis: identical trajectories are drawn at the floor
    for err, name, color in ((x_err, "state x_k after call k", "C0"), (out_err, "model output at call k", "C1")):
        med = np.maximum(np.median(err, axis=1), floor)
        ax.plot(k, med, "o-", color=color, label=f"{name} (median over images)", ms=4)
        ax.fill_between(k, np.maximum(err.min(axis=1), floor), np.maximum(err.max(axis=1), floor),
                        color=color, alpha=0.2, label=f"{name} (min..max)")
    ax.set_yscale("log")
    ax.set_xlabel("model call k (0 = noisiest)")
    ax.set_ylabel("RMSE vs reference trajectory (model space)")
    ticks = k if len(k) <= 25 else k[:: max(1, len(k) // 12)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{i}\nt={timesteps[i]:.0f}" + ("" if graphs[i] == "full" else f"\n{graphs[i]}")
                        for i in ticks], fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Error against the reference trajectory at every sampler call", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _latency_png(path: Path, bench: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=110)
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    targets = [(k, bench[k]) for k in ("vs", "artifact") if bench.get(k)]
    labels, med, p90, colors = [], [], [], []
    for i, (key, s) in enumerate(targets):
        for g, st in s["per_call"].items():
            name = "reference" if key == "vs" else "compressed"
            labels.append(f"{name}\n{g} ({s['executor']})")
            med.append(st["median_ms"])
            p90.append(st["p90_ms"])
            colors.append("C7" if key == "vs" else "C0")
    y = np.arange(len(labels))
    up = np.maximum(np.array(p90) - np.array(med), 0)
    ax1.barh(y, med, xerr=np.vstack([np.zeros_like(up), up]), color=colors, capsize=3)
    ax1.set_yticks(y)
    ax1.set_yticklabels(labels, fontsize=7)
    ax1.set_xlabel("ms per model call (median, whisker to p90)")
    ax1.set_title("per model call", fontsize=9)
    e_labels = ["reference" if k == "vs" else "compressed" for k, _ in targets]
    e_med = [s["end_to_end_per_image"]["median_ms"] for _, s in targets]
    e_p90 = [s["end_to_end_per_image"]["p90_ms"] for _, s in targets]
    e_up = np.maximum(np.array(e_p90) - np.array(e_med), 0)
    ax2.bar(e_labels, e_med, yerr=np.vstack([np.zeros_like(e_up), e_up]),
            color=["C7" if k == "vs" else "C0" for k, _ in targets], capsize=3)
    ax2.set_ylabel("ms per image (median, whisker to p90)")
    ratio = bench.get("ratio")
    title = "end to end per image"
    if ratio:
        title += f"\ncompressed/reference = {ratio['end_to_end']['median']:.2f}"
    ax2.set_title(title, fontsize=9)
    fig.suptitle(f"Latency, {bench['repeats']} interleaved runs, batch {bench['n_images']} image(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def _html(metrics: dict) -> str:
    e = html.escape
    p = metrics["paired"]
    rows = [
        ("artifact", metrics["artifact"]),
        ("reference", f"{metrics['reference']} ({metrics['reference_kind']})"),
        ("recipe", json.dumps(metrics["recipe"])),
        ("images", f"{metrics['n']} (seed {metrics['seed']})"),
        ("paired RMSE mean / worst", f"{p['rmse_mean']:.5f} / {p['rmse_worst']:.5f}"),
        ("paired PSNR mean / worst", f"{p['psnr_mean']:.2f} dB / {p['psnr_worst']:.2f} dB"),
        ("final-call x RMSE (median)", f"{metrics['trajectory']['x_rmse_median'][-1]:.3g}"),
    ]
    if metrics.get("latency"):
        lat = metrics["latency"]
        rows.append(("per image (compressed / reference)",
                     f"{lat['artifact_ms']:.1f} ms / {lat['reference_ms']:.1f} ms (ratio {lat['ratio']:.3f})"))
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    figs = [
        ("samples.png", "Samples from identical seeds: reference, compressed, and the absolute error."),
        ("trajectory.png", "RMSE between the two sampler trajectories at every model call."),
        ("latency.png", "Latency per model call and per image."),
    ]
    body = "\n".join(f'<figure><img src="{f}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>'
                     for f, cap in figs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>dmc report: {e(Path(metrics['artifact']).name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}th{{text-align:left;padding-right:1em}}
img{{max-width:100%;border:1px solid #ccc}}figure{{margin:1.5em 0}}</style></head>
<body><h1>dmc report</h1>
<table>
{table}
</table>
{body}
<p>Numbers: <a href="metrics.json">metrics.json</a>. Generated {e(metrics['created'])}.</p>
</body></html>
"""


def report(artifact: str | Path, reference: str | None, out: str | Path, n: int = 10, seed: int | None = None,
           repeats: int = 5, threads: int | None = None, force: bool = False, progress: bool = False,
           prompts: list[str] | None = None) -> Path:
    """Write the report folder ``out`` (see module doc) and return its path."""
    from dmc.evaluate.bench import benchmark
    from dmc.evaluate.evaluate import _log, open_artifact, open_reference
    from dmc.evaluate.paired import paired_fidelity

    out = Path(out)
    if out.exists() and not force:
        raise DmcError(f"{out}: already exists (pass --force to replace it)")
    if not out.parent.exists():
        raise DmcError(f"{out.parent}: output folder's parent does not exist")
    if n < 1:
        raise DmcError("--n must be at least 1")
    art = open_artifact(artifact, threads, prompts)
    ref = open_reference(reference, art, threads)
    seed = art.sampler.recipe.seed if seed is None else seed
    labels = art.sampler.labels_for(n)
    shown = None if art.prompts is None else art.prompts_for(0, n)
    _log(progress, f"sampling {n} images with both pipelines, recording trajectories")
    ua, a_x, a_raw = _record(art, n, seed, labels)
    ur, r_x, r_raw = _record(ref, n, seed, labels)
    steps = min(len(a_x), len(r_x))
    x_err = np.stack([_per_image_rmse(a_x[k], r_x[k]) for k in range(steps)])  # [calls, n]
    out_err = np.stack([_per_image_rmse(a_raw[k], r_raw[k]) if a_raw[k].shape == r_raw[k].shape
                        else np.full(n, np.nan) for k in range(steps)])
    pf = paired_fidelity(ua, ur)
    calls = art.sampler.calls

    _log(progress, f"benchmarking ({repeats} interleaved runs)")
    ref_spec = ref.info.get("path") or ref.info.get("source")
    bench = benchmark(artifact, vs=ref_spec, n_images=1, repeats=repeats, warmup=1, threads=threads,
                      seed=seed, memory=False)
    metrics = {
        "artifact": str(artifact), "reference": ref_spec, "reference_kind": ref.kind,
        "recipe": art.sampler.recipe.to_json(), "n": n, "seed": seed,
        "labels": None if labels is None else labels.tolist(), "prompts": shown,
        "paired": {k: v for k, v in pf.items()},
        "trajectory": {
            "calls": steps, "timesteps": [c.timestep for c in calls[:steps]],
            "graphs": [c.graph for c in calls[:steps]],
            "x_rmse_median": np.median(x_err, axis=1).tolist(), "x_rmse_max": x_err.max(axis=1).tolist(),
            "output_rmse_median": [None if not np.isfinite(v) else float(v) for v in np.median(out_err, axis=1)],
            "note": None if len(a_x) == len(r_x)
            else f"call counts differ ({len(a_x)} vs {len(r_x)}); first {steps} compared",
        },
        "latency": {
            "artifact_ms": bench["artifact"]["end_to_end_per_image"]["median_ms"],
            "reference_ms": bench["vs"]["end_to_end_per_image"]["median_ms"],
            "ratio": bench["ratio"]["end_to_end"]["median"],
        },
        "bench": bench,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report is meant to be served/read
        _log(progress, "drawing")
        art_name = Path(str(artifact)).name
        ref_name = Path(str(ref_spec)).name or str(ref_spec)
        _samples_png(tmp / "samples.png", ur, ua, labels, np.asarray(pf["psnr"]), ref_name, art_name, shown)
        _trajectory_png(tmp / "trajectory.png", x_err, out_err, [c.timestep for c in calls[:steps]],
                        [c.graph for c in calls[:steps]])
        _latency_png(tmp / "latency.png", bench)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False) + "\n")
        (tmp / "index.html").write_text(_html(metrics))
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
