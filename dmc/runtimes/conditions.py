"""Feeding an artifact's conditioning inputs (numpy only).

The manifest's ``model.conditioning.inputs`` lists every conditioning graph input: ``name``,
per-image ``shape``, ``dtype``, ``default`` (fed when the caller gives nothing; null = zeros) and
``uncond`` (what the unconditional half of a guided batch gets when the caller gives nothing:
``zeros``, ``same`` as the conditional value, or ``null_class``). Manifests written before that
key existed are read from ``kind`` (``class`` -> ``class_labels``, ``embedding`` ->
``encoder_hidden_states``).
"""

from __future__ import annotations

import numpy as np

from dmc.errors import DmcError


def cond_inputs(cond: dict) -> list[dict]:
    if cond.get("inputs") is not None:
        return list(cond["inputs"])
    if cond["kind"] == "class":
        return [{"name": "class_labels", "shape": [], "dtype": "int64", "uncond": "null_class", "default": None}]
    if cond["kind"] == "embedding":
        return [{"name": "encoder_hidden_states", "shape": list(cond["embedding_shape"]), "dtype": "float32",
                 "uncond": "zeros", "default": None}]
    return []


def _per_image(spec: dict, n: int, value, what: str) -> np.ndarray:
    shape = tuple(spec["shape"])
    arr = np.asarray(value, dtype=spec["dtype"])
    if arr.ndim == 0 or arr.shape == shape:
        arr = np.broadcast_to(arr, (n, *shape))  # one value for every image
    if arr.shape != (n, *shape):
        want = ", ".join(str(d) for d in (n, *shape))
        raise DmcError(f"{what} {spec['name']!r} must have shape [{want}] (or [{want.split(', ', 1)[-1]}] for "
                       f"every image), got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


def condition_feeds(cond: dict, n: int, conditions: dict | None, uncond_conditions: dict | None,
                    skip: tuple[str, ...] = ("class_labels",)) -> tuple[dict, dict]:
    """``(conditional, unconditional)`` feeds ``{name: [n, *shape]}`` for every non-label input."""
    specs = [s for s in cond_inputs(cond) if s["name"] not in skip]
    known = {s["name"] for s in specs}
    for given, what in ((conditions, "conditions"), (uncond_conditions, "uncond_conditions")):
        unknown = sorted(set(given or {}) - known)
        if unknown:
            raise DmcError(f"this model takes no input {unknown[0]!r} in {what} "
                           f"(it takes: {', '.join(sorted(known)) or 'none'})")
    feeds, unfeeds = {}, {}
    for spec in specs:
        name = spec["name"]
        if conditions and conditions.get(name) is not None:
            feeds[name] = _per_image(spec, n, conditions[name], "condition")
        else:
            default = 0 if spec.get("default") is None else spec["default"]
            feeds[name] = _per_image(spec, n, default, "default of")
        if uncond_conditions and uncond_conditions.get(name) is not None:
            unfeeds[name] = _per_image(spec, n, uncond_conditions[name], "unconditional value")
        elif spec.get("uncond") == "same":
            unfeeds[name] = feeds[name]
        else:
            unfeeds[name] = np.zeros_like(feeds[name])
    return feeds, unfeeds
