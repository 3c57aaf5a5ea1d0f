"""Progress bars for long compile stages: tqdm on stderr, only when asked for (``progress=True``)."""

from __future__ import annotations

import sys


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(enabled: bool, total: int | None, desc: str, unit: str = "it"):
    """A tqdm bar with rate and ETA (or a no-op stand-in when ``enabled`` is false)."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"[dmc] {desc}", unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)
