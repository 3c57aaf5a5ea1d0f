"""TensorRT engines built on the target machine from an artifact's graphs (``dmc build-engine``).

The artifact stays unchanged: engines live in ``engines/<sm..>-trt<version>/`` with their own
manifest (``keys``); ``precision`` proves which layers run INT8; ``builder`` drives Polygraphy.
"""

from __future__ import annotations

from pathlib import Path


def describe(artifact: str | Path) -> dict:
    """For ``dmc inspect``: every engine folder's key and per-engine precision summary."""
    from dmc.engines import keys, precision

    out = {}
    for folder in keys.engine_dirs(Path(artifact)):
        try:
            data = keys.read_engines_manifest(folder, Path(artifact), verify=False)
        except Exception as e:  # a broken engines folder must not break inspect
            out[folder.name] = {"error": str(e)}
            continue
        out[folder.name] = {
            "key": data.get("key"), "images_per_call": data.get("images_per_call"),
            "engines": {v: {"summary": precision.summary_line(e["precision"]), "typing": e.get("typing"),
                            "precision": e["precision"]} for v, e in data.get("engines", {}).items()},
            "warnings": data.get("warnings", []),
        }
    return out
