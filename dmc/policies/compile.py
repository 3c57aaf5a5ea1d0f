"""``compile_policy``: a LeRobot diffusion policy folder -> a policy artifact (FP32, ``--int8``, ``--cache``).

Graphs: ``full``, the denoiser the sampler calls (``sample [B, horizon, action_dim]``,
``timestep``, ``global_cond``), and ``observation_encoder`` (normalised observation history ->
``global_cond``). The sampler is the policy's own noise scheduler (DDPM or DDIM, from its config,
never guessed) at its ``num_inference_steps``, compiled into the call table. The manifest's
``policy`` section carries features, normalisation and chunking (``dmc.runtimes.policy``).

``--int8`` runs the same quantize pass as image models (PTQ4DM on the denoiser's own trajectories)
through a ``CompileContext`` whose adapter is the denoiser; the trajectories are conditioned on
calibration observations (``--calib-observations FILE.npz`` recorded on the robot, else synthetic
ones spread over the normalised range, with a warning). The observation encoder stays FP32.
``--cache`` is the cache pass's DeepCache on the 1D UNet (``dmc.cache.unet1d``).

Verification, as for image models: the artifact's actions against the torch modules of its own
graphs on its own call table (same noise and observations: held-out recorded histories, or
synthetic ones in the normalised range), on the normalised action scale, refused below the passes'
floor (60 dB FP32, 25 dB INT8); with passes, the distance to the uncompressed FP32 policy is
reported beside it (``vs_fp32_policy_psnr_db``).
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
VERIFY_SEED = 0
CALIB_SEED = 1  # synthetic calibration observations: a stream apart from verification's


def _refuse_options(options) -> None:
    from dmc.cache import CacheConfig
    from dmc.cache.correction import CorrectConfig
    from dmc.quantize import QuantizeConfig
    from dmc.sampling.step_plan import StepsConfig

    allowed = (QuantizeConfig, CacheConfig, CorrectConfig, StepsConfig)
    other = [type(p).__name__ for p in options.passes if not isinstance(p, allowed)]
    if other:
        raise DmcError("--prune is not supported for policies yet (FP32, --int8, --cache and --steps auto are)")


def _refuse_unclipped_search(spec, options) -> None:
    from dmc.sampling.step_plan import StepsConfig

    if spec.schedule.get("clip_sample") and any(isinstance(p, StepsConfig) for p in options.passes):
        raise DmcError("--steps auto and --sampler dpm-v3 do not model clip_sample yet, and this policy samples "
                       "with it (its actions leave the trained range without); use --sampler dpm++2m --steps N")


def clip_like_training(calls, schedule: dict):
    """LeRobot samples its policies with ``clip_sample``: DDPM/DDIM clip the data prediction to
    ``clip_sample_range``. Every other solver's table gets the same clip on its data predictions; without
    it, DPM-Solver++ at the first calls of a cosine schedule (alpha_bar ~ 0 at t = 99 of 100) predicts
    actions far outside the trained range (the demo policy: 0/50 episodes at 5 calls, 48/50 with it)."""
    if schedule.get("clip_sample"):
        for c in calls:
            if c.clip is None:
                c.clip = float(schedule.get("clip_sample_range", 1.0))
    return calls
    if options.int8_parts or options.image_size:
        raise DmcError("--int8-parts and --size do not apply to a policy")


def policy_recipe(spec, options) -> Recipe:
    """The policy's own sampler (DDPM/DDIM) and ``num_inference_steps``, unless the caller chose them:
    the CLI says so (``sampler_follows_schedule`` / ``steps_follow_model`` True or False); from Python,
    where they are None, a recipe field left at ``Recipe()``'s default follows the policy."""
    recipe, default = options.recipe, Recipe()
    if recipe.guided:
        raise DmcError("a diffusion policy samples without guidance; drop --guidance")

    def follows(flag, value, default_value) -> bool:
        return bool(flag) if flag is not None else value == default_value

    own_sampler = follows(options.sampler_follows_schedule, recipe.sampler, default.sampler)
    own_steps = follows(options.steps_follow_model, recipe.steps, default.steps)
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
        _refuse_unclipped_search(spec, options)
        recipe = policy_recipe(spec, options)
        denoiser = load_denoiser(spec)
        encoder = load_observation_encoder(spec)
        calls = with_noise_levels(clip_like_training(compile_calls(recipe, spec.schedule, denoiser.sample_shape),
                                                     spec.schedule), spec.schedule)
        full = export_onnx(denoiser, denoiser.example_inputs(2), DENOISER_INPUTS, [OUTPUT_NAME], options.opset)
        ctx = _context(spec, denoiser, recipe, calls, full, options)
        verify_obs = None
        if options.passes:
            from dmc.compress.passes import run_passes
            from dmc.compress.plan import complete_plan, with_seed

            ctx.prompt_conditions, verify_obs = calibration_conditions(spec, encoder, options, ctx.warnings)
            run_passes(ctx, with_seed(complete_plan(options.passes), recipe.seed))
            with_noise_levels(clip_like_training(ctx.calls, spec.schedule), spec.schedule)  # a step plan replaces the table
        if options.fidelity_floor is not None:
            ctx.fidelity_floor_psnr = float(options.fidelity_floor)
        obs_example = tuple(torch.randn(2, spec.n_obs_steps, *f.shape) for f in spec.observations)
        graphs = {n: g.onnx for n, g in ctx.graphs.items()}
        graphs[ENCODER_GRAPH] = export_onnx(encoder, obs_example, [f.input_name for f in spec.observations],
                                            [CONDITION], options.opset)
        write_graphs(graphs, writer.root / "graphs", release=True)
        graphs = {n: compact(m) for n, m in graphs.items()}
        if ctx.tables:
            np.savez(writer.root / "tables.npz", **ctx.tables)
        manifest = _manifest(spec, ctx, graphs, encoder)
        manifest["verification"] = _verify(spec, ctx, denoiser, encoder, writer.root, manifest,
                                           options.verify_images, ctx.fidelity_floor_psnr, verify_obs)
        return writer.finish(manifest, {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                        "compile_seconds": round(time.time() - started, 1),
                                        "host": platform.node()})


