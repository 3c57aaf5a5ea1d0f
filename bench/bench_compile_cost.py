"""What a compile costs: wall time and peak RSS of ``dmc compress`` FP32 and ``--int8``.

Models (random weights; cost does not depend on them):
- ``sd15``: a full-size Stable Diffusion 1.5 UNet (``UNet2DConditionModel`` with diffusers' SD 1.5
  values: block_out_channels (320, 640, 1280, 1280), cross_attention_dim 768, attention_head_dim 8,
  layers_per_block 2, sample_size 64; 859.5 M parameters), in a pipeline folder (``unet/``,
  ``scheduler/scheduler_config.json`` with SD 1.5's scaled-linear schedule).
- ``unet64``: the 35.7 M mid-size ``UNet2DModel`` of bench_fp32.py / bench_int8.py (64x64x3).

Each compile runs ``dmc compress`` in its own subprocess; peak RSS is that child's
maximum resident set size as GNU ``/usr/bin/time -f %M`` reports it.

    nice python bench/bench_compile_cost.py --out bench/results/compile_cost.json
    nice python bench/bench_compile_cost.py --only unet64-fp32 unet64-int8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32,
)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "prediction_type": "epsilon", "clip_sample": False,
}
# name -> (model, extra dmc compress arguments)
RUNS = {
    "unet64-fp32": ("unet64", []),
    "unet64-int8": ("unet64", ["--int8"]),
    "sd15-fp32": ("sd15", []),
    "sd15-int8": ("sd15", ["--int8"]),
}


def build_sd15(root: Path) -> tuple[Path, int]:
    import diffusers
    import torch

    folder = root / "sd15"
    if not (folder / "unet" / "config.json").exists():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = diffusers.UNet2DConditionModel.from_config(SD15_UNET)
        unet.save_pretrained(folder / "unet")
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
        del unet
    return folder, 859_520_964


def build_unet64(root: Path) -> tuple[Path, int]:
    import diffusers
    import torch

    from dmc.models.builtin import SCHEDULER_CONFIG
    from dmc.models.checkpoint import save_model

    path = root / "unet64.safetensors"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = diffusers.UNet2DModel(
            sample_size=64, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    params = sum(p.numel() for p in model.parameters())
    if not path.exists():
        save_model(model.eval(), path, SCHEDULER_CONFIG)
    return path, params


BUILDERS = {"sd15": build_sd15, "unet64": build_unet64}


def run_compile(source: Path, out: Path, extra: list[str], timeout: float) -> dict:
    """One ``dmc compress`` in a child process: wall time, peak RSS (GNU time's %M), exit status."""
    cmd = [sys.executable, "-m", "dmc.cli", "compress", str(source), "--out", str(out), "--force", *extra]
    t = time.time()
    try:
        proc = subprocess.run(["/usr/bin/time", "-f", "DMC_PEAK_KB=%M", *cmd], capture_output=True, text=True,
                              timeout=timeout)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = "timeout", e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.time() - t
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    peak = [int(ln.split("=")[1]) for ln in lines if ln.startswith("DMC_PEAK_KB=")]
    other = [ln for ln in lines if not ln.startswith(("DMC_PEAK_KB=", "Command exited", "Command terminated"))]
    return {"command": " ".join(["dmc", *cmd[3:]]), "exit": rc, "wall_s": round(wall, 1),
            "peak_rss_gb": round(peak[0] * 1024 / 1e9, 2) if peak else None,
            "last_stderr": other[-1][-300:] if other else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to do (default: all, smallest first)")
    ap.add_argument("--work", type=Path, default=None, help="folder for models and artifacts (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/compile_cost.json"))
    ap.add_argument("--timeout", type=float, default=5400, help="seconds per compile")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dmc-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.only or list(RUNS):
        model, extra = RUNS[name]
        source, params = BUILDERS[model](work)
        print(f"{name}: compiling ({params / 1e6:.1f} M params) ...", file=sys.stderr, flush=True)
        r = run_compile(source, work / f"{name}.dmc", extra, args.timeout)
        r.update(model=model, parameters=params, fp32_gb=round(params * 4 / 1e9, 2),
                 rss_over_fp32=round(r["peak_rss_gb"] / (params * 4 / 1e9), 2) if r["peak_rss_gb"] else None,
                 date=time.strftime("%Y-%m-%d"), machine="2-core AMD EPYC Zen 3 KVM, shared, no GPU")
        print(json.dumps(r), flush=True)
        results[name] = r
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
