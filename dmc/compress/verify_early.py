"""Verification that fails fast: one image through the first group of calls before the full run.

A broken artifact (export, assembly or quantization) shows within the first calls, so a compile
of a big model does not spend the full verification (every call, every image, in ONNX Runtime
and in torch) before refusing it.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dmc.errors import DmcError

FIRST_GROUP = 4  # the first 1/FIRST_GROUP of the calls (at least one)


def paired_psnr(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(RMSE, PSNR in dB) between paired samples on the [0, 1] scale (model space [-1, 1], clipped)."""
    rmse = float(np.sqrt(np.mean((np.clip(got, -1, 1) - np.clip(want, -1, 1)) ** 2)) / 2)
    return rmse, float("inf") if rmse == 0 else float(-20 * np.log10(rmse))


def first_group_check(ctx, runtime, reference, progress: bool = False) -> dict:
    """Compare the state after the first calls (1 image, same noise) of ``runtime`` and
    ``reference``; raise with the measured PSNR below the context's floor."""
    return compare_first_group(ctx, runtime, reference_first_group(ctx, reference, progress), progress)


def _first_calls(ctx, pipe, k: int, progress: bool) -> tuple[np.ndarray, float]:
    saved = pipe.calls
    started = time.perf_counter()
    try:
        pipe.calls = saved[:k]
        return pipe.sample(1, seed=ctx.recipe.seed, progress=progress), time.perf_counter() - started
    finally:
        pipe.calls = saved


def reference_first_group(ctx, reference, progress: bool = False) -> dict:
    """The torch side of the first-calls check, run on its own so that the torch model can be freed
    before ONNX Runtime opens the artifact (both at once set a big model's peak memory)."""
    total = len(reference.calls)
    k = max(1, math.ceil(total / FIRST_GROUP))
    sample, seconds = _first_calls(ctx, reference, k, progress)
    return {"calls": k, "of": total, "sample": sample, "seconds": seconds}


def compare_first_group(ctx, runtime, first: dict, progress: bool = False) -> dict:
    """Run ``runtime`` over the calls of ``first`` (from ``reference_first_group``) and raise, with
    the measured PSNR, below the context's floor."""
    k, total = first["calls"], first["of"]
    got, seconds = _first_calls(ctx, runtime, k, progress)
    _, psnr = paired_psnr(got, first["sample"])
    if psnr < ctx.fidelity_floor_psnr:
        raise DmcError(f"verification failed early: after the first {k} of {total} calls (1 image) the artifact "
                       f"differs from the torch reference (PSNR {psnr:.1f} dB < floor {ctx.fidelity_floor_psnr} dB); "
                       "nothing was written")
    return {"calls": k, "of": total, "images": 1, "psnr_db": min(psnr, 100.0),
            "seconds_per_image_call": round((seconds + first["seconds"]) / (2 * k), 4)}  # ORT and torch


def torch_price(first: dict) -> dict:
    """``first`` priced for ``images_within_budget`` before ONNX Runtime has run: an ORT call is
    taken to cost what a torch call does (FP32 on the CPU they are within about 2x of each other)."""
    return {"of": first["of"], "seconds_per_image_call": first["seconds"] / first["calls"]}


def images_within_budget(early: dict, wanted: int, budget_s: float | None) -> int:
    """How many of ``wanted`` full-trajectory images (ORT and torch) fit in ``budget_s``, priced by
    the first-calls check; at least one."""
    if budget_s is None:
        return wanted
    per_image = 2 * early["of"] * early["seconds_per_image_call"]
    return int(max(1, min(wanted, budget_s // max(per_image, 1e-9))))
