"""Diffusion policies at run time: observation history in, action chunk out (numpy + an executor).

    from dmc.runtimes import load
    policy = load("pusht.dmc")                       # an artifact compiled from a LeRobot policy folder
    chunk = policy.act({"observation.state": states,  # [n_obs_steps, dim] (or [batch, n_obs_steps, dim])
                        "observation.environment_state": keypoints})
    # chunk: [n_action_steps, action_dim] in the robot's units (or [batch, n_action_steps, action_dim])

The manifest's ``policy`` section is the contract with the compile side (``dmc.policies``): the
observation features (key, type, shape), the action's, the normalisation of each (LeRobot's
modes and statistics, applied here in numpy), ``horizon`` / ``n_obs_steps`` / ``n_action_steps``,
and the graph that turns normalised observations into the denoiser's condition. ``act`` does
what LeRobot's ``predict_action_chunk`` does: normalise, encode, sample the whole horizon with
the compiled sampler, unnormalise, keep the ``n_action_steps`` actions from the current step.
"""

from __future__ import annotations

import numpy as np

from dmc.errors import DmcError

ENCODER_GRAPH = "observation_encoder"
CONDITION = "global_cond"


def has_policy(manifest) -> bool:
    return "policy" in manifest.data


def normalize(value: np.ndarray, norm: dict, eps: float, inverse: bool = False) -> np.ndarray:
    """LeRobot's normalisation modes (``NormalizerProcessorStep``), in float32 numpy."""
    mode = norm["mode"]
    if mode == "IDENTITY":
        return value
    stat = {k: np.asarray(v, dtype=np.float32) for k, v in norm.items() if k != "mode"}
    if mode == "MEAN_STD":
        if inverse:
            return value * stat["std"] + stat["mean"]
        return (value - stat["mean"]) / (stat["std"] + np.float32(eps))
    lo, hi = {"MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90")}[mode]
    denom = stat[hi] - stat[lo]
    denom = np.where(denom == 0, np.float32(eps), denom)
    if inverse:
        return (value + 1) / 2 * denom + stat[lo]
    return 2 * (value - stat[lo]) / denom - 1