def with_noise_levels(calls, schedule: dict):
    """Each call's ``(alpha, sigma)`` of ``x_t = alpha x0 + sigma eps`` at its timestep, in ``extra``:
    what ``act(warm_start=k)`` noises the previous plan to before the last ``k`` calls."""
    import inspect

    import diffusers

    cls = getattr(diffusers, schedule["_class_name"])
    accepted = set(inspect.signature(cls.__init__).parameters)
    abar = cls(**{k: v for k, v in schedule.items() if k in accepted}).alphas_cumprod.double().numpy()
    for c in calls:
        a = float(np.interp(c.timestep, np.arange(len(abar)), abar))
        c.extra["noise_level"] = [a ** 0.5, (1 - a) ** 0.5]
    return calls


def _context(spec, denoiser, recipe, calls, full, options):
    """What the compile passes share, with the denoiser as the adapter and the policy as the model."""
    from dmc.compress.context import CompileContext, GraphVariant
    from dmc.models.loading import LoadedModel

    loaded = LoadedModel(denoiser, denoiser.class_name, spec.config, spec.schedule, str(spec.folder),
                         spec.weights, _sha(spec.weights), family=denoiser.family,
                         scheduler_origin=str(spec.folder / "config.json"))
    ctx = CompileContext(loaded, denoiser, recipe, calls, progress=options.progress, device="cpu")
    ctx.graphs["full"] = GraphVariant(full, denoiser, list(DENOISER_INPUTS), [OUTPUT_NAME],
                                      denoiser.describe)
    return ctx


