"""The rest of a text-to-image pipeline: text encoders, tokenizers and the VAE decoder (compile side).

A diffusers pipeline folder (``model_index.json`` + one subfolder per part, as ``save_pretrained``
writes it) compiles into an artifact that holds the whole prompt-to-image path. What each pipeline
class needs is data, not code: a ``PipelineKind`` in ``KINDS`` names its text encoders, which of
their outputs each backbone input is built from (per diffusers' own ``encode_prompt``), and what the
negative half of a guided batch gets when no negative prompt is given. The runtime
(``dmc.runtimes.text2image``) only follows the ``parts`` section this module writes.

Weights load from safetensors only (``use_safetensors=True``: a folder with only pickled ``.bin``
files is refused). A part without weights is left out with a warning, and the artifact is then a
backbone-only one.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dmc.data.prompts import CHECK_PROMPTS
from dmc.errors import DmcError

TOKENIZER_DIR = "tokenizers"
TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel")


# What a text-encoder graph may output. Names are the graph's output names; each picks one tensor of
# a transformers encoder output called with output_hidden_states=True.
def _last_hidden_state(out, model):
    return out.last_hidden_state


def _penultimate_hidden_state(out, model):  # SDXL: hidden_states[-2], before the final layer norm
    return out.hidden_states[-2]


def _text_embeds(out, model):  # CLIPTextModelWithProjection's pooled projection (SDXL's text_embeds)
    return out.text_embeds


def _pooler_output(out, model):  # CLIPTextModel's pooled state (Flux's pooled_projections)
    return out.pooler_output


TEXT_OUTPUTS = {"last_hidden_state": _last_hidden_state, "penultimate_hidden_state": _penultimate_hidden_state,
                "text_embeds": _text_embeds, "pooler_output": _pooler_output}


@dataclass(frozen=True)
class EncoderSpec:
    part: str  # subfolder of the text encoder
    tokenizer: str  # subfolder of its tokenizer
    outputs: tuple[str, ...]  # keys of TEXT_OUTPUTS
    mask: bool = False  # the encoder takes the tokenizer's attention_mask (T5 in PixArt)
    max_length: int | None = None  # the pipeline's own length (PixArt-α: 120), else the tokenizer's
    # the pipeline runs without this encoder, feeding zeros [max_length, backbone config's <zeros_width>] for its
    # outputs (SD3 without T5); None: a folder without it compiles the backbone only
    zeros_width: str | None = None


@dataclass(frozen=True)
class Sequence:
    """A backbone input made of segments one after another on the token axis, each a features join
    zero-padded to the widest (SD3's ``encoder_hidden_states``: both CLIPs, padded to T5's width, then T5)."""

    segments: tuple[tuple[tuple[str, str], ...], ...]

    def to_json(self) -> dict:
        return {"sequence": [[list(src) for src in seg] for seg in self.segments]}


def _condition_json(sources) -> list | dict:
    return sources.to_json() if isinstance(sources, Sequence) else [list(src) for src in sources]


@dataclass(frozen=True)
class PipelineKind:
    """How one diffusers pipeline class turns prompts into backbone inputs.

    ``conditions`` maps a backbone input to the encoder outputs concatenated (last axis) to make it, or to
    a ``Sequence`` of such groups concatenated on the token axis;
    ``negative`` is ``encode`` (an empty negative prompt is encoded, as StableDiffusionPipeline does) or
    ``zeros_if_none`` (no negative prompt -> zero embeddings, SDXL's ``force_zeros_for_empty_prompt``).
    ``size_conditions`` are backbone inputs computed from the image size (SDXL's ``time_ids``).
    """

    name: str
    encoders: tuple[EncoderSpec, ...]
    conditions: dict[str, tuple[tuple[str, str], ...]]
    negative: str = "encode"
    negative_flag: str | None = None  # model_index.json key that may switch ``negative`` back to encode
    size_conditions: tuple[str, ...] = ()
    default_guidance: float = 7.5
    lowercase: bool = False  # the pipeline lower-cases and strips prompts first (PixArt without clean_caption)
    distilled_guidance: bool = False  # the scale is a backbone input set at run time (Flux), never a CFG batch


KINDS = {
    "StableDiffusionPipeline": PipelineKind(
        "StableDiffusionPipeline", (EncoderSpec("text_encoder", "tokenizer", ("last_hidden_state",)),),
        {"encoder_hidden_states": (("text_encoder", "last_hidden_state"),)}),
    "StableDiffusionXLPipeline": PipelineKind(
        "StableDiffusionXLPipeline",
        (EncoderSpec("text_encoder", "tokenizer", ("penultimate_hidden_state",)),
         EncoderSpec("text_encoder_2", "tokenizer_2", ("penultimate_hidden_state", "text_embeds"))),
        {"encoder_hidden_states": (("text_encoder", "penultimate_hidden_state"),
                                   ("text_encoder_2", "penultimate_hidden_state")),
         "text_embeds": (("text_encoder_2", "text_embeds"),)},
        negative="zeros_if_none", negative_flag="force_zeros_for_empty_prompt", size_conditions=("time_ids",),
        default_guidance=5.0),
    # T5 states with their padding mask, which the transformer also receives (``attention_mask`` below is
    # the tokenizer's mask, not an encoder output)
    "PixArtAlphaPipeline": PipelineKind(
        "PixArtAlphaPipeline",
        (EncoderSpec("text_encoder", "tokenizer", ("last_hidden_state",), mask=True, max_length=120),),
        {"encoder_hidden_states": (("text_encoder", "last_hidden_state"),),
         "encoder_attention_mask": (("text_encoder", "attention_mask"),)},
        default_guidance=4.5, lowercase=True),
    # StableDiffusion3Pipeline.encode_prompt: both CLIPs' penultimate states side by side, zero-padded to T5's
    # width, then T5's 256 tokens; the pooled input is both CLIPs' projections; T5 gets no mask.
    "StableDiffusion3Pipeline": PipelineKind(
        "StableDiffusion3Pipeline",
        (EncoderSpec("text_encoder", "tokenizer", ("penultimate_hidden_state", "text_embeds"), max_length=77),
         EncoderSpec("text_encoder_2", "tokenizer_2", ("penultimate_hidden_state", "text_embeds"), max_length=77),
         EncoderSpec("text_encoder_3", "tokenizer_3", ("last_hidden_state",), max_length=256,
                     zeros_width="joint_attention_dim")),
        {"encoder_hidden_states": Sequence(((("text_encoder", "penultimate_hidden_state"),
                                             ("text_encoder_2", "penultimate_hidden_state")),
                                            (("text_encoder_3", "last_hidden_state"),))),
         "pooled_projections": (("text_encoder", "text_embeds"), ("text_encoder_2", "text_embeds"))},
        default_guidance=7.0),
    # FluxPipeline.encode_prompt: CLIP's pooled state, T5's 512 tokens (no mask); guidance-distilled, so no CFG
    # batch by default (the ``guidance`` input carries the scale) and no negative encoding unless one is given
    "FluxPipeline": PipelineKind(
        "FluxPipeline",
        (EncoderSpec("text_encoder", "tokenizer", ("pooler_output",), max_length=77),
         EncoderSpec("text_encoder_2", "tokenizer_2", ("last_hidden_state",), max_length=512)),
        {"encoder_hidden_states": (("text_encoder_2", "last_hidden_state"),),
         "pooled_projections": (("text_encoder", "pooler_output"),)},
        negative="zeros_if_none", default_guidance=1.0, distilled_guidance=True),
}


def size_condition(name: str, height: int, width: int) -> list[float]:
    """SDXL's ``time_ids``: original size, crop top-left, target size, as its pipeline defaults them."""
    if name == "time_ids":
        return [float(height), float(width), 0.0, 0.0, float(height), float(width)]
    raise KeyError(name)


@dataclass
class PipelineFolder:
    """A pipeline folder read from its JSON files (no weights loaded yet)."""

    root: Path
    kind: PipelineKind
    index: dict
    missing: list[str] = field(default_factory=list)  # parts without (safetensors) weights: left out
    absent: list[EncoderSpec] = field(default_factory=list)  # optional encoders the folder lacks: zeros instead

    @property
    def negative(self) -> str:
        if self.kind.negative_flag and self.index.get(self.kind.negative_flag) is False:
            return "encode"
        return self.kind.negative

    def vae_factor(self) -> int:
        cfg = _read_json(self.root / "vae" / "config.json")
        return 2 ** (len(cfg.get("block_out_channels", [0, 0, 0, 0])) - 1)

    @property
    def complete(self) -> bool:
        return not self.missing


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DmcError(f"{path}: not a readable JSON file ({e})") from None


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.safetensors"))


def open_pipeline_folder(source: str) -> PipelineFolder | None:
    """The pipeline folder at ``source``, or None when ``source`` is not one (a bare model folder or file)."""
    root = Path(source)
    if not (root.is_dir() and (root / "model_index.json").is_file()):
        return None
    index = _read_json(root / "model_index.json")
    name = index.get("_class_name")
    if name not in KINDS:
        warnings.warn(f"{root}: pipeline class {name!r} has no text-to-image support yet (have: "
                      f"{', '.join(KINDS)}); compiling the backbone only", stacklevel=2)
        return None
    kind = KINDS[name]
    missing, absent = [], []
    for enc in kind.encoders:
        if enc.zeros_width and not _has_weights(root / enc.part):
            absent.append(enc)
            continue
        if not _has_weights(root / enc.part):
            missing.append(enc.part)
        if not (root / enc.tokenizer).is_dir():
            missing.append(enc.tokenizer)
    if not _has_weights(root / "vae"):
        missing.append("vae")
    return PipelineFolder(root, kind, index, missing, absent)


def missing_warning(folder: PipelineFolder) -> str:
    return (f"{folder.root}: pipeline folder lacks {', '.join(folder.missing)} (safetensors weights); compiled the "
            "backbone only, so this artifact cannot turn prompts into images")


class TextEncoderGraph(nn.Module):
    """``input_ids [B, S]`` -> the encoder outputs this pipeline uses, in ``outputs`` order."""

    def __init__(self, model: nn.Module, outputs: tuple[str, ...]):
        super().__init__()
        self.model = model.eval()
        self.outputs = outputs

    def forward(self, input_ids, attention_mask=None):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         return_dict=True)
        return tuple(TEXT_OUTPUTS[name](out, self.model) for name in self.outputs)


class VaeDecoderGraph(nn.Module):
    """``latent [B, C, h, w]`` (already unscaled) -> ``image [B, 3, H, W]`` in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.eval()

    def forward(self, latent):
        return self.vae.decode(latent, return_dict=False)[0]


@dataclass
class Parts:
    """What the parts add to an artifact: graphs, files, the manifest section, torch twins for checks."""

    graphs: dict = field(default_factory=dict)  # name -> onnx.ModelProto
    modules: dict = field(default_factory=dict)  # name -> torch module computing the same
    files: dict = field(default_factory=dict)  # path in artifact -> bytes
    section: dict = field(default_factory=dict)  # manifest["parts"]
    tokenizers: dict = field(default_factory=dict)  # encoder part -> transformers tokenizer (compile side)
    checks: dict = field(default_factory=dict)  # INT8 part -> held-out inputs and torch outputs (quantize/parts)


def _load_text_encoder(folder: Path, class_name: str):
    import transformers

    if class_name not in TEXT_ENCODER_CLASSES:
        raise DmcError(f"{folder}: text encoder class {class_name!r} is not supported "
                       f"(supported: {', '.join(TEXT_ENCODER_CLASSES)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(transformers, class_name).from_pretrained(folder, use_safetensors=True)
    return model.float().eval().requires_grad_(False)


def _tokenizer_json(folder: Path):
    """The fast tokenizer of ``folder`` (transformers converts vocab.json + merges.txt when needed) and its
    ``tokenizer.json`` with padding and truncation cleared: the manifest states them explicitly."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder, use_fast=True)
    except Exception as e:
        raise DmcError(f"{folder}: tokenizer cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise DmcError(f"{folder}: tokenizer has no fast (tokenizers) form to ship with the artifact")
    data = json.loads(backend.to_str())
    data["padding"], data["truncation"] = None, None
    return tok, json.dumps(data, ensure_ascii=False).encode()


def _load_vae(root: Path):
    from diffusers import AutoencoderKL

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=True).float().eval()
    return vae.requires_grad_(False)


def _encoder_class(folder: PipelineFolder, part: str) -> str:
    entry = folder.index.get(part)
    if isinstance(entry, list) and len(entry) == 2 and entry[1]:
        return entry[1]
    return (_read_json(folder.root / part / "config.json").get("architectures") or [""])[0]


def build_parts(folder: PipelineFolder, image_size: tuple[int, int], opset: int) -> Parts:
    """Load and export every text encoder and the VAE decoder of ``folder`` for images of ``image_size``."""
    from dmc.compress.pipeline import _io
    from dmc.export.onnx_export import export_onnx

    kind = folder.kind
    parts = Parts()
    encoders = []
    for enc in [e for e in kind.encoders if e not in folder.absent]:
        model = _load_text_encoder(folder.root / enc.part, _encoder_class(folder, enc.part))
        tok, tok_json = _tokenizer_json(folder.root / enc.tokenizer)
        max_length = enc.max_length or int(min(tok.model_max_length, model.config.max_position_embeddings))
        graph = TextEncoderGraph(model, enc.outputs)
        example = tok(["a", "a photo"], padding="max_length", max_length=max_length, truncation=True)
        inputs = (torch.tensor(example.input_ids, dtype=torch.int64),)
        if enc.mask:
            inputs += (torch.tensor(example.attention_mask, dtype=torch.int64),)
        names = ["input_ids", "attention_mask"][:len(inputs)]
        parts.graphs[enc.part] = export_onnx(graph, inputs, names, list(enc.outputs), opset)
        parts.modules[enc.part] = graph
        parts.tokenizers[enc.part] = tok
        rel = f"{TOKENIZER_DIR}/{enc.tokenizer}.json"
        parts.files[rel] = tok_json
        encoders.append({"graph": enc.part, "tokenizer": rel, "max_length": max_length,
                         "pad_id": int(tok.pad_token_id), "outputs": list(enc.outputs), "mask": enc.mask,
                         "class": type(model).__name__})
    vae = _load_vae(folder.root)
    factor = folder.vae_factor()
    h, w = image_size
    latent = torch.randn(2, vae.config.latent_channels, h // factor, w // factor)
    decoder = VaeDecoderGraph(vae)
    parts.graphs["vae_decoder"] = export_onnx(decoder, (latent,), ["latent"], ["image"], opset)
    parts.modules["vae_decoder"] = decoder
    cfg = vae.config
    parts.section = {
        "pipeline": kind.name,
        "holds": [p for enc in kind.encoders if enc not in folder.absent for p in (enc.tokenizer, enc.part)]
                 + ["backbone", "vae_decoder"],
        "zero_outputs": {f"{enc.part}/{out}": [enc.max_length, _backbone_config(folder)[enc.zeros_width]]
                         for enc in folder.absent for out in enc.outputs},
        "image_size": [h, w],
        "static_shapes": True,
        "text_encoders": encoders,
        "conditions": {name: _condition_json(srcs) for name, srcs in kind.conditions.items()},
        "size_conditions": {name: size_condition(name, h, w) for name in kind.size_conditions},
        "negative": folder.negative,
        "lowercase": kind.lowercase,
        "distilled_guidance": kind.distilled_guidance,
        "default_guidance": kind.default_guidance,
        "vae": {"graph": "vae_decoder", "factor": factor, "scaling_factor": float(cfg.scaling_factor),
                "shift_factor": None if cfg.get("shift_factor") is None else float(cfg.shift_factor),
                "latents_mean": cfg.get("latents_mean"), "latents_std": cfg.get("latents_std")},
        "graphs": {name: {"file": f"graphs/{name}.onnx", "computes": _computes(name),
                          "precision": "fp32", "inputs": [_io(i) for i in g.graph.input],
                          "outputs": [_io(o) for o in g.graph.output]}
                   for name, g in parts.graphs.items()},
    }
    return parts


def _backbone_config(folder: PipelineFolder) -> dict:
    for part in ("transformer", "unet"):
        if (folder.root / part / "config.json").is_file():
            return _read_json(folder.root / part / "config.json")
    raise DmcError(f"{folder.root}: no transformer/ or unet/ config")


def absent_note(folder: PipelineFolder) -> str:
    return (f"{folder.root}: no {', '.join(e.part for e in folder.absent)} weights; its states are zeros, as "
            f"{folder.kind.name} does without it")


def _computes(name: str) -> str:
    return "VAE decoder: latents -> image" if name == "vae_decoder" else f"{name}: token ids -> text states"


def pipeline_root(source: str | Path) -> Path | None:
    """The pipeline folder of ``source``: the folder itself, or the one holding this backbone subfolder."""
    path = Path(source)
    for root in (path, path.parent):
        if root.is_dir() and (root / "model_index.json").is_file():
            return root
    return None


def torch_parts_executor(source: str | Path, section: dict):
    """The artifact's part graphs as their torch modules, loaded from the pipeline folder at ``source``:
    the uncompressed side of ``dmc eval`` / ``report`` / ``bench`` for text-to-image artifacts."""
    from dmc.compress.torch_executor import TorchExecutor

    root = pipeline_root(source)
    folder = open_pipeline_folder(str(root)) if root is not None else None
    if folder is None or not folder.complete:
        raise DmcError(f"{source}: not a complete diffusers pipeline folder (model_index.json, text encoder(s), "
                       "tokenizer(s), vae/), so it cannot be the reference of a text-to-image artifact")
    if folder.kind.name != section["pipeline"]:
        raise DmcError(f"{root}: a {folder.kind.name} folder, but the artifact is a {section['pipeline']}")
    modules, inputs, outputs = {}, {}, {}
    for enc in section["text_encoders"]:
        name = enc["graph"]
        model = _load_text_encoder(root / name, _encoder_class(folder, name))
        modules[name] = TextEncoderGraph(model, tuple(enc["outputs"]))
        inputs[name] = ["input_ids"] + (["attention_mask"] if enc.get("mask") else [])
        outputs[name] = list(enc["outputs"])
    vae = section["vae"]["graph"]
    modules[vae], inputs[vae], outputs[vae] = VaeDecoderGraph(_load_vae(root)), ["latent"], ["image"]
    return TorchExecutor(modules, inputs, outputs)


def torch_tokenize(parts: Parts, enc: dict, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """What diffusers' pipeline feeds its text encoder (transformers tokenizer, the pipeline's preprocessing)."""
    if parts.section.get("lowercase"):
        prompts = [p.lower().strip() for p in prompts]
    out = parts.tokenizers[enc["graph"]](list(prompts), padding="max_length", max_length=enc["max_length"],
                                         truncation=True, return_attention_mask=True)
    return np.asarray(out.input_ids, np.int64), np.asarray(out.attention_mask, np.int64)


def torch_encode(parts: Parts, enc: dict, prompts: list[str]) -> dict[str, np.ndarray]:
    """The torch text encoder's outputs for ``prompts`` (and the tokenizer's ``attention_mask``)."""
    ids, mask = torch_tokenize(parts, enc, prompts)
    inputs = (torch.from_numpy(ids),) + ((torch.from_numpy(mask),) if enc.get("mask") else ())
    with torch.no_grad():
        values = parts.modules[enc["graph"]](*inputs)
    return {**{name: v.numpy() for name, v in zip(enc["outputs"], values)},
            "attention_mask": mask.astype(np.float32)}


def verify_parts(parts: Parts, root: Path, manifest: dict, prompts: tuple[str, ...] = CHECK_PROMPTS) -> dict:
    """Each written part graph against its torch module: text encoders on ``prompts``, the decoder on a
    seeded latent. Returns the largest absolute differences; raises below the floor."""
    from dmc.artifact import Manifest
    from dmc.runtimes.text2image import open_parts
    from dmc.runtimes.tokenize import Tokenizer

    executor = open_parts(Manifest(root, manifest), "onnxruntime", ["CPUExecutionProvider"], None)
    result = {}
    for enc in manifest["parts"]["text_encoders"]:
        prompts = [p.lower().strip() for p in prompts] if manifest["parts"].get("lowercase") else list(prompts)
        ids, mask = Tokenizer(root / enc["tokenizer"], enc["max_length"], enc["pad_id"]).encode_with_mask(prompts)
        want_ids, want_mask = torch_tokenize(parts, enc, prompts)
        if not (np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)):
            raise DmcError(f"verification failed: the shipped {enc['graph']} tokenizer disagrees with transformers "
                           "on the check prompts; nothing was written")
        if enc["graph"] in parts.checks:  # INT8: PSNR on held-out inputs below, not max abs
            continue
        got = executor.run(enc["graph"], {"input_ids": ids, **({"attention_mask": mask} if enc.get("mask") else {})})
        want = torch_encode(parts, enc, prompts)
        result[enc["graph"]] = max(float(np.abs(executor.to_numpy(g) - want[name]).max())
                                   for g, name in zip(got, enc["outputs"]))
    vae = manifest["parts"]["vae"]
    if vae["graph"] not in parts.checks:
        spec = manifest["parts"]["graphs"]["vae_decoder"]["inputs"][0]["shape"]
        latent = np.random.default_rng(0).standard_normal((2, *spec[1:]), dtype=np.float32)
        got = executor.to_numpy(executor.run(vae["graph"], {"latent": latent})[0])
        with torch.no_grad():
            want = parts.modules["vae_decoder"](torch.from_numpy(latent)).numpy()
        result["vae_decoder"] = float(np.abs(got - want).max())
    worst = max(result.values(), default=0.0)
    if not worst < 1e-3:
        raise DmcError(f"verification failed: a pipeline part differs from torch (max abs {worst:.2e}); "
                       "nothing was written")
    out = {"max_abs": result, "prompts": len(prompts)}
    if parts.checks:  # INT8 parts: PSNR on held-out inputs against a floor, as the backbone is verified
        from dmc.quantize.parts import check_written

        out["int8_psnr_db"] = check_written(executor, parts, manifest["parts"]["int8"]["floor_psnr_db"])
    return out


def plan(source: str, recipe, image_size: tuple[int, int] | None, config_path: str | None = None):
    """Before the backbone loads: the pipeline folder (or None), the recipe with the latent resolution of
    ``image_size`` and the pipeline's default guidance, and warnings for the manifest."""
    from dmc.models.loading import inspect_source

    folder = open_pipeline_folder(source)
    notes = []
    if folder is not None and not folder.complete:
        notes.append(missing_warning(folder))
        warnings.warn(notes[-1], stacklevel=2)
    if folder is not None and folder.complete and folder.absent:
        notes.append(absent_note(folder))
        warnings.warn(notes[-1], stacklevel=2)
    if folder is not None and folder.kind.distilled_guidance and (recipe.guidance or 1.0) > 1.0:
        raise DmcError(f"{folder.kind.name} is guidance-distilled: its scale is an input chosen at run time "
                       "(dmc run --guidance G, default 3.5), not a CFG batch; compile without --guidance")
    if folder is not None and folder.complete and recipe.guidance is None:
        recipe = dataclasses.replace(recipe, guidance=folder.kind.default_guidance)
    if image_size is not None:
        h, w = image_size
        if folder is not None and (folder.root / "vae" / "config.json").exists():
            factor = folder.vae_factor()
        else:  # a bare backbone: pixel models draw pixels, latent ones work at the usual VAE factor 8
            config = inspect_source(source, config_path).config or {}
            factor = 1 if config.get("in_channels") in (1, 3) else 8
        if h <= 0 or w <= 0 or h % factor or w % factor:
            raise DmcError(f"--size {h} {w}: both must be positive multiples of the VAE factor {factor}")
        recipe = dataclasses.replace(recipe, resolution=(h // factor, w // factor))
    return (folder if folder is not None and folder.complete else None), recipe, notes


def image_size_of(folder: PipelineFolder, sample_shape) -> tuple[int, int]:
    factor = folder.vae_factor()
    return (sample_shape[1] * factor, sample_shape[2] * factor)


class PromptConditions:
    """Backbone conditions of a prompt set (torch text encoders, at compile time): what calibration and cache
    schedules see, so INT8 ranges and refresh schedules are fitted under real prompts with guidance.

    Trajectory ``first + i`` uses prompt ``(first + i) mod P``; the negative half gets the empty prompt's
    encoding, or zeros where the pipeline zeroes a missing negative prompt (SDXL).
    """

    def __init__(self, parts: Parts, prompts: list[str], source: str):
        self.prompts, self.source = list(prompts), source
        section = parts.section
        self.cond = self._encode(parts, self.prompts)
        self.cond.update({k: np.broadcast_to(np.asarray(v, np.float32), (len(self.prompts), len(v)))
                          for k, v in section.get("size_conditions", {}).items()})
        self.uncond = None
        if section["negative"] == "encode":
            empty = self._encode(parts, [""])
            self.uncond = {k: np.repeat(v, len(self.prompts), axis=0) for k, v in empty.items()}

    @staticmethod
    def _encode(parts: Parts, prompts: list[str]) -> dict[str, np.ndarray]:
        from dmc.runtimes.text2image import join_conditions, zero_outputs

        section = parts.section
        outs = zero_outputs(section, len(prompts))
        for enc in section["text_encoders"]:
            outs.update({(enc["graph"], k): v for k, v in torch_encode(parts, enc, prompts).items()})
        return join_conditions(section["conditions"], outs)

    def for_images(self, first: int, n: int) -> tuple[dict, dict | None]:
        idx = (first + np.arange(n)) % len(self.prompts)
        cond = {k: np.ascontiguousarray(v[idx]) for k, v in self.cond.items()}
        uncond = None if self.uncond is None else {k: np.ascontiguousarray(v[idx]) for k, v in self.uncond.items()}
        return cond, uncond

    def wrap(self, pipe):
        """``pipe`` (a sampler ``Pipeline``) whose ``sample`` uses this prompt set when given no conditions."""
        return with_conditions(pipe, self)

    def to_json(self) -> dict:
        return {"prompts": len(self.prompts), "source": self.source}


def _prompt_pipeline_class():
    from dmc.runtimes.pipeline import Pipeline

    class _PromptPipeline(Pipeline):
        def sample(self, n=1, seed=None, *args, first=0, conditions=None, uncond_conditions=None,
                   embeddings=None, **kwargs):
            if conditions is None and embeddings is None:
                conditions, given_uncond = self.prompt_conditions.for_images(first, n)
                uncond_conditions = uncond_conditions if uncond_conditions is not None else given_uncond
            return super().sample(n, seed, *args, first=first, conditions=conditions,
                                  uncond_conditions=uncond_conditions, embeddings=embeddings, **kwargs)

    return _PromptPipeline


PromptPipeline = _prompt_pipeline_class()


def with_conditions(pipe, conditions):
    """``pipe`` whose ``sample`` takes image i's conditions from ``conditions.for_images(first, n)`` when
    given none: prompts here, a policy's observation histories (``dmc.policies.conditions``)."""
    wrapped = PromptPipeline.__new__(PromptPipeline)
    wrapped.__dict__.update(pipe.__dict__)
    wrapped.prompt_conditions = conditions
    return wrapped


def calibration_conditions(parts: Parts, prompts: list[str] | None) -> PromptConditions:
    from dmc.data.prompts import CALIBRATION_PROMPTS

    if prompts:
        return PromptConditions(parts, prompts, "file")
    return PromptConditions(parts, list(CALIBRATION_PROMPTS), "built-in")


def verification_conditions(parts: Parts) -> PromptConditions:
    """What the compile's verification samples under: prompts held out from calibration (``EVAL_PROMPTS``)."""
    from dmc.data.prompts import EVAL_PROMPTS

    return PromptConditions(parts, list(EVAL_PROMPTS), "built-in evaluation")
