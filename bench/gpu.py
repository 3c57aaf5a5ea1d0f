"""GPU figures for issue #13: per-call and end-to-end latency of each engine, skipping what cannot run.

Rows: torch eager FP16 (CUDA), ORT CUDA EP, ORT TensorRT EP, dmc TensorRT engines (FP16, INT8,
INT8 + cache), on the mid-size UNet (64,128,128 @ 32x32) and the SD 1.5 UNet config (4x64x64 latents,
random weights, 77x768 text states). Every row that cannot run here prints its reason.

    python bench/gpu.py [--artifacts DIR] [--repeats 20] [--json out.json]

``--artifacts DIR`` may hold prebuilt ``mid-fp32.dmc``, ``mid-int8.dmc`` (trt profile) and
``mid-int8-cache.dmc`` with engines (``dmc build-engine``); missing ones are reported, not built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

MODELS = {
    "mid-unet": {"kind": "UNet2DModel", "batch": 2, "shape": (3, 32, 32),
                 "config": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                                layers_per_block=1, attention_head_dim=32,
                                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))},
    "sd15-unet": {"kind": "UNet2DConditionModel", "batch": 2, "shape": (4, 64, 64),
                  "config": dict(sample_size=64, cross_attention_dim=768)},  # diffusers defaults = SD 1.5 layout
}


def _median_ms(fn, repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), sorted(times)[int(0.9 * (len(times) - 1))]


def row_torch_fp16(model: str, repeats: int):
    import torch

    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    import diffusers

    spec = MODELS[model]
    net = getattr(diffusers, spec["kind"])(**spec["config"]).half().cuda().eval()
    x = torch.randn(spec["batch"], *spec["shape"], device="cuda", dtype=torch.half)
    t = torch.full((spec["batch"],), 500, device="cuda")
    kw = {"encoder_hidden_states": torch.randn(spec["batch"], 77, 768, device="cuda", dtype=torch.half)} \
        if spec["kind"] == "UNet2DConditionModel" else {}

    def call():
        with torch.inference_mode():
            net(x, t, **kw)
        torch.cuda.synchronize()
    return _median_ms(call, repeats), None


def row_ort(provider: str, model: str, repeats: int):
    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return None, f"ONNX Runtime {ort.__version__} has no {provider} (providers: {ort.get_available_providers()})"
    return None, "needs an exported graph of this model on the GPU machine (export runs there); not run"


def row_dmc_trt(variant: str, artifacts: Path | None, repeats: int):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return None, "TensorRT is not installed (not installable in this workplace)"
    if artifacts is None or not (artifacts / f"mid-{variant}.dmc").is_dir():
        return None, f"no prebuilt artifact mid-{variant}.dmc with engines under --artifacts"
    from dmc.runtimes import load

    pipe = load(artifacts / f"mid-{variant}.dmc", backend="tensorrt")
    n = pipe.executor.images_per_call
    return _median_ms(lambda: pipe(n=n, seed=0, batch_size=n), repeats), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    for model in MODELS:
        for name, fn in (("torch eager fp16", lambda m=model: row_torch_fp16(m, args.repeats)),
                         ("ort cuda", lambda m=model: row_ort("CUDAExecutionProvider", m, args.repeats)),
                         ("ort tensorrt-ep", lambda m=model: row_ort("TensorrtExecutionProvider", m, args.repeats))):
            rows.append((model, name, "per call", *_safe(fn)))
    for variant in ("fp16", "int8", "int8-cache"):
        rows.append(("mid-unet", f"dmc trt {variant}", "end to end",
                     *_safe(lambda v=variant: row_dmc_trt(v, args.artifacts, args.repeats))))
    ran = 0
    for model, name, what, result, reason in rows:
        if result is None:
            print(f"SKIP {model:<10} {name:<18} {what:<10} {reason}")
        else:
            ran += 1
            print(f"RAN  {model:<10} {name:<18} {what:<10} median {result[0]:.2f} ms  p90 {result[1]:.2f} ms")
    print(f"{ran} of {len(rows)} rows ran")
    if args.json:
        args.json.write_text(json.dumps([dict(zip(("model", "row", "what", "ms", "skip"), r)) for r in rows], indent=2))
    return 0


def _safe(fn):
    try:
        return fn()
    except Exception as e:  # a row that breaks is reported, not fatal
        return None, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


if __name__ == "__main__":
    raise SystemExit(main())
