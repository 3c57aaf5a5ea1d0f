"""The compiled sampler loop: follow the artifact's call table with numpy and an executor."""

from __future__ import annotations

from typing import Callable

import numpy as np

from dmc.artifact import Manifest
from dmc.errors import DmcError
from dmc.sampling.calls import SamplerCall, default_labels, guide, initial_noise, sampler_update
from dmc.sampling.recipe import Recipe


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` in [-1, 1] -> ``[n, H, W, C]`` uint8."""
    images = (np.clip(samples, -1.0, 1.0) + 1.0) * 127.5
    return np.round(images).astype(np.uint8).transpose(0, 2, 3, 1)


class Pipeline:
    """Runs a call table with any executor (``run(graph, feeds) -> [outputs]``).

    Output 0 of every graph is the prediction; any further output is a cached tensor kept
    in ``buffers`` under its output name and fed to later graphs that have an input of that
    name. ``call.extra["tables"]`` maps graph inputs to per-call constant arrays.

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

    def embeddings_for(self, n: int, embeddings, uncond) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-image conditioning embeddings ``[n, S, D]`` and the unconditional ones (default zeros)."""
        if self.cond["kind"] != "embedding":
            if embeddings is not None:
                raise DmcError("this model takes no embeddings")
            return None
        shape = tuple(self.cond["embedding_shape"])
        emb = np.zeros((n, *shape), np.float32) if embeddings is None else np.asarray(embeddings, np.float32)
        emb = np.broadcast_to(emb, (n, *shape)) if emb.ndim == 2 else emb
        un = np.zeros((n, *shape), np.float32) if uncond is None else np.broadcast_to(
            np.asarray(uncond, np.float32), (n, *shape))
        if emb.shape != (n, *shape):
            raise DmcError(f"embeddings must have shape [{n}, {shape[0]}, {shape[1]}], got {list(emb.shape)}")
        return emb, un

    def sample(self, n: int = 1, seed: int | None = None, class_labels=None, batch_size: int = 16,
               first: int = 0, progress: bool = False, on_call: Callable | None = None,
               embeddings=None, uncond_embeddings=None) -> np.ndarray:
        """Final samples ``[n, C, H, W]`` (float32, model space).

        ``on_call(k, feeds, out, x_next)`` sees every model call: the trajectory recorder's hook.
        """
        if n < 1:
            raise DmcError("n must be at least 1")
        seed = self.recipe.seed if seed is None else seed
        labels = self.labels_for(n, class_labels, first)
        emb = self.embeddings_for(n, embeddings, uncond_embeddings)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n * len(self.calls), desc="sampling", unit="call", leave=False)
        chunks = []
        for start in range(0, n, batch_size):
            b = min(batch_size, n - start)
            x = initial_noise(seed, b, self.sample_shape, first + start)
            cond, uncond = {}, {}
            if labels is not None:
                cond["class_labels"] = labels[start:start + b]
                uncond["class_labels"] = np.full(b, self.cond["null_class"], dtype=np.int64)
            if emb is not None:
                cond["encoder_hidden_states"] = emb[0][start:start + b]
                uncond["encoder_hidden_states"] = emb[1][start:start + b]
            chunks.append(self._run_batch(x, cond, uncond, bar, on_call))
        if bar is not None:
            bar.close()
        return np.concatenate(chunks)

    def _run_batch(self, x: np.ndarray, cond: dict, uncond: dict, bar, on_call) -> np.ndarray:
        n = len(x)
        guided = self.recipe.guided
        cond_feed = {k: np.concatenate([uncond[k], v]) for k, v in cond.items()} if guided else cond
        history: list = []
        buffers: dict[str, np.ndarray] = {}  # cached tensors, named by the graph output that wrote them
        # forecast: the last few values of each cached tensor (newest first) and per-call weights over them
        depth = max((len(w) for c in self.calls for w in c.extra.get("forecast", {}).values()), default=0)
        past: dict[str, list[np.ndarray]] = {}
        for k, call in enumerate(self.calls):
            xin = np.concatenate([x, x]) if guided else x
            t = np.full(len(xin), call.timestep, dtype=np.float32)
            feeds = {"sample": xin, "timestep": t, **cond_feed, **buffers}
            for name, weights in call.extra.get("forecast", {}).items():
                feeds[name] = sum(w * v for w, v in zip(weights, past[name])).astype(np.float32)
            for name, key in call.extra.get("tables", {}).items():  # per-call constants (e.g. corrections)
                feeds[name] = self.tables[key]
            outs = self.executor.run(call.graph, feeds)
            raw = outs[0]
            for name, value in zip(self.executor.output_names(call.graph)[1:], outs[1:]):
                buffers[name] = value
                if depth:
                    past[name] = [value] + past.get(name, [])[: depth - 1]
            out = guide(raw, n, self.recipe.guidance) if guided else raw
            x = sampler_update(call, x, out, history)
            if on_call is not None:
                on_call(k, feeds, raw, x)
            if bar is not None:
                bar.update(n)
        return x
