"""Prompt in, image out, torch-free: tokenize, encode, sample with guidance, decode.

    from dmc.runtimes import load
    pipe = load("sd.dmc")                     # an artifact compiled from a pipeline folder
    images = pipe(prompt="a red fox in the snow", negative_prompt="blurry", n=4, seed=0, guidance=7.5)

Everything follows the manifest's ``parts`` section (``dmc.export.pipeline_parts`` writes it):
which tokenizer and text-encoder graph make which backbone input, what the negative half of a
guided batch gets, the VAE's scaling. The backbone runs through the ordinary sampler loop
(``Pipeline``), which doubles the batch as ``[negative; positive]`` itself.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import numpy as np

from dmc.artifact import Manifest
from dmc.errors import DmcError
from dmc.runtimes.conditions import cond_inputs
from dmc.runtimes.pipeline import Pipeline
from dmc.runtimes.tokenize import Tokenizer

DISTILLED_GUIDANCE = "guidance"  # the backbone input of a guidance-distilled model (Flux)
PIXEL_CHANNELS = (1, 3)  # a backbone with these sample channels draws pixels; anything else draws latents


def has_prompt_pipeline(manifest: Manifest) -> bool:
    return bool((manifest.data.get("parts") or {}).get("text_encoders"))


def latent_without_decoder(manifest: Manifest) -> bool:
    """True when the samples are latents that this artifact cannot turn into an image."""
    parts = manifest.data.get("parts") or {}
    return manifest.sample_shape[0] not in PIXEL_CHANNELS and not parts.get("vae")


LATENT_REFUSAL = ("this artifact holds only the backbone of a latent model (no VAE decoder), so its samples are "
                  "latents, not images; compile the whole diffusers pipeline folder (model_index.json with "
                  "text_encoder/, tokenizer/, vae/) to get images, or pass --latents OUT.npy to save the latents")


def _features(sources, outputs: dict) -> np.ndarray:
    """Encoder outputs side by side on the last axis (SD 1.x/2.x, SDXL's two CLIP widths)."""
    return np.concatenate([outputs[tuple(src)] for src in sources], axis=-1)


def _sequence(segments, outputs: dict) -> np.ndarray:
    """Segments one after another on the token axis, each zero-padded on the last axis to the widest
    (SD3: the two CLIPs' states, padded to T5's width, then T5's states)."""
    parts = [_features(sources, outputs) for sources in segments]
    width = max(p.shape[-1] for p in parts)
    parts = [np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, width - p.shape[-1])]) for p in parts]
    return np.concatenate(parts, axis=1)


# How the manifest's ``parts.conditions`` entries build a backbone input: a list of [graph, output] sources is
# a ``features`` join; ``{"sequence": [[sources], ...]}`` names its join.
CONDITION_JOINS = {"features": _features, "sequence": _sequence}


def join_conditions(conditions: dict, outputs: dict) -> dict[str, np.ndarray]:
    """Backbone inputs from encoder ``outputs`` (``{(graph, output): [n, ...]}``), per the manifest's recipe."""
    joined = {}
    for name, spec in conditions.items():
        (join, args), = spec.items() if isinstance(spec, dict) else (("features", spec),)
        if join not in CONDITION_JOINS:
            raise DmcError(f"condition {name!r}: unknown join {join!r} (this runtime knows {', '.join(CONDITION_JOINS)})")
        joined[name] = CONDITION_JOINS[join](args, outputs).astype(np.float32, copy=False)
    return joined


def zero_outputs(parts: dict, n: int) -> dict:
    """Zeros standing in for the outputs of an encoder the pipeline runs without (SD3 without T5)."""
    return {tuple(key.split("/", 1)): np.zeros((n, *shape), np.float32)
            for key, shape in parts.get("zero_outputs", {}).items()}


def open_parts(manifest: Manifest, backend: str, providers, threads):
    """An executor over the part graphs (text encoders, VAE decoder) on the same backend as the backbone."""
    from dmc.runtimes.executor import backend_class

    view = Manifest(manifest.root, {**manifest.data, "graphs": manifest.data["parts"]["graphs"]})
    return backend_class(backend)(view, providers=providers, threads=threads)


