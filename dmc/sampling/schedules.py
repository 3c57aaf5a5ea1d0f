"""The training schedule a model was trained with: found next to it, given as a file, or named.

It is never guessed. A pipeline folder's ``scheduler/scheduler_config.json`` (or dmc's own
safetensors metadata, or a built-in demo's schedule) is used as is; a bare model needs
``--scheduler-config FILE`` or ``--scheduler-preset NAME``; with neither, dmc refuses.
"""

from __future__ import annotations

import json
from pathlib import Path

from dmc.errors import DmcError

_SD = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
       "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading"}

# The schedulers the published hub repositories ship (scheduler/scheduler_config.json), as data.
PRESETS: dict[str, dict] = {
    "sd15": {"_class_name": "PNDMScheduler", **_SD, "prediction_type": "epsilon", "skip_prk_steps": True},
    "sd2-base": {"_class_name": "DDIMScheduler", **_SD, "prediction_type": "epsilon"},
    "sd2-v": {"_class_name": "DDIMScheduler", **_SD, "prediction_type": "v_prediction"},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", **_SD, "prediction_type": "epsilon",
             "interpolation_type": "linear", "use_karras_sigmas": False},
    "dit": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
            "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "clip_sample": False,
            "set_alpha_to_one": True, "steps_offset": 0},
    "pixart": {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
               "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon", "steps_offset": 0,
               "timestep_spacing": "linspace"},
    "sd3": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0},
    "flux": {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
             "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
             "max_image_seq_len": 4096},
    "ddpm-linear": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
                    "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "epsilon"},
    "ddpm-cosine": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                    "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"},
}

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")


def family(schedule: dict) -> str:
    """'flow' for rectified-flow schedules (SD3, Flux), else 'diffusion'."""
    flow = (str(schedule.get("_class_name", "")).startswith("FlowMatch")
            or schedule.get("prediction_type") == "flow_prediction" or bool(schedule.get("use_flow_sigmas")))
    return "flow" if flow else "diffusion"


def check(schedule: dict, origin: str) -> dict:
    """Refuse what the compiled samplers cannot honour, before any work is done."""
    if family(schedule) == "diffusion":
        beta = schedule.get("beta_schedule", "linear")
        if beta not in BETA_SCHEDULES and schedule.get("trained_betas") is None:
            raise DmcError(f"{origin}: beta_schedule {beta!r} is not supported (supported: {', '.join(BETA_SCHEDULES)})")
        kind = schedule.get("prediction_type", "epsilon")
        if kind not in PREDICTION_TYPES[:3]:
            raise DmcError(f"{origin}: prediction_type {kind!r} is not supported "
                           f"(supported: {', '.join(PREDICTION_TYPES[:3])}, or a FlowMatch scheduler)")
    if schedule.get("thresholding"):
        raise DmcError(f"{origin}: dynamic thresholding is not supported by the compiled samplers")
    return schedule


def read_schedule_file(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DmcError(f"--scheduler-config {path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise DmcError(f"--scheduler-config {path}: must be a JSON object (a diffusers scheduler_config.json)")
    return data


def resolve(source: str, found: dict | None, found_origin: str | None,
            config_file: str | None = None, preset: str | None = None) -> tuple[dict, str]:
    """(training schedule, where it came from). An explicit file or preset wins over one found."""
    if config_file and preset:
        raise DmcError("give either --scheduler-config or --scheduler-preset, not both")
    if preset:
        if preset not in PRESETS:
            raise DmcError(f"unknown --scheduler-preset {preset!r} (choose from {', '.join(PRESETS)})")
        schedule, origin = dict(PRESETS[preset]), f"preset {preset}"
    elif config_file:
        schedule, origin = read_schedule_file(config_file), f"file {config_file}"
    elif found is not None:
        schedule, origin = dict(found), found_origin or "found with the model"
    else:
        raise DmcError(f"{source}: no training schedule (no scheduler/scheduler_config.json beside the model); "
                       f"pass --scheduler-config FILE or --scheduler-preset NAME ({', '.join(PRESETS)})")
    if found is not None and (config_file or preset):
        origin += f" (overrides the one {found_origin or 'found with the model'})"
    return check(schedule, origin), origin