def calibration_conditions(spec, encoder, options, warnings: list):
    """(the denoiser's condition per calibration trajectory, verification observations or None).

    Recorded histories (``--calib-observations``) are split: the last fifth (at least one) is held out
    to verify on, the rest calibrates, so both come from the robot's distribution. Without a file,
    synthetic histories over the normalised range calibrate and verification draws its own."""
    from dmc.policies.conditions import ObservationConditions, read_observations

    path = getattr(options, "calib_observations", None)
    if not path:
        warnings.append("INT8 ranges / cache schedule fitted on synthetic observations (uniform over the "
                        "normalised range); pass --calib-observations FILE.npz recorded on the robot for "
                        "representative trajectories")
        return ObservationConditions(encode(spec, encoder, verification_observations(spec, 64, CALIB_SEED)),
                                     "synthetic"), None
    obs = read_observations(path, spec)
    n = len(next(iter(obs.values())))
    held = max(1, n // 5)
    if n < 2:
        warnings.append(f"{path}: one history only; it both calibrates and verifies")
        return ObservationConditions(encode(spec, encoder, obs), str(path)), obs
    calib = {k: v[: n - held] for k, v in obs.items()}
    return ObservationConditions(encode(spec, encoder, calib), str(path)), {k: v[n - held:] for k, v in obs.items()}


def encode(spec, encoder, obs: dict) -> np.ndarray:
    """Normalised observations through the torch encoder: ``[n, global_cond_dim]``."""
    import torch

    from dmc.runtimes.policy import normalize

    feeds = [torch.from_numpy(normalize(np.asarray(obs[f.key], np.float32), spec.normalization[f.key],
                                        spec.normalization_eps).astype(np.float32)) for f in spec.observations]
    with torch.inference_mode():
        return encoder(*feeds).numpy()


def _manifest(spec, ctx, graphs, encoder) -> dict:
    from dmc.compress.pipeline import artifact_sections

    denoiser = ctx.adapter
    described = {n: (graphs[n], g.computes, g.precision) for n, g in ctx.graphs.items()}
    described[ENCODER_GRAPH] = (graphs[ENCODER_GRAPH], "normalised observation history -> the denoiser's condition",
                                "fp32")
    return {
        "model": {"class": denoiser.class_name, "family": denoiser.family, "architecture": "lerobot-diffusion",
                  "source": str(spec.folder), "source_sha256": ctx.loaded.sha256, "config": spec.config,
                  "parameters": int(sum(p.numel() for p in denoiser.parameters())
                                    + sum(p.numel() for p in encoder.parameters())),
                  "sample_shape": list(denoiser.sample_shape), "conditioning": denoiser.conditioning().to_json(),
                  "config_assumptions": []},
        "policy": spec.section(),
        "recipe": ctx.recipe.to_json(),
        "training_schedule": spec.schedule,
        "training_schedule_origin": str(spec.folder / "config.json"),
        **artifact_sections(ctx, described),
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
    """The uncompressed FP32 torch policy driven by the artifact's sampler loop (every call uncached)."""
    import copy

    data = copy.deepcopy(manifest_data)
    for call in data["sampler"]["calls"]:
        call["graph"] = "full"
        call["extra"] = {k: v for k, v in call.get("extra", {}).items() if k == "noise_level"}
    return _torch_policy(spec, {"full": (denoiser, DENOISER_INPUTS, [OUTPUT_NAME])}, encoder, data)


def scheduled_reference(ctx, spec, encoder, manifest_data: dict):
    """The torch modules of the artifact's own graphs (FP32; each graph's reference where a pass set
    one), on its call table: what verification holds the artifact to, as for image models."""
    graphs = {n: (g.reference if g.reference is not None else g.module, g.input_names, g.output_names)
              for n, g in ctx.graphs.items()}
    return _torch_policy(spec, graphs, encoder, manifest_data, ctx.tables)


def _torch_policy(spec, graphs: dict, encoder, manifest_data: dict, tables: dict | None = None):
    from dmc.artifact.manifest import Manifest
    from dmc.compress.torch_executor import TorchExecutor
    from dmc.runtimes.pipeline import Pipeline

    graphs = {**graphs, ENCODER_GRAPH: (encoder, [f.input_name for f in spec.observations], [CONDITION])}
    executor = TorchExecutor({n: g[0] for n, g in graphs.items()}, {n: list(g[1]) for n, g in graphs.items()},
                             {n: list(g[2]) for n, g in graphs.items()})
    manifest = Manifest(Path("."), {**manifest_data, "tables": None})  # in memory: the tables are given, not read
    pipe = Pipeline.from_manifest(manifest, executor)
    pipe.tables = dict(tables or {})
    return Policy(manifest, pipe)


def _verify(spec, ctx, denoiser, encoder, root: Path, manifest: dict, n: int, floor: float,
            obs: dict | None = None) -> dict:
    """The artifact against the torch modules of its own graphs on its own call table (floor: the
    passes'), and, for information, against the uncompressed FP32 policy. ``obs``: held-out recorded
    histories (else ``n`` synthetic ones)."""
    import json

    from dmc.artifact.writer import MANIFEST
    from dmc.compress.pipeline import check_fidelity
    from dmc.compress.verify_early import paired_psnr
    from dmc.runtimes.executor import cpu_providers, default_backend, open_executor
    from dmc.runtimes.pipeline import Pipeline
    from dmc.runtimes.policy import normalize

    source = "held-out recorded histories" if obs is not None else "synthetic (normalised range)"
    if obs is None:
        obs = verification_observations(spec, n, VERIFY_SEED)
    n = len(next(iter(obs.values())))
    want = scheduled_reference(ctx, spec, encoder, manifest).act(obs, seed=VERIFY_SEED)
    (root / MANIFEST).write_text(json.dumps({"format": "dmc-artifact", "format_version": 1, **manifest, "files": {}}))
    try:
        m = read_manifest(root, verify=False)
        backend = default_backend(m)  # what load() will use: verify that
        executor = open_executor(backend, m, providers=cpu_providers(backend))
        got = Policy(m, Pipeline.from_manifest(m, executor)).act(obs, seed=VERIFY_SEED)
    finally:
        (root / MANIFEST).unlink()
    norm = spec.normalization[spec.action.key]
    ours, theirs = (normalize(a, norm, spec.normalization_eps) for a in (got, want))  # the model's [-1, 1] scale
    if not (np.isfinite(ours).all() and np.isfinite(theirs).all()):
        raise DmcError("verification failed: non-finite actions; nothing was written")
    rmse, psnr = paired_psnr(ours, theirs)
    check_fidelity(psnr, floor)
    result = {"chunks": n, "backend": backend, "rmse": rmse, "psnr_db": min(psnr, 100.0),
              "max_abs_action_error": float(np.abs(got - want).max()), "floor_psnr_db": floor,
              "scale": "normalised actions ([-1, 1])", "reference": "the torch modules of its graphs, same call table",
              "observations": source}
    if ctx.passes:  # what the compression costs against the uncompressed policy
        plain = torch_policy(spec, denoiser, encoder, manifest).act(obs, seed=VERIFY_SEED)
        result["vs_fp32_policy_psnr_db"] = min(paired_psnr(ours, normalize(plain, norm, spec.normalization_eps))[1],
                                               100.0)
    return result
