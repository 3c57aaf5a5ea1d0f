"""INT8 post-training quantization (PTQ4DM / Q-Diffusion) deployed as real INT8 kernels.

    from dmc.quantize import QuantizeConfig
    compile_model("demo", out, CompileOptions(passes=[QuantizeConfig()]))   # dmc compress demo --int8

``describe(artifact)`` reports, per graph, the profile check and the proved INT8 coverage.
"""

from __future__ import annotations

from pathlib import Path

from dmc.quantize.config import QuantizeConfig
from dmc.quantize.coverage import coverage, requested, summary_line
from dmc.quantize.profiles import PROFILES, check_profile

import dmc.quantize.pass_  # noqa: E402,F401  (registers the "quantize" pass)


def describe(artifact_root: str | Path) -> dict:
    """Per graph of an artifact: precision, profile problems and INT8 coverage after ORT optimisation.

    Returns ``{"target": ..., "precision": ..., "graphs": {name: {"precision", "profile",
    "profile_problems", "coverage", "requested", "summary"}}}``; ``summary`` reads like
    ``"int8: 39/41 convs, 16/24 matmuls, 0/13 gemms"`` for ``dmc inspect``.
    """
    import onnx

    from dmc.artifact import read_manifest

    manifest = read_manifest(artifact_root, verify=False)
    target = manifest.data.get("target")
    profile = target if target in PROFILES else None
    quantize = next((p for p in manifest.data.get("passes", []) if p.get("name") == "quantize"), {})
    stream = bool(quantize.get("config", {}).get("residual_stream"))
    out = {"target": target, "precision": manifest.data.get("precision"), "graphs": {}}
    for name, info in manifest.graphs.items():
        if info.get("precision") != "int8" and name not in {c.graph for c in manifest.calls}:
            continue  # an FP32 graph outside the sampler (a policy's observation encoder): not quantized
        path = manifest.graph_path(name)
        model = onnx.load(str(path), load_external_data=True)
        cov = coverage(path)
        entry = {
            "precision": info.get("precision"),
            "profile": profile,
            "profile_problems": (check_profile(model, profile, stream) if profile and info.get("precision") == "int8"
                                 else []),
            "coverage": cov,
            "requested": requested(model),
            "summary": summary_line(cov),
        }
        out["graphs"][name] = entry
    return out


__all__ = ["QuantizeConfig", "describe", "check_profile", "coverage", "PROFILES"]
