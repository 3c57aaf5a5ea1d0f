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
from dmc.models import detect, families
from dmc.models.builtin import DEMO_MODELS, SCHEDULER_CONFIG, demo_path
from dmc.models.checkpoint import META_CLASS, META_CONFIG, META_SCHEDULER
from dmc.models.memory import COMPILE_FACTOR, check_memory
from dmc.models.safetensors_file import load_tensors, read_header, refuse_pickle

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SHARD_INDEX = WEIGHTS_NAME + ".index.json"  # the hub's sharded layout (SD3, Flux)
PIPELINE_SUBFOLDERS = ("unet", "transformer")
SCHEDULER_FILE = Path("scheduler") / "scheduler_config.json"


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
    family: str = ""  # dmc.models.families name ("sd", "sdxl", "dit", "pixart", ...)
    scheduler_origin: str | None = None  # where scheduler_config was found (None: not found)


@dataclass
class Source:
    """What a source says before any tensor is read: files, headers, config and family."""

    name: str
    weights: list[Path]  # one file, or the shards of a sharded checkpoint
    shapes: dict[str, tuple]
    metadata: dict
    class_name: str
    config: dict | None  # None: to be inferred from the tensor shapes
    family: "families.Family"

    @property
    def parameters(self) -> int:
        total = 0
        for shape in self.shapes.values():
            n = 1
            for d in shape:
                n *= int(d)
            total += n
        return total


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DmcError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(data, dict):
        raise DmcError(f"{path}: config must be a JSON object")
    return data


def _resolve(source: str) -> tuple[list[Path], Path | None, str]:
    """Return (weights files, config file or None, display name)."""
    if source in DEMO_MODELS:
        path = demo_path(source)
        if not path.exists():
            raise DmcError(f"built-in model {source!r} is missing its weights ({path}); reinstall dmc")
        return [path], None, source
    path = Path(source)
    if not path.exists():
        raise DmcError(f"{source}: no such file or folder (give a diffusers model folder, a .safetensors file, "
                       f"or one of the built-in names {sorted(DEMO_MODELS)})")
    if path.is_dir():
        if not (path / "config.json").exists():
            path = _pipeline_backbone(path)
        config = path / "config.json"
        if not config.exists():
            raise DmcError(f"{path}: folder has no config.json (expected a diffusers model folder with "
                           f"config.json and {WEIGHTS_NAME})")
        return _folder_weights(path), config, str(path)
    refuse_pickle(path)
    if path.suffix.lower() != ".safetensors":
        raise DmcError(f"{path}: unsupported file type {path.suffix!r} (expected .safetensors or a folder)")
    return [path], None, str(path)


def _pipeline_backbone(path: Path) -> Path:
    """The backbone subfolder of a whole pipeline folder, which must say how it was trained to sample."""
    for sub in PIPELINE_SUBFOLDERS:
        if (path / sub / "config.json").exists():
            if not (path / SCHEDULER_FILE).exists():
                raise DmcError(f"{path}: pipeline folder has no {SCHEDULER_FILE.as_posix()}, so its training "
                               "schedule is unknown; add the scheduler folder from the model's repository")
            return path / sub
    return path


def _folder_weights(path: Path) -> list[Path]:
    if (path / WEIGHTS_NAME).exists():
        return [path / WEIGHTS_NAME]
    if (path / SHARD_INDEX).exists():
        index = _read_json(path / SHARD_INDEX)
        shards = list(dict.fromkeys((index.get("weight_map") or {}).values()))
        missing = [s for s in shards if not (path / s).exists()]
        if not shards or missing:
            raise DmcError(f"{path / SHARD_INDEX}: " + (f"shard {missing[0]} is missing" if missing else "no shards"))
        return [path / s for s in shards]
    found = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".safetensors", ".ckpt", ".pt"})
    hint = f"; found {found}" if found else ""
    raise DmcError(f"{path}: no {WEIGHTS_NAME}{hint}")


def _scheduler_config_path(weights: Path) -> Path:
    return weights.parent.parent / "scheduler" / "scheduler_config.json"


def weights_files(source: str) -> list[Path]:
    """The weights file(s) ``source`` names (checked to exist; shards of a sharded checkpoint), unread."""
    return _resolve(source)[0]


