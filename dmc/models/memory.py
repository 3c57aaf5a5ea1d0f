"""Refuse a model too large for this machine before loading it, from the safetensors header alone.

A compile holds the weights as loaded, the FP32 module and the exported graph's initializers at the
same time, so its peak is a few times the FP32 bytes (issue 10 targets below 3x). dmc estimates
``parameters * 4 bytes * factor`` (``COMPILE_FACTOR``, or the largest ``COMPILE_MEMORY_FACTOR``
of the passes asked for) and compares it with the memory available now
(``MemAvailable`` of /proc/meminfo, else ``os.sysconf``). ``DMC_MEMORY_BUDGET_GB`` replaces the
measured figure (for a machine whose other jobs will finish, or to test the refusal).
"""

from __future__ import annotations

import os

from dmc.errors import DmcError

FP32_BYTES = 4
COMPILE_FACTOR = 3.0
GB = 1024**3


def available_bytes() -> int | None:
    """Memory available to a new process now, or None when the platform does not say."""
    budget = os.environ.get("DMC_MEMORY_BUDGET_GB")
    if budget:
        try:
            return int(float(budget) * GB)
        except ValueError:
            raise DmcError(f"DMC_MEMORY_BUDGET_GB must be a number of GiB, got {budget!r}") from None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def compile_estimate(parameters: int, factor: float = COMPILE_FACTOR) -> int:
    return int(parameters * FP32_BYTES * factor)


def check_memory(parameters: int, name: str, factor: float = COMPILE_FACTOR) -> None:
    """One-line refusal when the estimated compile peak exceeds the memory available. ``factor``:
    the compile's peak over its FP32 bytes (a pass config's ``COMPILE_MEMORY_FACTOR`` raises it)."""
    need, have = compile_estimate(parameters, factor), available_bytes()
    if have is not None and need > have:
        raise DmcError(f"{name}: {parameters / 1e6:.0f} M parameters need about {need / GB:.1f} GiB to compile "
                       f"({FP32_BYTES} bytes x {factor:g}), but only {have / GB:.1f} GiB is available; "
                       "free memory or use a larger machine (DMC_MEMORY_BUDGET_GB overrides the measurement)")
