"""End-to-end prompt-to-image latency, per stage, and peak runtime memory of text-to-image artifacts (issue #11).

Builds a random-weight StableDiffusionPipeline folder at realistic part sizes and saves it the way diffusers does:
- text encoder: CLIP ViT-L/14's text tower (12 layers, 768 wide, 49408 tokens; SD 1.x's encoder, 123 M);
- VAE: SD's AutoencoderKL config (128/256/512/512, 2 layers per block; 84 M), decoding at the image size;
- UNet: ``sdmid`` of bench_compile_cost.py (SD 1.5's layout at half the widths, 160/320/640/640; 215 M).
The tokenizer is a byte-level CLIP BPE (any prompt tokenizes; ids stay below the encoder's vocabulary).

Then it compiles an FP32 artifact and an ``--int8 --cache`` one (``dmc compress``, CLI defaults otherwise) and
runs ``dmc bench ARTIFACT --vs OTHER --json`` on pairs: the stage breakdown (text encoding, denoising, decoding)
and each side's peak RSS in a fresh process. Random weights: latency and memory do not depend on them, quality
does (the INT8 compile's fidelity floor is lowered with ``--fidelity-floor``, and no quality figure is quoted).

    nice python bench/bench_text2image.py --work /tmp/t2i-bench --out bench/results/text2image.json
    nice python bench/bench_text2image.py --size 256 --steps 10 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
SDMID_UNET = dict(in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(160, 320, 640, 640),
                  cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                  down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                 prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=77)


def build_pipeline(folder: Path, size: int) -> dict:
    """Save the random-weight pipeline under ``folder``; returns each part's parameter count."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tok = _tokenizer()
    ids = tok.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    text = CLIPTextModel(CLIPTextConfig(**CLIP_L, bos_token_id=ids[0], eos_token_id=ids[1], pad_token_id=ids[1]))
    vae = AutoencoderKL(**SD_VAE, sample_size=size)
    unet = UNet2DConditionModel(**SDMID_UNET, sample_size=size // 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline(vae=vae.eval(), text_encoder=text.eval(), tokenizer=tok, unet=unet.eval(),
                                       scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
    return {name: sum(p.numel() for p in m.parameters()) for name, m in
            (("text_encoder", text), ("vae", vae), ("unet", unet))}


def _run(argv: list[str], log: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    log.write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, proc.stdout


def _stage_table(doc: dict) -> dict:
    side = {}
    for key in ("artifact", "vs"):
        d = doc[key]
        side[key] = {"target": d["target"], "calls_per_image": d["calls_per_image"],
                     "per_image_ms": d["end_to_end_per_image"]["median_ms"],
                     "stages_ms": {k: v["median_ms"] for k, v in d.get("stages_per_image", {}).items()},
                     "peak_rss_mb": (d.get("memory") or {}).get("peak_rss_mb")}
    return side


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/t2i-bench"))
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (latents are size/8)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--int8-floor", type=float, default=0.0,
                    help="--fidelity-floor of the INT8 compile (random weights: quality is not what is measured)")
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "sd-pipeline"
    result = {"size": args.size, "steps": args.steps, "repeats": args.repeats}
    if not (folder / "model_index.json").exists():
        result["params"] = build_pipeline(folder, args.size)
    dmc = [sys.executable, "-m", "dmc.cli"]
    common = ["--steps", str(args.steps), "--verify-images", "1", "--force"]
    compiles = {"fp32": [], "int8-cache": ["--int8", "--cache", "--fidelity-floor", str(args.int8_floor)]}
    result["compile_s"] = {}
    for name, extra in compiles.items():
        out = work / f"{name}.dmc"
        wall, _ = _run(dmc + ["compress", str(folder), "--out", str(out)] + common + extra, work / f"{name}.log")
        result["compile_s"][name] = round(wall, 1)
        print(f"compiled {name} in {wall:.0f} s", file=sys.stderr, flush=True)
    threads = ["--threads", str(args.threads)] if args.threads else []
    bench = dmc + ["bench", "--repeats", str(args.repeats), "--warmup", "1", "--json"] + threads
    pairs = {"int8-cache_vs_fp32": [str(work / "int8-cache.dmc"), "--vs", str(work / "fp32.dmc")],
             "fp32_vs_torch": [str(work / "fp32.dmc"), "--vs", str(folder)]}
    result["bench"] = {}
    for name, target in pairs.items():
        _, stdout = _run(bench + target, work / f"bench-{name}.log")
        doc = json.loads(stdout)
        result["bench"][name] = {"ratio_per_image": doc["ratio"]["end_to_end"]["median"],
                                 **_stage_table(doc)}
        print(json.dumps(result["bench"][name], indent=1), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
