"""``dmc inspect``: a readable summary of an artifact, extended by the passes' own describers."""

from __future__ import annotations

import importlib
from pathlib import Path

from dmc.artifact import read_manifest
from dmc.sampling.solvers import table_lines, table_rows

# Each pass package may offer `describe(manifest) -> dict`; imported lazily so a runtime-only
# install (no torch) can still inspect what it can.
DESCRIBERS = ("dmc.quantize", "dmc.cache", "dmc.prune", "dmc.engines")


def describe(artifact: str | Path, schedule_png: str | None = None) -> dict:
    manifest = read_manifest(artifact, verify=True)
    d = manifest.data
    root = manifest.root
    graphs = {
        name: {"computes": g["computes"], "precision": g.get("precision"),
               "bytes": (root / g["file"]).stat().st_size,
               "calls": sum(1 for c in manifest.calls if c.graph == name)}
        for name, g in manifest.graphs.items()
    }
    info = {
        "artifact": str(root),
        "format_version": d["format_version"],
        "model": {k: d["model"][k] for k in ("class", "family", "source", "parameters", "sample_shape",
                                             "conditioning")},
        "recipe": d["recipe"],
        "calls": len(manifest.calls),
        "timesteps": [c.timestep for c in manifest.calls],
        "sampler_table": table_rows(manifest.calls),
        "graphs": graphs,
        "weights_bytes": (root / d["weights"]).stat().st_size,
        "total_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "precision": d["precision"],
        "target": d["target"],
        "backend": d.get("backend", "onnxruntime"),
        "passes": [p.get("name") for p in d.get("passes", [])],
        "verification": d.get("verification"),
        "provenance": d["provenance"],
    }
    from dmc.runtimes.policy import describe_policy
    from dmc.runtimes.text2image import describe_parts

    info["policy"] = describe_policy(manifest)
    info["pipeline"] = None if info["policy"] else describe_parts(manifest)
    from dmc.sampling.step_plan import describe as describe_steps

    info["steps"] = describe_steps(d)
    for module in DESCRIBERS:
        if module == "dmc.quantize" and d["precision"] == "fp32":
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        fn = getattr(mod, "describe", None)
        if fn is not None:
            extra = fn(manifest, schedule_png=schedule_png) if module == "dmc.cache" else fn(manifest.root)
            if extra:
                info[module.split(".")[-1]] = extra
    return info


def format_text(info: dict) -> str:
    m, r = info["model"], info["recipe"]
    lines = [
        f"artifact   {info['artifact']}  (format v{info['format_version']}, {info['total_bytes'] / 1e6:.2f} MB)",
        f"model      {m['class']} ({m['family']}), {m['parameters'] / 1e6:.2f} M params, sample {m['sample_shape']}, "
        f"conditioning {m['conditioning']['kind']}",
        f"recipe     {r['sampler']}, {r['steps']} steps, guidance {r['guidance']}, seed {r['seed']}",
        f"calls      {info['calls']}  timesteps {_short([round(t) for t in info['timesteps']])}",
        *([info["steps"]] if info.get("steps") else []),
        f"precision  {info['precision']}  target {info['target']}  backend {info['backend']}  "
        f"passes {info['passes'] or '-'}",
        "graphs",
    ]
    for name, g in info["graphs"].items():
        lines.append(f"  {name:<12} {g['precision']:<5} {g['bytes'] / 1e3:8.1f} kB  {g['calls']:3d} calls  "
                     f"{g['computes']}")
    lines.append(f"weights    {info['weights_bytes'] / 1e6:.2f} MB shared by all graphs")
    lines += table_lines(info.get("sampler_table", []))
    if info.get("pipeline"):
        lines.append(f"pipeline   {info['pipeline']['text']}")
    if info.get("policy"):
        lines.append(f"policy     {info['policy']}")
    v = info.get("verification")
    if v:
        what = f"{v['chunks']} action chunks" if "chunks" in v else f"{v['images']} images"
        lines.append(f"verified   {what}, PSNR {v['psnr_db']:.1f} dB vs torch (floor {v['floor_psnr_db']})")
    quant = info.get("quantize") or {}
    for name, g in (quant.get("graphs") or {}).items():
        problems = g.get("profile_problems") or []
        check = "ok" if not problems else f"{len(problems)} problem(s): {problems[0]}"
        lines.append(f"int8       {name:<12} {g.get('summary', '')}  [{g.get('profile')} profile {check}]")
    for line in (info.get("cache") or {}).get("text", []):
        lines.append(line)
    lines += (info.get("prune") or {}).get("text", [])
    for folder, e in (info.get("engines") or {}).items():  # TensorRT engines built by `dmc build-engine`
        for variant, g in (e.get("engines") or {"-": {"summary": e.get("error", "")}}).items():
            lines.append(f"engine     {folder} {variant:<12} {g['summary']}")
    return "\n".join(lines)


def _short(values: list, keep: int = 6) -> str:
    if len(values) <= 2 * keep:
        return str(values)
    return f"[{', '.join(map(str, values[:keep]))}, ..., {', '.join(map(str, values[-keep:]))}]"