class Policy:
    """``act(observations) -> action chunk``; ``pipe`` is the artifact's sampler (``Pipeline``)."""

    def __init__(self, manifest, pipe):
        self.manifest = manifest
        self.pipe = pipe
        self.spec = manifest.data["policy"]
        self.n_obs_steps = int(self.spec["n_obs_steps"])
        self.n_action_steps = int(self.spec["n_action_steps"])
        self.horizon = int(self.spec["horizon"])

    @property
    def executor(self):
        return self.pipe.executor

    @property
    def observation_keys(self) -> list[str]:
        return [o["key"] for o in self.spec["observations"]]

    def _observations(self, observations: dict) -> tuple[dict, int, bool]:
        """Normalised graph feeds ``[batch, n_obs_steps, *shape]``, the batch size, and whether the
        caller gave one history (no batch axis)."""
        missing = [k for k in self.observation_keys if k not in observations]
        if missing:
            raise DmcError(f"act: missing observation {missing[0]!r} (the policy takes: "
                           f"{', '.join(self.observation_keys)})")
        unknown = sorted(set(observations) - set(self.observation_keys))
        if unknown:
            raise DmcError(f"act: this policy takes no observation {unknown[0]!r}")
        feeds, batch, single = {}, None, None
        eps = float(self.spec["normalization_eps"])
        for obs in self.spec["observations"]:
            key, shape = obs["key"], tuple(obs["shape"])
            value = np.asarray(observations[key], dtype=np.float32)
            one = value.shape == (self.n_obs_steps, *shape)
            if not one and value.shape[1:] != (self.n_obs_steps, *shape):
                raise DmcError(f"act: {key!r} must have shape [{self.n_obs_steps}, "
                               f"{', '.join(map(str, shape))}] (n_obs_steps first; a batch axis before it "
                               f"is allowed), got {list(value.shape)}")
            value = value[None] if one else value
            if batch is not None and (len(value) != batch or one != single):
                raise DmcError("act: every observation must have the same batch size")
            batch, single = len(value), one
            if not np.isfinite(value).all():
                raise DmcError(f"act: observation {key!r} contains NaN or inf")
            feeds[obs["input"]] = normalize(value, self.spec["normalization"][key], eps).astype(np.float32)
        return feeds, batch, single

    def condition(self, observations: dict) -> tuple[np.ndarray, bool]:
        """The denoiser's condition ``[batch, dim]`` from an observation history."""
        feeds, _, single = self._observations(observations)
        out = self.executor.run(ENCODER_GRAPH, feeds)[0]
        return self.executor.to_numpy(out).astype(np.float32), single

    def act(self, observations: dict, seed: int | None = None, noise: np.ndarray | None = None,
            warm_start: int | None = None) -> np.ndarray:
        """The next ``n_action_steps`` actions (robot units) for an observation history of
        ``n_obs_steps`` steps per key, oldest first. ``noise`` ``[batch, horizon, action_dim]``
        replaces the seeded initial sample.

        ``warm_start=k`` (after a first ``act``): start from the previous plan shifted by the
        ``n_action_steps`` actions that were executed (its last action repeated at the end), noised
        to the level of the table's last ``k`` calls, and run only those ``k`` calls: the
        real-time-iteration idea, ``k`` model calls per chunk instead of all of them."""
        cond, single = self.condition(observations)
        pipe = self.pipe
        if warm_start is not None:
            noise, pipe = self._warm_start(warm_start, len(cond), seed)
        elif noise is not None:
            noise = np.asarray(noise, dtype=np.float32)
            noise = noise[None] if single and noise.ndim == 2 else noise
        x = pipe.sample(len(cond), seed=seed, batch_size=len(cond), conditions={CONDITION: cond}, noise=noise)
        self._plan = x
        actions = normalize(x, self.spec["normalization"][self.spec["action"]["key"]],
                            float(self.spec["normalization_eps"]), inverse=True)
        start = self.n_obs_steps - 1
        chunk = actions[:, start:start + self.n_action_steps].astype(np.float32)
        return chunk[0] if single else chunk

    def _warm_start(self, k: int, batch: int, seed: int | None):
        """(initial state, a sampler over the last ``k`` calls) from the previous plan."""
        import copy

        from dmc.sampling.calls import initial_noise

        calls = self.pipe.calls
        plan = getattr(self, "_plan", None)
        if plan is None or len(plan) != batch:
            raise DmcError("act: warm_start needs a previous act() on the same batch")
        if not 1 <= k <= len(calls):
            raise DmcError(f"act: warm_start must be 1..{len(calls)} model calls, got {k}")
        levels = [c.extra.get("noise_level") for c in calls]
        if levels[-k] is None:
            raise DmcError("act: this artifact's call table has no noise levels (recompile it to warm-start)")
        a = self.n_action_steps
        shifted = np.concatenate([plan[:, a:], np.repeat(plan[:, -1:], a, axis=1)], axis=1)
        alpha, sigma = levels[-k]
        z = initial_noise(self.pipe.recipe.seed if seed is None else seed, batch, plan.shape[1:])
        pipe = copy.copy(self.pipe)
        pipe.calls = calls[-k:]
        return (alpha * shifted + sigma * z).astype(np.float32), pipe


def open_policy(manifest, pipe, *_args) -> Policy:
    return Policy(manifest, pipe)


def is_policy_artifact(artifact) -> bool:
    """Is ``artifact`` a policy's artifact folder? (False for anything else, model sources included.)"""
    from pathlib import Path

    from dmc.artifact import read_manifest

    return (Path(artifact) / "manifest.json").is_file() and has_policy(read_manifest(artifact, verify=False))


def refuse_policy(artifact, command: str) -> None:
    """Image commands (``dmc run/eval``) on a policy artifact: one clear line, no traceback."""
    if is_policy_artifact(artifact):
        raise DmcError(f"{artifact} is a robot policy: `{command}` samples images; call "
                       "dmc.runtimes.load(ARTIFACT).act(observations) from Python")


def describe_policy(manifest) -> str | None:
    """One line for ``dmc inspect``."""
    if not has_policy(manifest):
        return None
    p = manifest.data["policy"]
    obs = ", ".join(f"{o['key']} {o['shape']}" for o in p["observations"])
    return (f"LeRobot {p['type']} policy: horizon {p['horizon']}, {p['n_obs_steps']} observation step(s) of "
            f"[{obs}] -> {p['n_action_steps']} actions of {p['action']['shape']}; normalisation from "
            f"{p['normalization_origin']}")
