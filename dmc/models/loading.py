"""Load a diffusion backbone from a diffusers folder, a bare ``.safetensors`` or a demo name.

Nothing here unpickles: weights come only from safetensors, configs only from JSON.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from dmc.artifact.manifest import sha256_path
from dmc.errors import DmcError
from dmc.models import detect
from dmc.models.builtin import DEMO_MODELS, SCHEDULER_CONFIG, demo_path
from dmc.models.checkpoint import META_CLASS, META_CONFIG, META_SCHEDULER
from dmc.models.safetensors_file import load_tensors, refuse_pickle

SUPPORTED = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PIPELINE_SUBFOLDERS = ("unet", "transformer")


@dataclass
class LoadedModel:
    model: object  # a diffusers ModelMixin in eval mode
    class_name: str
    config: dict
    scheduler_config: dict | None
    source: str
    weights_path: Path
    sha256: str
    assumptions: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DmcError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise DmcError(f"{path}: config must be a JSON object")
    return data


def _resolve(source: str) -> tuple[Path, Path | None, str]:
    """Return (weights file, config file or None, display name)."""
    if source in DEMO_MODELS:
        path = demo_path(source)
        if not path.exists():
            raise DmcError(f"built-in model {source!r} is missing its weights ({path}); reinstall dmc")
        return path, None, source
    path = Path(source)
    if not path.exists():
        raise DmcError(f"{source}: no such file or folder (give a diffusers model folder, a .safetensors file, "
                       f"or one of the built-in names {sorted(DEMO_MODELS)})")
    if path.is_dir():
        for sub in PIPELINE_SUBFOLDERS:  # a whole pipeline folder: take its backbone
            if (path / sub / "config.json").exists() and not (path / "config.json").exists():
                path = path / sub
        config = path / "config.json"
        if not config.exists():
            raise DmcError(f"{path}: folder has no config.json (expected a diffusers model folder with "
                           f"config.json and {WEIGHTS_NAME})")
        weights = path / WEIGHTS_NAME
        if not weights.exists():
            found = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".safetensors", ".ckpt", ".pt"})
            hint = f"; found {found}" if found else ""
            raise DmcError(f"{path}: no {WEIGHTS_NAME}{hint}")
        return weights, config, str(path)
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise DmcError(f"{path}: unsupported file type {path.suffix!r} (expected .safetensors or a folder)")
    return path, None, str(path)


def weights_file(source: str) -> Path:
    """The weights file ``source`` names (checked to exist), without loading it."""
    return _resolve(source)[0]


def _scheduler_config_near(weights: Path) -> dict | None:
    candidate = weights.parent.parent / "scheduler" / "scheduler_config.json"
    return _read_json(candidate) if candidate.exists() else None


def load_model(source: str, config_path: str | None = None) -> LoadedModel:
    """Load ``source`` (demo name, folder or .safetensors) into an eval-mode diffusers model."""
    weights, config_file, name = _resolve(source)
    state, metadata = load_tensors(weights)
    assumptions: list[str] = []
    class_name, config = None, None
    if config_path:
        config = _read_json(Path(config_path))
    elif config_file:
        config = _read_json(config_file)
    elif META_CONFIG in metadata:
        config = json.loads(metadata[META_CONFIG])
        class_name = metadata.get(META_CLASS)
    else:
        for sidecar in (weights.with_suffix(".json"), weights.parent / "config.json"):
            if sidecar.exists():
                config = _read_json(sidecar)
                break
    if config is not None:
        class_name = config.get("_class_name", class_name)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if class_name is None:
        class_name = detect.detect_class(shapes)
        if class_name is None:
            raise DmcError(
                f"{name}: unknown architecture: no config names the class, and the tensor names match none of "
                f"{', '.join(SUPPORTED)} (tried metadata, a sidecar .json/config.json, and name detection); "
                "pass --config CONFIG.json"
            )
    if class_name not in SUPPORTED:
        raise DmcError(f"{name}: architecture {class_name!r} is not supported yet (supported: {', '.join(SUPPORTED)})")
    if config is None or not {k for k in config if not k.startswith("_")}:
        if class_name not in detect.INFER:
            raise DmcError(f"{name}: found a {class_name} but no config; pass --config CONFIG.json")
        try:
            found = detect.INFER[class_name](shapes)
        except (KeyError, IndexError, StopIteration) as e:
            raise DmcError(f"{name}: looks like a {class_name} but its config could not be inferred "
                           f"(missing {e}); pass --config CONFIG.json") from None
        config, assumptions = found.config, found.assumptions
        for a in assumptions:
            warnings.warn(f"{name}: config inferred from tensor shapes, assuming {a}", stacklevel=2)
    check_finite_weights(state, name)
    model = _instantiate(class_name, config, state, name)
    if source in DEMO_MODELS:  # the demo's schedule is defined in code, not in the file
        scheduler = dict(SCHEDULER_CONFIG)
    elif META_SCHEDULER in metadata:
        scheduler = json.loads(metadata[META_SCHEDULER])
    else:
        scheduler = _scheduler_config_near(weights)
    clean = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return LoadedModel(model, class_name, clean, scheduler, name, weights, sha256_path(weights), assumptions)


def check_finite_weights(state: dict, name: str) -> None:
    """NaN/inf weights compile to an artifact that samples NaN: refuse them, naming the tensors."""
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise DmcError(f"{name}: non-finite (NaN or inf) weights in tensor {bad[0]}{more}; the checkpoint is corrupt")


def _instantiate(class_name: str, config: dict, state: dict, name: str):
    import diffusers
    import torch

    cls = getattr(diffusers, class_name)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_config(kwargs)
    except Exception as e:
        raise DmcError(f"{name}: config is not valid for {class_name} ({e})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with wrong shapes (e.g. {k}: file {got[k]}, config {expected[k]})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise DmcError(f"{name}: tensors do not match the {class_name} config: " + "; ".join(parts))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval().requires_grad_(False)
