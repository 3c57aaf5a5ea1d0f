"""Tiny random-weight text-to-image pipelines, saved the way diffusers' ``save_pretrained`` lays them out.

``save_sd_pipeline(root)`` writes ``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/`` and ``scheduler/`` of a StableDiffusionPipeline whose parts are a few thousand
parameters each; the tokenizer is a CLIP byte-level BPE over the 256 byte symbols plus a few merges,
so any prompt tokenizes. ``save_sdxl_pipeline`` adds ``text_encoder_2``/``tokenizer_2`` (a CLIP
text model with projection, whose pooled output feeds ``text_embeds``).
"""

from __future__ import annotations

from pathlib import Path

import torch

SCHEDULER = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False,
             "steps_offset": 1}
MERGES = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>"),
          ("t", "h"), ("th", "e</w>"), ("o", "n</w>"), ("i", "n</w>")]
TOKENS = 77


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer (fast) over the byte alphabet plus ``MERGES``, 77 tokens like every SD tokenizer."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(MERGES), pad_token=pad_token, model_max_length=TOKENS)


def _randomize(model, scale: float = 0.2):
    with torch.no_grad():  # not zero-initialised: zero-init output layers would hide wiring mistakes
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * scale)
    return model.eval()


def text_encoder(dim: int, vocab: int, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=TOKENS, hidden_act="quick_gelu",
                         projection_dim=projection or dim, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                         pad_token_id=vocab - 1)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _randomize(cls(cfg), 0.1)


def vae(latent_channels: int = 4, seed: int = 1, scaling_factor: float = 0.5, shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                          block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          sample_size=16, scaling_factor=scaling_factor, shift_factor=shift_factor)
    return _randomize(model, 0.15)


def sd_unet(cross_dim: int, seed: int = 2, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    cfg = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
           "block_out_channels": [8, 16], "norm_num_groups": 4, "cross_attention_dim": cross_dim,
           "attention_head_dim": 4, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
           "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], **extra}
    return _randomize(UNet2DConditionModel(**cfg), 0.2)


def save_sd_pipeline(root: Path, with_text_encoder: bool = True, with_vae: bool = True) -> Path:
    """A tiny StableDiffusionPipeline saved with ``save_pretrained``; optionally without weights of a part."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tok = clip_tokenizer()
    pipe = StableDiffusionPipeline(vae=vae(), text_encoder=text_encoder(16, len(tok)), tokenizer=tok,
                                   unet=sd_unet(16), scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root, safe_serialization=True)
    for part, keep in (("text_encoder", with_text_encoder), ("vae", with_vae)):
        if not keep:
            for f in (root / part).glob("*.safetensors"):
                f.unlink()
    return root


def save_sdxl_pipeline(root: Path) -> Path:
    """A tiny StableDiffusionXLPipeline: two CLIP encoders (16 + 12 wide, the second with a 12-wide
    projection feeding ``text_embeds``), a text_time UNet with six time ids."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    tok = clip_tokenizer()
    tok2 = clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!" (id 0)
    unet = sd_unet(28, addition_embed_type="text_time", addition_time_embed_dim=4,
                   projection_class_embeddings_input_dim=12 + 6 * 4, use_linear_projection=True,
                   attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2],
                   down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                   up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"])
    pipe = StableDiffusionXLPipeline(vae=vae(), text_encoder=text_encoder(16, len(tok), seed=3),
                                     text_encoder_2=text_encoder(12, len(tok2), projection=12, seed=4),
                                     tokenizer=tok, tokenizer_2=tok2, unet=unet,
                                     scheduler=DDIMScheduler(**SCHEDULER))
    pipe.save_pretrained(root, safe_serialization=True)
    return root


def t5_tokenizer():
    """A T5 (unigram) tokenizer over single letters and a few words; other characters map to <unk>."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789,.!"]
    pieces += [("▁" + c, -3.5) for c in "abcdefghijklmnopqrstuvwxyz"]
    pieces += [("▁" + w, -1.0) for w in ("a", "red", "fox", "in", "the", "snow", "cat", "dog", "photo", "of")]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=120)


def t5_encoder(vocab: int, dim: int = 12, seed: int = 5):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=dim, d_kv=6, d_ff=2 * dim, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gelu_new",
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return _randomize(T5EncoderModel(cfg), 0.2)


def save_pixart_pipeline(root: Path) -> Path:
    """A tiny PixArtAlphaPipeline: T5 encoder (12 wide) + tokenizer, PixArt transformer with learned sigma."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(6)
    transformer = PixArtTransformer2DModel(sample_size=8, in_channels=4, out_channels=8, patch_size=2, num_layers=2,
                                           num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
                                           caption_channels=12, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                                           norm_elementwise_affine=False, norm_eps=1e-6, activation_fn="gelu-approximate",
                                           attention_bias=True)
    tok = t5_tokenizer()
    pipe = PixArtAlphaPipeline(tokenizer=tok, text_encoder=t5_encoder(len(tok)), vae=vae(),
                               transformer=_randomize(transformer, 0.2), scheduler=DDIMScheduler(**SCHEDULER))
    pipe.save_pretrained(root, safe_serialization=True)
    return root


def save_sd3_pipeline(root: Path) -> Path:
    """A tiny StableDiffusion3Pipeline: two CLIP encoders with projections (16 + 12 wide), a 32-wide T5,
    an MM-DiT over 16-channel latents, a VAE with a shift factor, flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(7)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=28, pos_embed_max_size=16)
    tok, tok2, tok3 = clip_tokenizer(), clip_tokenizer(pad_token="!"), t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=_randomize(transformer, 0.2), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(latent_channels=16, scaling_factor=1.5, shift_factor=0.1),
        text_encoder=text_encoder(16, len(tok), projection=16, seed=8), tokenizer=tok,
        text_encoder_2=text_encoder(12, len(tok2), projection=12, seed=9), tokenizer_2=tok2,
        text_encoder_3=t5_encoder(len(tok3), dim=32, seed=10), tokenizer_3=tok3)
    pipe.save_pretrained(root, safe_serialization=True)
    return root


def save_flux_pipeline(root: Path, guidance_embeds: bool = True) -> Path:
    """A tiny guidance-distilled FluxPipeline: CLIP (16 wide, pooled), T5 (12 wide), one double- and one
    single-stream block over packed 16-channel latents, dynamically shifted flow-matching Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(11)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                                         pooled_projection_dim=16, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    tok, tok2 = clip_tokenizer(), t5_tokenizer()
    pipe = FluxPipeline(transformer=_randomize(transformer, 0.2), scheduler=scheduler,
                        vae=vae(latent_channels=16, scaling_factor=0.4, shift_factor=0.1),
                        text_encoder=text_encoder(16, len(tok), seed=12), tokenizer=tok,
                        text_encoder_2=t5_encoder(len(tok2), dim=12, seed=13), tokenizer_2=tok2)
    pipe.save_pretrained(root, safe_serialization=True)
    return root
