"""Structural pruning: ``dmc compress MODEL --prune RATIO`` (EcoDiff, ``algorithms.md`` §3).

Hard-concrete masks on attention heads, FFN neurons and resnet channel groups (``structures.py``,
``masks.py``) are trained end to end on the final sample through the unrolled, per-step
checkpointed sampler (``train.py``, ``dmc.learn.unrolled``), binarized to the target (parameters or MACs per call, ``costs.py``)
with aligned widths, and sliced physically (``slicing.py``); the ``prune`` pass (``pass_.py``)
swaps the pruned model in before every other pass. ``describe`` serves ``dmc inspect`` (no torch).
"""

from __future__ import annotations

from dmc.prune.config import PruneConfig

try:  # registering the pass imports the compile side (torch); a runtime-only install can still describe()
    from dmc.prune import pass_  # noqa: F401
except ImportError:  # pragma: no cover
    pass


def _macs(record: dict) -> str:
    if "macs_before" not in record:  # artifacts compiled before MACs were recorded
        return ""
    return (f", {record['macs_before'] / 1e6:.1f} -> {record['macs_after'] / 1e6:.1f} M MACs per call "
            f"({record['macs_ratio']:.1%})")


def describe(root) -> dict:
    """The prune pass of an artifact for ``dmc inspect``: per-layer kept widths and the drop."""
    from dmc.artifact import read_manifest

    manifest = read_manifest(root, verify=False)
    record = next((p for p in manifest.data.get("passes", []) if p.get("name") == "prune"), None)
    if record is None:
        return {}
    q = record["quality_vs_unpruned"]
    text = [f"prune      {record['method']}, {record['params_before'] / 1e6:.3f} M -> {record['params_after'] / 1e6:.3f} M "
            f"params ({record['params_ratio']:.1%}){_macs(record)}, target {record.get('target', 'params')}, "
            f"align {record['config']['align']}, "
            f"PSNR {q['psnr_db']:.1f} dB vs unpruned ({q['images']} images)"]
    for r in record["layers"]:
        what = "constant branch (bias kept)" if r["constant"] else f"{r['kept']}/{r['units']} units"
        text.append(f"  {r['module']:<34} {r['kind']:<6} width {r['width']:>4} -> {r['kept_width']:<4} {what}")
    return {"method": record["method"], "params_before": record["params_before"],
            "params_after": record["params_after"], "layers": record["layers"], "text": text}
