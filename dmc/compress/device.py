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