def _scheduler_config_near(weights: Path) -> dict | None:
    candidate = _scheduler_config_path(weights)
    return _read_json(candidate) if candidate.exists() else None


def inspect_source(source: str, config_path: str | None = None) -> Source:
    """Resolve ``source`` to its files, config and family from headers and JSON alone (no tensor is read)."""
    weights, config_file, name = _resolve(source)
    shapes, metadata = {}, {}
    for i, path in enumerate(weights):
        header, meta = read_header(path)
        shapes.update({k: tuple(v.get("shape", ())) for k, v in header.items()})
        metadata = metadata if i else meta
    class_name, config = None, None
    if config_path:
        config = _read_json(Path(config_path))
    elif config_file:
        config = _read_json(config_file)
    elif META_CONFIG in metadata:
        config = json.loads(metadata[META_CONFIG])
        class_name = metadata.get(META_CLASS)
    else:
        for sidecar in (weights[0].with_suffix(".json"), weights[0].parent / "config.json"):
            if sidecar.exists():
                config = _read_json(sidecar)
                break
    if config is not None:
        class_name = config.get("_class_name", class_name)
    if class_name is None:
        found = families.detect(shapes)
        if found is None:
            raise DmcError(
                f"{name}: unknown architecture: no config names the class, and the tensor names match none of "
                f"the supported families ({families.supported_classes()}); pass --config CONFIG.json"
            )
        class_name = found.model_class
    if config is not None and not {k for k in config if not k.startswith("_")}:
        config = None
    family = families.resolve(class_name, config or {}, shapes, name)
    return Source(name, weights, shapes, metadata, class_name, config, family)


def load_model(source: str, config_path: str | None = None, memory_factor: float = COMPILE_FACTOR) -> LoadedModel:
    """Load ``source`` (demo name, folder or .safetensors) into an eval-mode diffusers model,
    refusing first one whose compile (peak ``memory_factor`` x its FP32 bytes) would not fit."""
    src = inspect_source(source, config_path)
    name, config, assumptions = src.name, src.config, []
    class_name = src.family.model_class
    if config is None:
        if class_name not in detect.INFER:
            raise DmcError(f"{name}: found a {class_name} but no config; pass --config CONFIG.json")
        try:
            found = detect.INFER[class_name](src.shapes)
        except (KeyError, IndexError, StopIteration) as e:
            raise DmcError(f"{name}: looks like a {class_name} but its config could not be inferred "
                           f"(missing {e}); pass --config CONFIG.json") from None
        config, assumptions = found.config, found.assumptions
        for a in assumptions:
            warnings.warn(f"{name}: config inferred from tensor shapes, assuming {a}", stacklevel=2)
    check_memory(src.parameters, name, memory_factor)
    state, metadata = {}, src.metadata
    for path in src.weights:
        state.update(load_tensors(path)[0])
    check_finite_weights(state, name)
    model = _instantiate(class_name, config, state, name)
    weights = src.weights[0]
    if source in DEMO_MODELS:  # the demo's schedule is defined in code, not in the file
        scheduler, origin = dict(SCHEDULER_CONFIG), f"built-in {source} schedule"
    elif META_SCHEDULER in metadata:
        scheduler, origin = json.loads(metadata[META_SCHEDULER]), f"{META_SCHEDULER} metadata of {weights.name}"
    else:
        scheduler, origin = _scheduler_config_near(weights), str(_scheduler_config_path(weights))
    clean = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    return LoadedModel(model, class_name, clean, scheduler, name, weights, _weights_sha256(src.weights),
                       assumptions, src.family.name, origin if scheduler is not None else None)


def _weights_sha256(paths: list[Path]) -> str:
    """One file's sha256, or a digest over the shards' digests."""
    import hashlib

    if len(paths) == 1:
        return sha256_path(paths[0])
    return hashlib.sha256("".join(sha256_path(p) for p in paths).encode()).hexdigest()


def source_sha256(source: str) -> str:
    """The digest ``load_model(source)`` records, without loading the model."""
    return _weights_sha256(_resolve(source)[0])


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
            # built on the meta device: no random init of weights that are replaced at once (a second
            # full copy of the model, and half a minute of init at SD size)
            with torch.device("meta"):
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
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):  # non-persistent buffers: build for real
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls.from_config(kwargs)
        model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
    return model.eval().requires_grad_(False)