def _prompts(prompt, n: int | None, what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise DmcError(f"{what} must be a string or a list of strings")
    n = len(prompts) if n is None else n
    if n < 1:
        raise DmcError("n must be at least 1")
    return [prompts[i % len(prompts)] for i in range(n)]  # image i gets prompt i mod len


class TextToImage:
    """The prompt pipeline of one artifact. ``backbone`` is the ordinary sampler ``Pipeline``."""

    def __init__(self, manifest: Manifest, backbone: Pipeline, parts_executor):
        self.manifest = manifest
        self.backbone = backbone
        self.parts = manifest.data["parts"]
        self.executor = parts_executor
        self.tokenizers = {e["graph"]: Tokenizer(manifest.root / e["tokenizer"], e["max_length"], e["pad_id"])
                           for e in self.parts["text_encoders"]}
        self.last_timings: dict[str, float] = {}

    # The backbone's attributes (recipe, cond, calls, ...) stay reachable for tools that expect a Pipeline.
    def __getattr__(self, name):
        if name == "backbone":
            raise AttributeError(name)
        return getattr(self.backbone, name)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.parts["image_size"])

    def encode(self, prompts: list[str], batch_size: int = 16) -> dict[str, np.ndarray]:
        """Backbone conditioning inputs for ``prompts``: ``{input name: [n, ...] float32}``."""
        if self.parts.get("lowercase"):
            prompts = [p.lower().strip() for p in prompts]
        outputs: dict[tuple[str, str], list[np.ndarray]] = {}
        for enc in self.parts["text_encoders"]:
            for start in range(0, len(prompts), batch_size):
                ids, mask = self.tokenizers[enc["graph"]].encode_with_mask(prompts[start:start + batch_size])
                feeds = {"input_ids": ids, **({"attention_mask": mask} if enc.get("mask") else {})}
                values = [self.executor.to_numpy(v) for v in self.executor.run(enc["graph"], feeds)]
                for name, value in zip(enc["outputs"] + ["attention_mask"], values + [mask.astype(np.float32)]):
                    outputs.setdefault((enc["graph"], name), []).append(value)
        joined = {**zero_outputs(self.parts, len(prompts)), **{k: np.concatenate(v) for k, v in outputs.items()}}
        return join_conditions(self.parts["conditions"], joined)

    def conditions(self, prompts: list[str], negative: list[str] | None,
                   guided: bool = True) -> tuple[dict, dict | None]:
        """``(conditions, uncond_conditions)`` for the sampler loop; None leaves the negative half at zeros
        (and an unguided sampler has no negative half: nothing is encoded for it)."""
        cond = self.encode(prompts)
        cond.update({name: np.asarray(v, np.float32) for name, v in self.parts.get("size_conditions", {}).items()})
        if not guided or (negative is None and self.parts["negative"] == "zeros_if_none"):
            return cond, None
        uncond = self.encode(negative if negative is not None else [""] * len(prompts))
        return cond, uncond

    def decode(self, latents: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Latents in model space -> images ``[n, 3, H, W]`` in [-1, 1] (diffusers' scaling rules)."""
        vae = self.parts["vae"]
        z = vae_input(latents, vae)
        chunks = [self.executor.to_numpy(self.executor.run(vae["graph"], {"latent": z[s:s + batch_size]})[0])
                  for s in range(0, len(z), batch_size)]
        return np.concatenate(chunks)

    @property
    def distilled_guidance(self) -> bool:
        """A guidance-distilled pipeline (Flux): never a CFG batch; ``guidance`` is the backbone's input, as
        FluxPipeline's guidance_scale (FLUX.1-schnell has no such input)."""
        return bool(self.parts.get("distilled_guidance"))

    def _distilled_input(self, guidance: float, n: int) -> dict:
        if DISTILLED_GUIDANCE not in {s["name"] for s in cond_inputs(self.backbone.cond)}:
            raise DmcError("this model takes no guidance scale (a guidance-distilled pipeline without a guidance "
                           "input, e.g. FLUX.1-schnell): drop --guidance")
        return {DISTILLED_GUIDANCE: np.full(n, guidance, np.float32)}

    def _sampler(self, guidance: float | None) -> Pipeline:
        if guidance is None or guidance == self.backbone.recipe.guidance or self.distilled_guidance:
            return self.backbone
        pipe = copy.copy(self.backbone)  # same graphs and tables, another guidance scale
        pipe.recipe = dataclasses.replace(self.backbone.recipe, guidance=float(guidance))
        return pipe

    def latents(self, prompt, negative_prompt=None, n: int | None = None, seed: int | None = None,
                guidance: float | None = None, batch_size: int = 16, progress: bool = False, first: int = 0,
                on_call=None) -> np.ndarray:
        """Final latents ``[n, C, h, w]`` for the prompt(s); ``first`` and ``on_call`` as ``Pipeline.sample``'s
        (image ``first + i`` gets the initial noise of that index: evaluation samples in batches)."""
        prompts = _prompts(prompt, n, "prompt")
        negative = None if negative_prompt is None else _prompts(negative_prompt, len(prompts), "negative_prompt")
        if guidance is not None and guidance < 0:
            raise DmcError(f"guidance must be >= 0, got {guidance}")
        t0 = time.perf_counter()
        sampler = self._sampler(guidance)
        cond, uncond = self.conditions(prompts, negative, guided=sampler.recipe.guided)
        if guidance is not None and self.distilled_guidance:
            cond.update(self._distilled_input(guidance, len(prompts)))
        t1 = time.perf_counter()
        latents = sampler.sample(len(prompts), seed, batch_size=batch_size, first=first, progress=progress,
                                 on_call=on_call, conditions=cond, uncond_conditions=uncond)
        self.last_timings = {"text_encoding_s": t1 - t0, "denoising_s": time.perf_counter() - t1}
        return latents

    def __call__(self, prompt=None, negative_prompt=None, n: int | None = None, seed: int | None = None,
                 guidance: float | None = None, batch_size: int = 16, progress: bool = False,
                 class_labels=None) -> np.ndarray:
        """Images ``[n, H, W, 3]`` uint8 for ``prompt`` (a string, or one per image, cycled)."""
        if prompt is None:
            raise DmcError("this artifact is a text-to-image pipeline: give a prompt")
        if class_labels is not None:
            raise DmcError("this model is not class-conditional; drop class_labels")
        latents = self.latents(prompt, negative_prompt, n, seed, guidance, batch_size, progress)
        t0 = time.perf_counter()
        images = self.decode(latents)
        self.last_timings["decoding_s"] = time.perf_counter() - t0
        return to_uint8_images(images)


def vae_input(latents: np.ndarray, vae: dict) -> np.ndarray:
    """Model-space latents -> what the VAE decoder graph takes (diffusers' scaling and shift rules)."""
    z = latents.astype(np.float32)
    if vae.get("latents_mean") is not None and vae.get("latents_std") is not None:
        shape = (1, -1, 1, 1)
        mean = np.asarray(vae["latents_mean"], np.float32).reshape(shape)
        std = np.asarray(vae["latents_std"], np.float32).reshape(shape)
        return z * std / vae["scaling_factor"] + mean
    return z / vae["scaling_factor"] + (vae.get("shift_factor") or 0.0)


def to_uint8_images(images: np.ndarray) -> np.ndarray:
    """``[n, C, H, W]`` in [-1, 1] -> ``[n, H, W, C]`` uint8, rounded as diffusers' image processor does."""
    scaled = np.clip(images.astype(np.float32) / 2 + 0.5, 0.0, 1.0) * 255
    return np.round(scaled).astype(np.uint8).transpose(0, 2, 3, 1)


def open_text_to_image(manifest: Manifest, backbone: Pipeline, backend: str, providers, threads) -> TextToImage:
    return TextToImage(manifest, backbone, open_parts(manifest, backend, providers, threads))


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DmcError(f"{path}: cannot read prompts ({e})") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise DmcError(f"{path}: no prompts (one per line)")
    return prompts


def save_latents(latents: np.ndarray, path: str | Path) -> None:
    import os

    path = Path(path)
    if path.suffix != ".npy":
        raise DmcError(f"--latents {path}: give a .npy path")
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, latents.astype(np.float32), allow_pickle=False)
    os.replace(tmp, path)


def sample_for_cli(pipe, n: int | None, seed, class_label, prompts: tuple, negative, guidance,
                   latents_path, progress: bool = True, batch_size: int = 16) -> np.ndarray | None:
    """What ``dmc run`` does: uint8 images to write (or None when only latents were asked for a
    backbone-only latent artifact). Refuses, with one line, to draw latents as if they were pixels."""
    from dmc.runtimes.pipeline import to_uint8

    if isinstance(pipe, TextToImage):
        if not prompts:
            raise DmcError("this artifact is a text-to-image pipeline: give --prompt \"...\"")
        chosen = list(prompts)
        latents = pipe.latents(chosen, negative, n or len(chosen), seed, guidance, progress=progress)
        if latents_path:
            save_latents(latents, latents_path)
        return to_uint8_images(pipe.decode(latents))
    if prompts or negative is not None:
        raise DmcError("this artifact has no text encoder, so it takes no prompt; compile the whole diffusers "
                       "pipeline folder (model_index.json with text_encoder/, tokenizer/, vae/) for prompts")
    if guidance is not None:
        raise DmcError("--guidance applies to text-to-image artifacts; this one was compiled with guidance "
                       f"{pipe.recipe.guidance}")
    if latent_without_decoder(pipe.manifest) and not latents_path:
        raise DmcError(LATENT_REFUSAL)
    samples = pipe.sample(n or 20, seed, class_labels=class_label, progress=progress, batch_size=batch_size)
    if latents_path:
        save_latents(samples, latents_path)
        if latent_without_decoder(pipe.manifest):
            return None
    return to_uint8(samples)


def describe_parts(manifest: Manifest) -> dict:
    """For ``dmc inspect``: which pipeline parts the artifact holds, and the fixed image size."""
    parts = manifest.data.get("parts") or {}
    if not parts:
        latent = latent_without_decoder(manifest)
        text = ("backbone only; latent model without a VAE decoder: `dmc run` writes --latents only"
                if latent else "backbone only (pixel model)")
        return {"holds": ["backbone"], "text": text}
    h, w = parts["image_size"]
    graphs = ", ".join(f"{name} ({info.get('precision', 'fp32')})" for name, info in parts["graphs"].items())
    guidance = manifest.recipe.guidance
    if parts.get("distilled_guidance"):
        scale = next((s.get("default") for s in cond_inputs(manifest.data["model"]["conditioning"])
                      if s["name"] == DISTILLED_GUIDANCE), None)
        guidance = "none (FLUX.1-schnell)" if scale is None else f"distilled input, default {scale}"
    text = (f"{parts['pipeline']}: prompt -> image, {h}x{w} px (static shapes, fixed at compile time); "
            f"parts {graphs}; guidance {guidance}")
    return {"pipeline": parts["pipeline"], "holds": parts["holds"], "image_size": [h, w],
            "graphs": list(parts["graphs"]), "text": text}
