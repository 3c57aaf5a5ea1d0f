"""Calibration observations for a policy's INT8 pass: recorded ones from a file, encoded per trajectory.

``--calib-observations FILE.npz``: one array per observation key, ``[N, n_obs_steps, *shape]`` in the
robot's units (as ``act`` takes them; images in [0, 1]), e.g. histories saved while the robot ran the
FP32 policy. Read with ``allow_pickle=False``. Calibration trajectory ``i`` is conditioned on
history ``i mod N``, as the text-to-image pipelines use their calibration prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmc.errors import DmcError


def read_observations(path: str | Path, spec) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: np.asarray(npz[k], dtype=np.float32) for k in npz.files}
    except (OSError, ValueError) as e:
        raise DmcError(f"{path}: not a readable .npz of observations ({e})") from None
    n = None
    for f in spec.observations:
        if f.key not in data:
            raise DmcError(f"{path}: no array {f.key!r} (the policy observes: "
                           f"{', '.join(o.key for o in spec.observations)})")
        want = (spec.n_obs_steps, *f.shape)
        if data[f.key].ndim != len(want) + 1 or data[f.key].shape[1:] != want:
            raise DmcError(f"{path}: {f.key!r} must be [N, {', '.join(map(str, want))}], got {list(data[f.key].shape)}")
        if n is not None and len(data[f.key]) != n:
            raise DmcError(f"{path}: every observation array must hold the same number of histories")
        n = len(data[f.key])
        if not np.isfinite(data[f.key]).all():
            raise DmcError(f"{path}: {f.key!r} contains NaN or inf")
    if not n:
        raise DmcError(f"{path}: holds no observation histories")
    return {f.key: data[f.key] for f in spec.observations}


class ObservationConditions:
    """``global_cond`` per calibration trajectory (the compile context's ``prompt_conditions`` role)."""

    def __init__(self, global_cond: np.ndarray, source: str):
        self.global_cond = np.asarray(global_cond, dtype=np.float32)
        self.source = source

    def for_images(self, first: int, n: int) -> tuple[dict, None]:
        idx = (first + np.arange(n)) % len(self.global_cond)
        return {"global_cond": np.ascontiguousarray(self.global_cond[idx])}, None

    def wrap(self, pipe):
        """``pipe`` whose ``sample`` conditions image ``i`` on history ``i`` when given no conditions."""
        from dmc.export.pipeline_parts import with_conditions

        return with_conditions(pipe, self)

    def to_json(self) -> dict:
        return {"histories": len(self.global_cond), "source": self.source}
