"""What a compile costs: wall time and peak RSS of ``dmc compress`` FP32 and ``--int8``.

Models (random weights; cost does not depend on them):
- ``sd15``: a full-size Stable Diffusion 1.5 UNet (``UNet2DConditionModel`` with diffusers' SD 1.5
  values: block_out_channels (320, 640, 1280, 1280), cross_attention_dim 768, attention_head_dim 8,
  layers_per_block 2, sample_size 64; 859.5 M parameters), in a pipeline folder (``unet/``,
  ``scheduler/scheduler_config.json`` with SD 1.5's scaled-linear schedule).
- ``sdmid``: an SD-shaped ``UNet2DConditionModel`` at a quarter of SD 1.5's size
  (block_out_channels (160, 320, 640, 640), otherwise SD 1.5's config; 215 M parameters): where a
  full-size compile's memory goes, measured cheaply (``--stages`` prints peak RSS per stage).
- ``unet64``: the 35.7 M mid-size ``UNet2DModel`` of bench_fp32.py / bench_int8.py (64x64x3).

Each compile runs ``dmc compress`` in its own subprocess; peak RSS is that child's
maximum resident set size as GNU ``/usr/bin/time -f %M`` reports it.

    nice python bench/bench_compile_cost.py --out bench/results/compile_cost.json
    nice python bench/bench_compile_cost.py --only unet64-fp32 unet64-int8
    nice python bench/bench_compile_cost.py --only sdmid-fp32 --stages   # peak RSS of each stage
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
    "sdmid-fp32": ("sdmid", []),
    "sdmid-int8": ("sdmid", ["--int8"]),
    "sd15-fp32": ("sd15", []),
    "sd15-int8": ("sd15", ["--int8"]),
}


def _sd_folder(folder: Path, config: dict) -> tuple[Path, int]:
    import diffusers
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            params = sum(p.numel() for p in diffusers.UNet2DConditionModel.from_config(config).parameters())
    if not (folder / "unet" / "config.json").exists():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = diffusers.UNet2DConditionModel.from_config(config)
        unet.save_pretrained(folder / "unet")
        (folder / "scheduler").mkdir(parents=True, exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
        del unet
    return folder, params


def build_sd15(root: Path) -> tuple[Path, int]:
    return _sd_folder(root / "sd15", SD15_UNET)


def build_sdmid(root: Path) -> tuple[Path, int]:
    return _sd_folder(root / "sdmid", {**SD15_UNET, "block_out_channels": (160, 320, 640, 640)})


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


BUILDERS = {"sd15": build_sd15, "sdmid": build_sdmid, "unet64": build_unet64}


def _rss_kb(pid: int) -> int:
    """Resident set of ``pid`` and its descendants (the compile runs under /usr/bin/time)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")), 0)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return total


def _stage_of(text: str) -> str | None:
    """A stage name from one stderr fragment: dmc's ``[dmc] ...`` lines and tqdm bar names."""
    text = text.strip()
    if text.startswith("[dmc]"):
        return text[5:].strip()[:60]
    if ":" in text and "%|" in text:
        return "  bar: " + text.split(":")[0].strip()[:50]
    return None


def _run_traced(cmd: list[str], timeout: float) -> tuple[object, str, list[dict]]:
    """Run ``cmd``; sample its RSS every 0.5 s and keep the peak of each stage (stderr-named)."""
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    stages: list[dict] = [{"stage": "start", "t0": 0.0, "peak_rss_gb": 0.0}]
    err: list[str] = []
    started = time.time()

    def read():
        buf = ""
        for ch in iter(lambda: proc.stderr.read(1), ""):
            if ch not in "\r\n":
                buf += ch
                continue
            err.append(buf)
            name = _stage_of(buf)
            if name and name != stages[-1]["stage"]:
                stages.append({"stage": name, "t0": round(time.time() - started, 1), "peak_rss_gb": 0.0})
            buf = ""

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while proc.poll() is None:
        if time.time() - started > timeout:
            proc.kill()
            break
        stages[-1]["peak_rss_gb"] = max(stages[-1]["peak_rss_gb"], round(_rss_kb(proc.pid) * 1024 / 1e9, 2))
        time.sleep(0.5)
    reader.join(5)
    rc = proc.returncode if proc.returncode is not None else "timeout"
    return rc, "\n".join(err), stages


def run_compile(source: Path, out: Path, extra: list[str], timeout: float, stages: bool = False) -> dict:
    """One ``dmc compress`` in a child process: wall time, peak RSS (GNU time's %M), exit status."""
    cmd = [sys.executable, "-m", "dmc.cli", "compress", str(source), "--out", str(out), "--force", *extra]
    t = time.time()
    trace = None
    timed = ["/usr/bin/time", "-f", "DMC_PEAK_KB=%M", *cmd]
    if stages:
        rc, err, trace = _run_traced(timed, timeout)
    else:
        try:
            proc = subprocess.run(timed, capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = "timeout", e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.time() - t
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    peak = [int(ln.split("=")[1]) for ln in lines if ln.startswith("DMC_PEAK_KB=")]
    other = [ln for ln in lines if not ln.startswith(("DMC_PEAK_KB=", "Command exited", "Command terminated"))]
    dmc_error = [ln for ln in other if ln.startswith(("Error", "error")) or "nothing was written" in ln]
    result = {"command": " ".join(["dmc", *cmd[3:]]), "exit": rc, "wall_s": round(wall, 1),
              "peak_rss_gb": round(peak[0] * 1024 / 1e9, 2) if peak else None,
              "last_stderr": (dmc_error or other or [""])[-1][-300:]}
    if trace is not None:
        result["stages"] = trace
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to do (default: all, smallest first)")
    ap.add_argument("--work", type=Path, default=None, help="folder for models and artifacts (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/compile_cost.json"))
    ap.add_argument("--timeout", type=float, default=5400, help="seconds per compile")
    ap.add_argument("--stages", action="store_true", help="sample RSS every 0.5 s: peak per stage")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="dmc-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.only or list(RUNS):
        model, extra = RUNS[name]
        source, params = BUILDERS[model](work)
        print(f"{name}: compiling ({params / 1e6:.1f} M params) ...", file=sys.stderr, flush=True)
        r = run_compile(source, work / f"{name}.dmc", extra, args.timeout, args.stages)
        r.update(model=model, parameters=params, fp32_gb=round(params * 4 / 1e9, 2),
                 rss_over_fp32=round(r["peak_rss_gb"] / (params * 4 / 1e9), 2) if r["peak_rss_gb"] else None,
                 date=time.strftime("%Y-%m-%d"), machine="2-core AMD EPYC Zen 3 KVM, shared, no GPU")
        print(json.dumps(r), flush=True)
        results[name] = r
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
