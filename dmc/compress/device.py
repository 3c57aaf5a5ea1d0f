"""Where the compile side runs torch: the CPU, or a GPU that torch can see (``--device cuda``).

Export always traces on the CPU (the graphs are device-neutral); afterwards the model moves to
the device for the torch work that dominates a compile: calibration trajectories and the
verification reference.
"""

from __future__ import annotations

from dmc.errors import DmcError

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """Refuse, before any work, a device torch cannot use here."""
    if device not in DEVICES:
        raise DmcError(f"unknown device {device!r} (choose from {', '.join(DEVICES)})")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            build = torch.version.cuda or "none (a CPU-only torch build)"
            raise DmcError(f"--device cuda: torch {torch.__version__} sees no GPU here (CUDA build: {build}); "
                           "use --device cpu")


def to_device(ctx) -> None:
    """Move the torch side of ``ctx`` (the adapter every graph's module wraps) to ``ctx.device``."""
    if ctx.device != "cpu":
        ctx.adapter.to(ctx.device)


# Working memory per model row (torch or ONNX Runtime), taken as the model's FP32 weight bytes: a
# rough bound (at 64x64 latents an SD 1.5 row needs less, its attention maps included), and what
# the rows of one batch may use together. Full-size UNets then run one image at a time.
BATCH_BYTES = 4 << 30


def images_per_batch(ctx, most: int) -> int:
    """Images run together in calibration and verification: ``most``, fewer for big models."""
    weight_bytes = sum(p.numel() * p.element_size() for p in ctx.adapter.parameters())
    rows_per_image = 2 if ctx.recipe.guided else 1
    return int(max(1, min(most, BATCH_BYTES // max(1, weight_bytes * rows_per_image))))


def release_torch(ctx) -> None:
    """Free the torch weights of ``ctx`` once nothing runs torch any more (after the verification
    reference, before ONNX Runtime opens the artifact), so a big model's weights are not held
    twice. Storage is dropped in place: other references to the modules see empty tensors."""
    import gc

    import torch

    modules = [ctx.adapter, ctx.loaded.model]
    for g in ctx.graphs.values():
        modules += [m for m in (g.module, g.reference) if m is not None]
    empty = torch.empty(0)
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            t.data = empty
    gc.collect()
