"""``compile_policy``: a LeRobot diffusion policy folder -> a policy artifact (FP32).

Graphs: ``full``, the denoiser the sampler calls (``sample [B, horizon, action_dim]``,
``timestep``, ``global_cond``), and ``observation_encoder`` (normalised observation history ->
``global_cond``). The sampler is the policy's own noise scheduler (DDPM or DDIM, from its config,
never guessed) at its ``num_inference_steps``, compiled into the call table. The manifest's
``policy`` section carries features, normalisation and chunking (``dmc.runtimes.policy``).

Verification: the artifact's actions against the torch policy's, through the same sampler loop,
noise and observations (random observations inside the normalised range), on the denoiser's
normalised action scale; refused below the fidelity floor.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from dmc.artifact import ArtifactWriter, read_manifest
from dmc.errors import DmcError
from dmc.policies.lerobot import read_policy
from dmc.policies.model import DENOISER_INPUTS, load_denoiser, load_observation_encoder
from dmc.runtimes.policy import CONDITION, ENCODER_GRAPH, Policy
from dmc.sampling.recipe import Recipe

OUTPUT_NAME = "prediction"
FP32_FLOOR_PSNR = 60.0
VERIFY_SEED = 0


def _refuse_options(options) -> None:
    if options.passes:
        raise DmcError("--int8, --cache and --prune are not supported for policies yet (FP32 only)")
    if options.int8_parts or options.image_size:
        raise DmcError("--int8-parts and --size do not apply to a policy")


def policy_recipe(spec, options) -> Recipe:
    """The policy's own sampler (DDPM/DDIM) and ``num_inference_steps``, unless the caller chose them
    (the CLI's flags; from Python, a recipe that differs from ``Recipe()``'s defaults)."""
    recipe, default = options.recipe, Recipe()
    if recipe.guided:
        raise DmcError("a diffusion policy samples without guidance; drop --guidance")
    own_sampler = options.sampler_follows_schedule or recipe.sampler == default.sampler
    own_steps = options.steps_follow_model or recipe.steps == default.steps
    return Recipe(sampler=spec.sampler if own_sampler else recipe.sampler,
                  steps=spec.inference_steps if own_steps else recipe.steps, guidance=1.0, seed=recipe.seed)


def compile_policy(source: str, out: str | Path, options) -> Path:
    import torch

    from dmc.export.graphs import compact, write_graphs
    from dmc.export.onnx_export import export_onnx
    from dmc.sampling.compile import compile_calls

    started = time.time()
    writer = ArtifactWriter(out, overwrite=options.force)
    with writer:
        _refuse_options(options)
        spec = read_policy(source)
        recipe = policy_recipe(spec, options)
        denoiser = load_denoiser(spec)
        encoder = load_observation_encoder(spec)
        shape = (spec.horizon, spec.action.shape[0])
        calls = compile_calls(recipe, spec.schedule, shape)
        g = spec.global_cond_dim
        example = (torch.randn(2, *shape), torch.tensor([50.0, 3.0]), torch.randn(2, g))
        graphs = {"full": export_onnx(denoiser, example, DENOISER_INPUTS, [OUTPUT_NAME], options.opset)}
        obs_example = tuple(torch.randn(2, spec.n_obs_steps, *f.shape) for f in spec.observations)
        graphs[ENCODER_GRAPH] = export_onnx(encoder, obs_example, [f.input_name for f in spec.observations],
                                            [CONDITION], options.opset)
        write_graphs(graphs, writer.root / "graphs", release=True)
        graphs = {n: compact(m) for n, m in graphs.items()}
        manifest = _manifest(spec, recipe, calls, graphs, denoiser, encoder)
        manifest["verification"] = _verify(spec, denoiser, encoder, writer.root, manifest, options.verify_images)
        return writer.finish(manifest, {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "compile_seconds": round(time.time() - started, 1),
                                        "host": platform.node()})


def _io(value) -> dict:
    from dmc.compress.pipeline import _io as io

    return io(value)


def _manifest(spec, recipe, calls, graphs, denoiser, encoder) -> dict:
    import diffusers
    import onnx
    import torch

    import dmc

    cond = {"kind": "embedding", "num_classes": 0, "null_class": None, "embedding_shape": None,
            "inputs": [{"name": CONDITION, "shape": [spec.global_cond_dim], "dtype": "float32", "uncond": "zeros",
                        "default": None}]}
    computes = {"full": "the denoiser (conditional 1D UNet)",
                ENCODER_GRAPH: "normalised observation history -> the denoiser's condition"}
    return {
        "model": {"class": "DiffusionConditionalUnet1d", "family": "policy", "architecture": "lerobot-diffusion",
                  "source": str(spec.folder), "source_sha256": _sha(spec.weights), "config": spec.config,
                  "parameters": int(sum(p.numel() for p in denoiser.parameters())
                                    + sum(p.numel() for p in encoder.parameters())),
                  "sample_shape": [spec.horizon, spec.action.shape[0]], "conditioning": cond,
                  "config_assumptions": []},
        "policy": spec.section(),
        "recipe": recipe.to_json(),
        "training_schedule": spec.schedule,
        "training_schedule_origin": str(spec.folder / "config.json"),
        "sampler": {"calls": [c.to_json() for c in calls]},
        "graphs": {name: {"file": f"graphs/{name}.onnx", "computes": computes[name], "precision": "fp32",
                          "inputs": [_io(i) for i in g.graph.input], "outputs": [_io(o) for o in g.graph.output]}
                   for name, g in graphs.items()},
        "weights": "graphs/weights.bin",
        "tables": None,
        "precision": "fp32",
        "target": "ort-cpu",
        "backend": "onnxruntime",
        "passes": [],
        "warnings": [],
        "provenance": {"dmc": dmc.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                       "diffusers": diffusers.__version__, "python": platform.python_version(),
                       "seed": recipe.seed},
    }


def _sha(path: Path) -> str:
    from dmc.artifact.manifest import sha256_path

    return sha256_path(path)


def verification_observations(spec, n: int, seed: int) -> dict[str, np.ndarray]:
    """Observation histories in the robot's units whose normalised values lie in [-1, 1]."""
    from dmc.runtimes.policy import normalize

    rng = np.random.default_rng([seed, 0x0B5])
    obs = {}
    for f in spec.observations:
        if f.type == "VISUAL":  # pixel values in [0, 1], as cameras give them to LeRobot
            obs[f.key] = rng.uniform(0, 1, (n, spec.n_obs_steps, *f.shape)).astype(np.float32)
            continue
        unit = rng.uniform(-1, 1, (n, spec.n_obs_steps, *f.shape)).astype(np.float32)
        obs[f.key] = normalize(unit, spec.normalization[f.key], spec.normalization_eps, inverse=True)
    return obs


