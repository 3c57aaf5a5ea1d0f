"""The compiled sampler loop: follow the artifact's call table with numpy and an executor."""

from __future__ import annotations

from typing import Callable

import numpy as np

from dmc.artifact import Manifest
from dmc.errors import DmcError
from dmc.runtimes.conditions import cond_inputs, condition_feeds
from dmc.runtimes.executor import host_feeds
from dmc.sampling.calls import (SamplerCall, default_labels, guide, initial_noise, is_stochastic, sampler_update,
                                step_noise)
from dmc.sampling.recipe import Recipe


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` in [-1, 1] -> ``[n, H, W, C]`` uint8."""
    images = (np.clip(samples, -1.0, 1.0) + 1.0) * 127.5
    return np.round(images).astype(np.uint8).transpose(0, 2, 3, 1)


class Pipeline:
    """Runs a call table with any ``dmc.runtimes.executor.Executor``.

    Output 0 of every graph is the prediction; any further output is a cached tensor kept
    in ``buffers`` under its output name and fed to later graphs that have an input of that
    name. Buffers hold the executor's native values (they may stay on its device); only the
    prediction is brought to host. ``call.extra["tables"]`` maps graph inputs to per-call constant arrays.

    The runtime builds it from a manifest and ONNX Runtime; the compile side builds the
    same loop around torch modules, so references and calibration data come from the
    very sampler the artifact will execute.
    """

    def __init__(self, recipe: Recipe, calls: list[SamplerCall], sample_shape: tuple, conditioning: dict,
                 executor, manifest: Manifest | None = None, tables: dict[str, np.ndarray] | None = None):
        self.tables = tables or {}
        self.recipe = recipe
        self.calls = calls
        self.sample_shape = tuple(sample_shape)
        self.cond = conditioning
        self.executor = executor
        self.manifest = manifest

    @classmethod
    def from_manifest(cls, manifest: Manifest, executor) -> "Pipeline":
        return cls(manifest.recipe, manifest.calls, manifest.sample_shape, manifest.conditioning, executor,
                   manifest, manifest.tables())

    def __call__(self, n: int = 1, seed: int | None = None, class_labels=None, batch_size: int = 16,
                 first: int = 0, progress: bool = False) -> np.ndarray:
        """Sample ``n`` images as uint8 ``[n, H, W, C]``."""
        return to_uint8(self.sample(n, seed, class_labels, batch_size, first, progress))

    def labels_for(self, n: int, class_labels=None, first: int = 0) -> np.ndarray | None:
        if self.cond["kind"] != "class":
            if class_labels is not None:
                raise DmcError("this model is not class-conditional; drop class_labels")
            return None
        if class_labels is None:
            return default_labels(n, self.cond["num_classes"], first)
        labels = np.asarray(class_labels, dtype=np.int64).reshape(-1)
        if labels.size == 1:
            labels = np.full(n, labels[0], dtype=np.int64)
        if labels.size != n:
            raise DmcError(f"got {labels.size} class labels for {n} images")
        if labels.min() < 0 or labels.max() >= self.cond["num_classes"]:
            raise DmcError(f"class labels must be in 0..{self.cond['num_classes'] - 1}")
        return labels

    def sample(self, n: int = 1, seed: int | None = None, class_labels=None, batch_size: int = 16,
               first: int = 0, progress: bool = False, on_call: Callable | None = None,
               embeddings=None, uncond_embeddings=None, conditions: dict | None = None,
               uncond_conditions: dict | None = None, noise: np.ndarray | None = None) -> np.ndarray:
        """Final samples ``[n, C, H, W]`` (float32, model space).

        ``conditions``/``uncond_conditions`` map conditioning input names (the manifest's
        ``conditioning.inputs``) to one value for every image or one per image; missing ones get the
        input's default and, for the unconditional half, its ``uncond`` rule (``conditions.py``).
        ``embeddings``/``uncond_embeddings`` are shorthand for ``encoder_hidden_states``.
        ``on_call(k, feeds, out, x_next)`` sees every model call: the trajectory recorder's hook.
        ``noise`` ``[n, C, H, W]`` replaces the seeded initial state (labels and conditions still follow
        ``first``): the compile side probes the model at chosen states this way.
        """
        if n < 1:
            raise DmcError("n must be at least 1")
        if noise is not None and tuple(np.shape(noise)) != (n, *self.sample_shape):
            raise DmcError(f"noise has shape {tuple(np.shape(noise))}, expected {(n, *self.sample_shape)}")
        seed = self.recipe.seed if seed is None else seed
        labels = self.labels_for(n, class_labels, first)
        if embeddings is not None or uncond_embeddings is not None:
            if "encoder_hidden_states" not in {s["name"] for s in cond_inputs(self.cond)}:
                raise DmcError("this model takes no embeddings")
            conditions = {**(conditions or {}), "encoder_hidden_states": embeddings}
            uncond_conditions = {**(uncond_conditions or {}), "encoder_hidden_states": uncond_embeddings}
        feeds, unfeeds = condition_feeds(self.cond, n, conditions, uncond_conditions)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n * len(self.calls), desc="sampling", unit="call", leave=False)
        chunks = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = initial_noise(seed, b, self.sample_shape, first + start) if noise is None else noise[start:start + b]
            cond, uncond = {}, {}
            if labels is not None:
                cond["class_labels"] = labels[start:start + b]
                uncond["class_labels"] = np.full(b, self.cond["null_class"], dtype=np.int64)
            for name in feeds:  # graph input order is fixed by name, not by this dict
                cond[name] = feeds[name][start:start + b]
                uncond[name] = unfeeds[name][start:start + b]
            chunks.append(self._run_batch(x, cond, uncond, bar, on_call, (seed, first + start)))
        if bar is not None:
            bar.close()
        return np.concatenate(chunks)

    def _run_batch(self, x: np.ndarray, cond: dict, uncond: dict, bar, on_call, noise_key=(0, 0)) -> np.ndarray:
        n = len(x)
        stochastic = is_stochastic(self.calls)  # ancestral samplers: fresh noise per call, seeded per image
        guided = self.recipe.guided
        cond_feed = {k: np.concatenate([uncond[k], v]) for k, v in cond.items()} if guided else cond
        history: list = []
        buffers: dict = {}  # cached tensors (executor-native), named by the graph output that wrote them
        executor = self.executor
        # forecast: the last few values of each cached tensor (newest first, on host: the extrapolation is
        # numpy arithmetic) and per-call weights over them
        depth = max((len(w) for c in self.calls for w in c.extra.get("forecast", {}).values()), default=0)
        past: dict[str, list[np.ndarray]] = {}
        for k, call in enumerate(self.calls):
            xin = x if call.scale_in == 1 else (x * np.float32(call.scale_in))
            xin = np.concatenate([xin, xin]) if guided else xin
            t = np.full(len(xin), call.timestep, dtype=np.float32)
            feeds = {"sample": xin, "timestep": t, **cond_feed, **buffers}
            for name, weights in call.extra.get("forecast", {}).items():
                feeds[name] = sum(w * v for w, v in zip(weights, past[name])).astype(np.float32)
            for name, key in call.extra.get("tables", {}).items():  # per-call constants (e.g. corrections)
                feeds[name] = self.tables[key]
            outs = executor.run(call.graph, feeds)
            raw = executor.to_numpy(outs[0])
            for name, value in zip(executor.output_names(call.graph)[1:], outs[1:]):
                buffers[name] = value
                if depth:
                    past[name] = [executor.to_numpy(value)] + past.get(name, [])[: depth - 1]
            out = guide(raw, n, self.recipe.guidance) if guided else raw
            z = step_noise(noise_key[0], k, n, self.sample_shape, noise_key[1]) if stochastic and call.noise else None
            x = sampler_update(call, x, out, history, z)
            if on_call is not None:
                on_call(k, host_feeds(executor, feeds), raw, x)
            if bar is not None:
                bar.update(n)
        return x
