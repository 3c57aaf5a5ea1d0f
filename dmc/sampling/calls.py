"""One row per model call and the numpy update that follows it.

Every deterministic sampler dmc compiles reduces to, per call k with model output ``out``::

    D   = d_x * x + d_out * out          # data prediction (x0), optionally clipped
    eps = e_x * x + e_out * out          # noise prediction
    x'  = a * x + b * eps + o * out + sum_j c[j] * D_{k-j}
          + sum_j x_hist[j] * x_{k-1-j} + sum_j out_hist[j] * out_{k-1-j}
          + noise * z_k                  # ancestral samplers (DDPM): z_k ~ N(0, 1), seeded per image

and the network sees ``scale_in * x``. The runtime needs only these coefficients (derived
from diffusers' schedulers at compile time, see ``dmc.sampling.compile``) and numpy. The
history terms carry multistep and restarting solvers (DEIS/PLMS use earlier outputs, Heun
and PRK restart from an earlier state); tables written before they existed leave them
empty and run unchanged.
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
    o: float = 0.0  # weight of this call's (guided) output itself
    x_hist: list[float] = field(default_factory=list)  # weights of x_{k-1}, x_{k-2}, ... (earlier call inputs)
    out_hist: list[float] = field(default_factory=list)  # weights of out_{k-1}, out_{k-2}, ...
    scale_in: float = 1.0  # the network's sample input is scale_in * x (diffusers' scale_model_input)
    # per-channel terms (DPM-Solver-v3): {"a": [C], "c": [[C]..], "x_hist": [[C]..], "bias": [C]},
    # added to the scalar ones and broadcast over the sample's channel axis (axis 1)
    channel: dict | None = None
    noise: float = 0.0  # std of the fresh noise this call adds (DDPM's posterior std; 0: deterministic)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "SamplerCall":
        return cls(**d)


KEEP_HISTORY = 1  # at least the current call; tables pad their rows for what later rows reach back to


def sampler_update(call: SamplerCall, x: np.ndarray, out: np.ndarray, history: list,
                   z: np.ndarray | None = None) -> np.ndarray:
    """Advance ``x`` by one call. ``history`` holds ``(x, out, D)`` of earlier calls, newest first, and is
    updated; callers only create it empty and pass it back. ``z`` is the call's fresh noise
    (``step_noise``), needed only where ``call.noise`` is not 0.

    Computed in float64: at the noisiest call of a cosine schedule d_x is ~2e4, and the
    cancellation in ``d_x * x + d_out * out`` would cost float32 its last digits.
    """
    dtype = np.float64 if x.dtype == np.float64 else np.float32  # float32 at run time; float64 for analysis
    x, out = x.astype(np.float64), out.astype(np.float64)
    d = call.d_x * x + call.d_out * out
    if call.clip is not None:
        d = np.clip(d, -call.clip, call.clip)
    history.insert(0, (x, out, d))
    del history[max(KEEP_HISTORY, len(call.c), len(call.x_hist) + 1, len(call.out_hist) + 1):]
    x_next = call.a * x
    if call.b:
        x_next = x_next + call.b * (call.e_x * x + call.e_out * out)
    if call.o:
        x_next = x_next + call.o * out
    for c, (_, _, dj) in zip(call.c, history):
        if c:
            x_next = x_next + c * dj
    for w, (xj, _, _) in zip(call.x_hist, history[1:]):
        if w:
            x_next = x_next + w * xj
    for w, (_, oj, _) in zip(call.out_hist, history[1:]):
        if w:
            x_next = x_next + w * oj
    if call.channel:
        x_next = x_next + _channel_terms(call.channel, x, history)
    if call.noise:
        if z is None:
            raise ValueError("an ancestral (stochastic) sampler call needs its noise z")
        x_next = x_next + call.noise * z.astype(np.float64)
    return x_next.astype(dtype, copy=False)


def _channel_terms(channel: dict, x: np.ndarray, history: list) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    per = lambda v: np.asarray(v, dtype=np.float64).reshape(shape)
    total = per(channel["a"]) * x + per(channel["bias"])
    for c, (_, _, dj) in zip(channel["c"], history):
        total = total + per(c) * dj
    for w, (xj, _, _) in zip(channel["x_hist"], history[1:]):
        total = total + per(w) * xj
    return total


def initial_noise(seed: int, n: int, shape: tuple[int, ...], first: int = 0) -> np.ndarray:
    """x_T for images ``first .. first+n-1``: image i always gets the same noise for a seed,
    so shards, subsets and reruns of one seed agree."""
    return np.stack([
        np.random.default_rng([seed, first + i]).standard_normal(shape, dtype=np.float32)
        for i in range(n)
    ])


def step_noise(seed: int, call: int, n: int, shape: tuple[int, ...], first: int = 0) -> np.ndarray:
    """z_k of an ancestral sampler for images ``first .. first+n-1`` at call ``call``: like
    ``initial_noise``, one stream per image, so batching and shards do not change a sample."""
    return np.stack([
        np.random.default_rng([seed, first + i, 1 + call]).standard_normal(shape, dtype=np.float32)
        for i in range(n)
    ])


def is_stochastic(calls) -> bool:
    return any(getattr(c, "noise", 0.0) for c in calls)


def default_labels(n: int, num_classes: int, first: int = 0) -> np.ndarray:
    """Class labels cycling 0..num_classes-1, so a grid shows every class."""
    return (np.arange(first, first + n) % max(num_classes, 1)).astype(np.int64)


def guide(out: np.ndarray, n: int, scale: float) -> np.ndarray:
    """Combine a doubled batch laid out [unconditional; conditional]."""
    uncond, cond = out[:n], out[n:]
    return uncond + scale * (cond - uncond)