def torch_policy(spec, denoiser, encoder, manifest_data: dict):
    """The torch policy driven by the artifact's own sampler loop: the verification reference."""
    from dmc.artifact.manifest import Manifest
    from dmc.compress.torch_executor import TorchExecutor
    from dmc.runtimes.pipeline import Pipeline

    executor = TorchExecutor({"full": denoiser, ENCODER_GRAPH: encoder},
                             {"full": DENOISER_INPUTS, ENCODER_GRAPH: [f.input_name for f in spec.observations]},
                             {"full": [OUTPUT_NAME], ENCODER_GRAPH: [CONDITION]})
    manifest = Manifest(Path("."), manifest_data)
    return Policy(manifest, Pipeline.from_manifest(manifest, executor))


def _verify(spec, denoiser, encoder, root: Path, manifest: dict, n: int) -> dict:
    import json

    from dmc.artifact.writer import MANIFEST
    from dmc.compress.pipeline import check_fidelity
    from dmc.compress.verify_early import paired_psnr
    from dmc.runtimes.executor import open_executor
    from dmc.runtimes.pipeline import Pipeline
    from dmc.runtimes.policy import normalize

    obs = verification_observations(spec, n, VERIFY_SEED)
    want = torch_policy(spec, denoiser, encoder, manifest).act(obs, seed=VERIFY_SEED)
    (root / MANIFEST).write_text(json.dumps({"format": "dmc-artifact", "format_version": 1, **manifest, "files": {}}))
    try:
        m = read_manifest(root, verify=False)
        got = Policy(m, Pipeline.from_manifest(m, open_executor("onnxruntime", m, ["CPUExecutionProvider"]))).act(
            obs, seed=VERIFY_SEED)
    finally:
        (root / MANIFEST).unlink()
    norm = spec.normalization[spec.action.key]
    ours, theirs = (normalize(a, norm, spec.normalization_eps) for a in (got, want))  # the model's [-1, 1] scale
    if not (np.isfinite(ours).all() and np.isfinite(theirs).all()):
        raise DmcError("verification failed: non-finite actions; nothing was written")
    rmse, psnr = paired_psnr(ours, theirs)
    check_fidelity(psnr, FP32_FLOOR_PSNR)
    return {"chunks": n, "backend": "onnxruntime", "rmse": rmse, "psnr_db": min(psnr, 100.0),
            "max_abs_action_error": float(np.abs(got - want).max()), "floor_psnr_db": FP32_FLOOR_PSNR,
            "scale": "normalised actions ([-1, 1])"}
