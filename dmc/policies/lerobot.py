"""LeRobot's saved policy layout, read without LeRobot (JSON and safetensors only, nothing unpickled).

A folder written by ``policy.save_pretrained`` (and the processors' ``save_pretrained``) holds:

- ``config.json``: ``"type": "diffusion"``, ``input_features`` / ``output_features`` (type and
  shape per key), ``normalization_mapping`` (mode per feature type), ``horizon``,
  ``n_obs_steps``, ``n_action_steps``, the UNet's sizes and the noise scheduler
  (``noise_scheduler_type`` DDPM or DDIM, its betas, ``clip_sample``, ``prediction_type``,
  ``num_inference_steps``);
- ``model.safetensors``: the weights under ``diffusion.``;
- the normalisation statistics: LeRobot >= 0.4 saves them beside the processor pipelines
  (``policy_preprocessor.json`` names ``policy_preprocessor_step_N_normalizer_processor.safetensors``,
  keys ``<feature>.<stat>``); earlier versions kept them in ``model.safetensors`` as
  ``normalize_inputs.buffer_<feature with _ for .>.<stat>`` buffers. Both are read.

Nothing is guessed: a missing statistic, scheduler field or unsupported feature is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dmc.errors import DmcError
from dmc.models.safetensors_file import read_header, refuse_pickle

POLICY_TYPES = ("diffusion",)
# config.json's "noise_net" (a dmc extension; LeRobot itself ships the UNet only) -> the weights' key
# prefix and the config keys its architecture needs. "transformer" is Diffusion Policy's DP-T
# (``TransformerForDiffusion``), saved in LeRobot's layout under ``diffusion.transformer.``.
@dataclass(frozen=True)
class NoiseNetLayout:
    prefix: str
    needs: tuple[str, ...]  # config keys without a default
    only: dict = field(default_factory=dict)  # config key -> the one value dmc implements


NOISE_NETS = {"unet": NoiseNetLayout("diffusion.unet.", ("down_dims",)),
              "transformer": NoiseNetLayout("diffusion.transformer.", ("n_layer", "n_head", "n_emb"),
                                            {"n_cond_layers": 0, "time_as_cond": True, "obs_as_cond": True})}
WEIGHTS = "model.safetensors"
PREPROCESSOR = "policy_preprocessor.json"
STATS_OF_MODE = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"),
                 "QUANTILE10": ("q10", "q90"), "IDENTITY": ()}
# LeRobot's defaults for keys an older config may lack (configuration_diffusion.py)
SCHEDULER_DEFAULTS = {"noise_scheduler_type": "DDPM", "num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2",
                      "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": True,
                      "clip_sample_range": 1.0}
STATE, ENV, VISUAL = "observation.state", "observation.environment_state", "VISUAL"


@dataclass
class Feature:
    key: str
    type: str  # LeRobot's FeatureType: STATE, ENV, VISUAL, ACTION
    shape: tuple[int, ...]

    @property
    def input_name(self) -> str:
        return self.key  # the encoder graph's input keeps the feature's own name

    def to_json(self) -> dict:
        return {"key": self.key, "type": self.type, "shape": list(self.shape), "input": self.input_name}


@dataclass
class PolicySpec:
    """What a LeRobot diffusion policy folder says, checked."""

    folder: Path
    config: dict
    observations: list[Feature]  # in the order LeRobot concatenates them: state, (images), environment
    action: Feature
    normalization: dict[str, dict]  # feature key -> {"mode": ..., stat: list}
    normalization_eps: float
    stats_origin: str
    weights: Path
    schedule: dict = field(default_factory=dict)  # a diffusers scheduler config

    @property
    def horizon(self) -> int:
        return int(self.config["horizon"])

    @property
    def n_obs_steps(self) -> int:
        return int(self.config["n_obs_steps"])

    @property
    def n_action_steps(self) -> int:
        return int(self.config["n_action_steps"])

    @property
    def sampler(self) -> str:
        return self.schedule["_class_name"][: -len("Scheduler")].lower()  # "ddpm" | "ddim"

    @property
    def inference_steps(self) -> int:
        steps = self.config.get("num_inference_steps")
        return int(steps) if steps else int(self.schedule["num_train_timesteps"])

    @property
    def noise_net(self) -> str:
        return str(self.config.get("noise_net", "unet"))

    @property
    def images(self) -> list[Feature]:
        return [f for f in self.observations if f.type == VISUAL]

    @property
    def image_feature_dim(self) -> int:
        return 2 * int(self.config.get("spatial_softmax_num_keypoints", 32))

    @property
    def global_cond_dim(self) -> int:
        per_step = sum(self.image_feature_dim if f.type == VISUAL else int(np.prod(f.shape)) for f in self.observations)
        return self.n_obs_steps * per_step

    def section(self) -> dict:
        """The manifest's ``policy`` section (the runtime's contract, ``dmc.runtimes.policy``)."""
        return {"type": self.config["type"], "source_format": "lerobot", "horizon": self.horizon,
                "n_obs_steps": self.n_obs_steps, "n_action_steps": self.n_action_steps,
                "observations": [f.to_json() for f in self.observations], "action": self.action.to_json(),
                "normalization": self.normalization, "normalization_eps": self.normalization_eps,
                "normalization_origin": self.stats_origin, "noise_scheduler": self.schedule,
                "inference_steps": self.inference_steps}


# the built-in demo policy: trained by scripts/train_demo_policy.py on dmc.policies.demo_task
BUILTIN_POLICIES = {"demo-policy": Path(__file__).parent / "weights" / "demo_policy"}


def policy_folder(source: str | Path) -> Path:
    """A built-in policy's name, or a folder."""
    return BUILTIN_POLICIES.get(str(source), Path(source))


