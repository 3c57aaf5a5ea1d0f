"""dmc's own safetensors convention: the diffusers class and config ride in the metadata."""

from __future__ import annotations

import json
import os
from pathlib import Path

META_CLASS = "dmc.class"
META_CONFIG = "dmc.config"
META_SCHEDULER = "dmc.scheduler"


def save_model(model, path: str | os.PathLike, scheduler_config: dict | None = None) -> None:
    """Write ``model``'s weights with its class, config and training schedule as metadata."""
    from safetensors.torch import save_file

    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    metadata = {META_CLASS: type(model).__name__, META_CONFIG: json.dumps(config, default=list)}
    if scheduler_config:
        metadata[META_SCHEDULER] = json.dumps(scheduler_config)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
