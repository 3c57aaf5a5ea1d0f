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
    total = len(runtime.calls)
    k = max(1, math.ceil(total / FIRST_GROUP))
    saved = runtime.calls, reference.calls
    started = time.perf_counter()
    try:
        runtime.calls, reference.calls = saved[0][:k], saved[1][:k]
        got = runtime.sample(1, seed=ctx.recipe.seed, progress=progress)
        want = reference.sample(1, seed=ctx.recipe.seed, progress=progress)
    finally:
        runtime.calls, reference.calls = saved
    seconds = time.perf_counter() - started
    _, psnr = paired_psnr(got, want)
    if psnr < ctx.fidelity_floor_psnr:
        raise DmcError(f"verification failed early: after the first {k} of {total} calls (1 image) the artifact "
                       f"differs from the torch reference (PSNR {psnr:.1f} dB < floor {ctx.fidelity_floor_psnr} dB); "
                       "nothing was written")
    return {"calls": k, "of": total, "images": 1, "psnr_db": min(psnr, 100.0),
            "seconds_per_image_call": round(seconds / (2 * k), 4)}  # one call in ORT plus one in torch


def images_within_budget(early: dict, wanted: int, budget_s: float | None) -> int:
    """How many of ``wanted`` full-trajectory images (ORT and torch) fit in ``budget_s``, priced by
    the first-calls check; at least one."""
    if budget_s is None:
        return wanted
    per_image = 2 * early["of"] * early["seconds_per_image_call"]
    return int(max(1, min(wanted, budget_s // max(per_image, 1e-9))))