def is_lerobot_policy(source: str) -> bool:
    """Does ``source`` name a folder saved by LeRobot's ``policy.save_pretrained`` (or a built-in policy)?"""
    path = policy_folder(source)
    if not (path.is_dir() and (path / "config.json").is_file() and (path / WEIGHTS).is_file()):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "type" in config and "input_features" in config


def _features(config: dict, which: str) -> list[Feature]:
    raw = config.get(which) or {}
    if not isinstance(raw, dict):
        raise DmcError(f"config.json: {which} must be an object")
    return [Feature(k, str(v.get("type")), tuple(int(d) for d in v.get("shape", ()))) for k, v in raw.items()]


def _stats_from_processor(folder: Path) -> tuple[dict[str, dict[str, np.ndarray]], float] | None:
    path = folder / PREPROCESSOR
    if not path.exists():
        return None
    steps = json.loads(path.read_text()).get("steps", [])
    step = next((s for s in steps if s.get("registry_name") == "normalizer_processor"), None)
    if step is None or not step.get("state_file"):
        return None
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, value in _read_arrays(folder / step["state_file"]).items():
        feature, _, stat = key.rpartition(".")
        stats.setdefault(feature, {})[stat] = value
    return stats, float(step.get("config", {}).get("eps", 1e-8))


def _stats_from_buffers(weights: Path, features: list[Feature]) -> dict[str, dict[str, np.ndarray]]:
    """LeRobot < 0.4: ``normalize_inputs.buffer_observation_state.min`` and the like, in the weights."""
    arrays = {k: v for k, v in _read_arrays(weights).items()
              if k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."))}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for f in features:
        flat = "buffer_" + f.key.replace(".", "_")
        for key, value in arrays.items():
            module, buffer, stat = key.split(".", 2) if key.count(".") >= 2 else (key, "", "")
            if buffer == flat:
                stats.setdefault(f.key, {}).setdefault(stat, value)
    return stats


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    refuse_pickle(path)
    return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}


def _check_vision(folder: Path, config: dict, images: list[Feature]) -> None:
    from dmc.policies.vision import BLOCKS

    backbone = config.get("vision_backbone", "resnet18")
    if backbone not in BLOCKS:
        raise DmcError(f"{folder}: vision_backbone {backbone!r} is not supported (supported: {', '.join(BLOCKS)})")
    if config.get("resize_shape"):
        raise DmcError(f"{folder}: resize_shape is not supported yet (its antialiased resize is not exported); "
                       "only crop_shape")
    if len({f.shape for f in images}) != 1 or len(images[0].shape) != 3:
        raise DmcError(f"{folder}: every camera must give [C, H, W] images of one shape")


