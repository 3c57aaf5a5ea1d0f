"""A small simulated "reach and push" task for dmc's built-in demo policy (numpy only, no torch).

A PushT-like task reduced to discs: a point agent (a small disc) pushes a larger disc across a
unit-square table into a fixed goal circle. It exists so rollout success of a policy (FP32, INT8,
cached artifacts) can be measured offline, deterministically, over many seeded episodes.

- State (``"observation.state"``, float32): ``[agent_x, agent_y, object_x, object_y]`` in [0, 1].
- Action (float32): a target position ``[x, y]`` for the agent, as in PushT; during one control step
  the agent moves toward it by at most ``MAX_STEP`` (velocity-capped), in ``SUBSTEPS`` sub-steps.
- Contact: quasi-static circle-circle pushing: an overlapping object is moved out along the contact
  normal, so it moves only while pushed (full friction, no momentum). Both stay on the table.
- Success: the object's centre within ``SUCCESS_RADIUS`` of ``GOAL``; the episode ends then or after
  ``MAX_STEPS`` control steps. Reward: 1 on the successful step, else 0.

``rollout(act, seed, n_obs_steps, n_action_steps)`` runs a chunking policy in closed loop the way
LeRobot does (observation history with the first observation repeated, re-plan after
``n_action_steps`` actions); ``success_rate`` adds a Wilson score interval.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

import numpy as np

STATE_KEY = "observation.state"
STATE_DIM, ACTION_DIM = 4, 2
GOAL = np.array([0.5, 0.5])
SUCCESS_RADIUS = 0.05
AGENT_RADIUS, OBJECT_RADIUS = 0.02, 0.05
CONTACT_DISTANCE = AGENT_RADIUS + OBJECT_RADIUS
# agent travel per control step; the expert needs 17-62 steps (mean 34). Small enough that a chunk of
# 8 open-loop actions covers 0.16: at 0.03 a trained policy's open-loop pushes missed the goal often
MAX_STEP = 0.02
SUBSTEPS = 5  # sub-step travel (0.004) << CONTACT_DISTANCE, so contact never tunnels
MAX_STEPS = 120
# the object starts in this annulus around the goal, far enough that reaching it needs pushing
START_RING = (0.15, 0.28)

# expert: circle the object at this radius until behind it, then push along the object -> goal line
ORBIT_RADIUS = CONTACT_DISTANCE + 0.03
ALIGNED_ANGLE = math.radians(25)
MIN_ORBIT_STEP = 0.5  # radians per waypoint on the orbit: the chord stays clear of the object


class ReachPushTask:
    """``reset(seed) -> obs``; ``step(action) -> (obs, reward, done, info)`` with ``info["success"]``
    and ``info["distance"]`` (object centre to goal). Deterministic given the seed and actions."""

    state_dim, action_dim, max_steps = STATE_DIM, ACTION_DIM, MAX_STEPS

    def __init__(self, max_steps: int = MAX_STEPS):
        self.max_steps = max_steps
        self.agent = np.zeros(2)
        self.object = np.zeros(2)
        self.steps = 0

    def reset(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        angle = rng.uniform(-math.pi, math.pi)
        self.object = GOAL + rng.uniform(*START_RING) * np.array([math.cos(angle), math.sin(angle)])
        while True:  # rejection sampling: the agent anywhere on the table, clear of the object
            self.agent = rng.uniform(AGENT_RADIUS, 1 - AGENT_RADIUS, size=2)
            if np.linalg.norm(self.agent - self.object) > CONTACT_DISTANCE + 0.02:
                break
        self.steps = 0
        return self.observation()

    def observation(self) -> np.ndarray:
        return np.concatenate([self.agent, self.object]).astype(np.float32)

    def distance(self) -> float:
        return float(np.linalg.norm(self.object - GOAL))

    def step(self, action) -> tuple[np.ndarray, float, bool, dict]:
        target = np.clip(np.asarray(action, dtype=np.float64).reshape(2), 0.0, 1.0)
        for _ in range(SUBSTEPS):
            self.agent = self.agent + _capped(target - self.agent, MAX_STEP / SUBSTEPS)
            self._resolve_contact()
        self.steps += 1
        success = self.distance() < SUCCESS_RADIUS
        done = success or self.steps >= self.max_steps
        return self.observation(), float(success), done, {"success": success, "distance": self.distance()}

    def _resolve_contact(self) -> None:
        gap = self.object - self.agent
        dist = float(np.linalg.norm(gap))
        if dist >= CONTACT_DISTANCE:
            return
        normal = gap / dist if dist > 1e-12 else np.array([1.0, 0.0])
        self.object = self.agent + normal * CONTACT_DISTANCE
        self.object = np.clip(self.object, OBJECT_RADIUS, 1 - OBJECT_RADIUS)
        # an object held by the wall pushes the agent back instead
        gap = self.object - self.agent
        dist = float(np.linalg.norm(gap))
        if dist < CONTACT_DISTANCE:
            normal = gap / dist if dist > 1e-12 else normal
            self.agent = self.object - normal * CONTACT_DISTANCE
        self.agent = np.clip(self.agent, AGENT_RADIUS, 1 - AGENT_RADIUS)


def _capped(vector: np.ndarray, length: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= length else vector * (length / norm)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def expert_action(obs) -> np.ndarray:
    """The scripted expert (deterministic, observation only): circle the object, on the shorter
    side, until behind it as seen from the goal, then push through it toward the goal. Targets lie
    within one step's reach, so an action chunk is the agent's own future path."""
    obs = np.asarray(obs, dtype=np.float64)
    agent, obj = obs[:2], obs[2:4]
    to_goal = GOAL - obj
    push_dir = to_goal / max(float(np.linalg.norm(to_goal)), 1e-9)
    rel = agent - obj
    radius = float(np.linalg.norm(rel))
    agent_angle = math.atan2(rel[1], rel[0])
    behind_angle = math.atan2(-push_dir[1], -push_dir[0])
    offset = _wrap(behind_angle - agent_angle)
    if abs(offset) < ALIGNED_ANGLE:
        # aim one step past the contact point behind the object: a lateral error corrects itself
        contact = obj - push_dir * CONTACT_DISTANCE
        return (agent + _capped(contact + push_dir * MAX_STEP - agent, MAX_STEP)).astype(np.float32)
    # from outside the orbit head for its tangent point; on it, advance along it
    tangent = math.acos(min(1.0, ORBIT_RADIUS / radius)) if radius > ORBIT_RADIUS else 0.0
    turn = math.copysign(min(abs(offset), max(tangent, MIN_ORBIT_STEP)), offset)
    waypoint = obj + ORBIT_RADIUS * np.array([math.cos(agent_angle + turn), math.sin(agent_angle + turn)])
    return (agent + _capped(waypoint - agent, MAX_STEP)).astype(np.float32)


def rollout(act: Callable[[dict], np.ndarray], seed: int, n_obs_steps: int, n_action_steps: int,
            max_steps: int | None = None) -> dict:
    """One closed-loop episode. ``act({"observation.state": [n_obs_steps, STATE_DIM]})`` (oldest
    first; the first observation repeated at the start, as LeRobot pads) returns an action chunk
    ``[k, ACTION_DIM]``; its first ``n_action_steps`` are executed before the next call."""
    task = ReachPushTask(max_steps or MAX_STEPS)
    obs = task.reset(seed)
    history = deque([obs] * n_obs_steps, maxlen=n_obs_steps)
    total_reward, done, info = 0.0, False, {"success": False, "distance": task.distance()}
    while not done:
        chunk = np.asarray(act({STATE_KEY: np.stack(history)}), dtype=np.float32).reshape(-1, ACTION_DIM)
        for action in chunk[:n_action_steps]:
            obs, reward, done, info = task.step(action)
            history.append(obs)
            total_reward += reward
            if done:
                break
    return {"success": bool(info["success"]), "steps": task.steps, "reward": total_reward,
            "final_distance": float(info["distance"])}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95 % for z = 1.96); sound near 0 and 1."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rate(act: Callable[[dict], np.ndarray], seeds, n_obs_steps: int, n_action_steps: int,
                 max_steps: int | None = None) -> dict:
    """Success count, episodes, rate and its 95 % Wilson interval over ``seeds`` (one episode each)."""
    results = [rollout(act, int(s), n_obs_steps, n_action_steps, max_steps) for s in seeds]
    successes = sum(r["success"] for r in results)
    n = len(results)
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "n": n, "rate": successes / n if n else 0.0, "wilson95": (low, high),
            "mean_steps": float(np.mean([r["steps"] for r in results])) if n else 0.0}


def expert_policy(history: dict) -> np.ndarray:
    """The expert as an ``act`` for ``rollout`` (one action per call, from the latest observation)."""
    return expert_action(np.asarray(history[STATE_KEY])[-1])[None]


def expert_histories(seeds, n_obs_steps: int = 2, every: int = 4) -> dict[str, np.ndarray]:
    """Observation histories the expert visits (every ``every``-th step of an episode per seed), as
    ``--calib-observations`` takes them: ``{"observation.state": [N, n_obs_steps, STATE_DIM]}``.
    Calibrating INT8 ranges and cache schedules on these, instead of synthetic histories, keeps them
    on the states the policy will meet."""
    histories = []
    for seed in seeds:
        task = ReachPushTask()
        obs = task.reset(int(seed))
        history = deque([obs] * n_obs_steps, maxlen=n_obs_steps)
        done = False
        while not done:
            if task.steps % every == 0:
                histories.append(np.stack(history))
            obs, _, done, _ = task.step(expert_action(obs))
            history.append(obs)
    return {STATE_KEY: np.stack(histories).astype(np.float32)}
