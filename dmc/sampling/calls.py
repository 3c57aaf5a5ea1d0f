"""One row per model call and the numpy update that follows it.

Every deterministic sampler dmc compiles reduces to, per call k with model output ``out``::

    D   = d_x * x + d_out * out          # data prediction (x0), optionally clipped
    eps = e_x * x + e_out * out          # noise prediction
    x'  = a * x + b * eps + sum_j c[j] * D_{k-j}

so the runtime needs only these coefficients (derived from diffusers' schedulers at
compile time, see ``dmc.sampling.compile``) and numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class SamplerCall:
    timestep: float  # the native timestep fed to the network
    d_x: float
    d_out: float
    e_x: float
    e_out: float
    a: float
    b: float
    c: list[float]  # weights of D_k, D_{k-1}, ...
    clip: float | None = None  # clamp D to [-clip, clip] (DDIM's clip_sample)
    graph: str = "full"  # which graph variant runs this call
    extra: dict = field(default_factory=dict)  # columns added by passes (cache reads/writes, scale group)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "SamplerCall":
        return cls(**d)


def sampler_update(call: SamplerCall, x: np.ndarray, out: np.ndarray, history: list) -> np.ndarray:
    """Advance ``x`` by one call. ``history`` holds earlier data predictions, newest first, and is updated.

    Computed in float64: at the noisiest call of a cosine schedule d_x is ~2e4, and the
    cancellation in ``d_x * x + d_out * out`` would cost float32 its last digits.
    """
    x, out = x.astype(np.float64), out.astype(np.float64)
    d = call.d_x * x + call.d_out * out
    if call.clip is not None:
        d = np.clip(d, -call.clip, call.clip)
    history.insert(0, d)
    del history[len(call.c):]
    x_next = call.a * x
    if call.b:
        x_next = x_next + call.b * (call.e_x * x + call.e_out * out)
    for c, dj in zip(call.c, history):
        if c:
            x_next = x_next + c * dj
    return x_next.astype(np.float32, copy=False)


def initial_noise(seed: int, n: int, shape: tuple[int, ...], first: int = 0) -> np.ndarray:
    """x_T for images ``first .. first+n-1``: image i always gets the same noise for a seed,
    so shards, subsets and reruns of one seed agree."""
    return np.stack([
        np.random.default_rng([seed, first + i]).standard_normal(shape, dtype=np.float32)
        for i in range(n)
    ])


def default_labels(n: int, num_classes: int, first: int = 0) -> np.ndarray:
    """Class labels cycling 0..num_classes-1, so a grid shows every class."""
    return (np.arange(first, first + n) % max(num_classes, 1)).astype(np.int64)


def guide(out: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Combine a doubled batch laid out [unconditional; conditional]."""
    uncond, cond = out[:n], out[n:]
    return uncond + scale * (cond - uncond)