def read_policy_config(source: str | Path) -> PolicySpec:
    """The spec from config and statistics alone (a folder whose weights are still to be written)."""
    return read_policy(source, weights=False)


def read_policy(source: str | Path, weights: bool = True) -> PolicySpec:
    """The checked spec of a LeRobot policy folder (refuses what dmc cannot compile, in one line)."""
    folder = policy_folder(source)
    config = json.loads((folder / "config.json").read_text())
    if config.get("type") not in POLICY_TYPES:
        raise DmcError(f"{folder}: LeRobot policy type {config.get('type')!r} is not supported "
                       f"(supported: {', '.join(POLICY_TYPES)})")
    inputs, outputs = _features(config, "input_features"), _features(config, "output_features")
    images = [f for f in inputs if f.type == VISUAL]
    if images:
        _check_vision(folder, config, images)
    by_key = {f.key: f for f in inputs}
    if STATE not in by_key:
        raise DmcError(f"{folder}: a diffusion policy needs {STATE!r} among its input_features")
    others = sorted(set(by_key) - {STATE, ENV} - {f.key for f in images})
    if others:
        raise DmcError(f"{folder}: input feature {others[0]!r} is not one a diffusion policy uses "
                       f"({STATE}, {ENV}, images)")
    # LeRobot's order of the condition: state, each camera's features, environment state
    observations = [by_key[STATE]] + images + ([by_key[ENV]] if ENV in by_key else [])
    actions = [f for f in outputs if f.key == "action"]
    if len(actions) != 1 or len(actions[0].shape) != 1:
        raise DmcError(f"{folder}: output_features must hold one 'action' vector")
    net = config.get("noise_net", "unet")
    if net not in NOISE_NETS:
        raise DmcError(f"{folder}: noise_net {net!r} is not supported (supported: {', '.join(NOISE_NETS)})")
    layout = NOISE_NETS[net]
    for key in ("horizon", "n_obs_steps", "n_action_steps", *layout.needs):
        if key not in config:
            raise DmcError(f"{folder}: config.json has no {key!r}")
    for key, value in layout.only.items():
        if key in config and config[key] != value:
            raise DmcError(f"{folder}: {key}={config[key]!r} is not supported for a {net} policy (only {value!r})")
    cfg = {**SCHEDULER_DEFAULTS, **config}
    kind = cfg["noise_scheduler_type"]
    if kind not in ("DDPM", "DDIM"):
        raise DmcError(f"{folder}: noise_scheduler_type {kind!r} is not supported (DDPM or DDIM)")
    schedule = {"_class_name": f"{kind}Scheduler", **{k: cfg[k] for k in (
        "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "clip_sample", "clip_sample_range",
        "prediction_type")}}
    path = folder / WEIGHTS
    found = _stats_from_processor(folder)
    if found is not None:
        stats, eps, origin = *found, PREPROCESSOR
    elif weights:
        stats, eps, origin = _stats_from_buffers(path, observations + actions), 1e-8, f"{WEIGHTS} buffers"
    else:
        raise DmcError(f"{folder}: no {PREPROCESSOR} with the normaliser's statistics")
    modes = config.get("normalization_mapping") or {}
    normalization = {}
    for f in observations + actions:
        mode = modes.get(f.type, "IDENTITY")
        if mode not in STATS_OF_MODE:
            raise DmcError(f"{folder}: normalization mode {mode!r} of {f.key} is not supported")
        need = STATS_OF_MODE[mode]
        have = stats.get(f.key, {})
        lacking = [s for s in need if s not in have]
        if lacking:
            raise DmcError(f"{folder}: no {lacking[0]!r} statistic for {f.key} ({mode} normalisation); "
                           f"looked in {origin}")
        # image statistics are per channel ([C, 1, 1]) and broadcast; the others have the feature's shape
        keep = (lambda a: a) if f.type == VISUAL else (lambda a, shape=f.shape: a.reshape(shape))
        normalization[f.key] = {"mode": mode, **{s: keep(have[s]).tolist() for s in need}}
    if weights:
        header, _ = read_header(path)
        if not any(k.startswith(layout.prefix) for k in header):
            raise DmcError(f"{folder}: {WEIGHTS} holds no {layout.prefix}* weights")
    return PolicySpec(folder, config, observations, actions[0], normalization, eps, origin, path, schedule)
