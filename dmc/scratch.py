"""Scratch folders for passes that keep large files on disk while they run (a full-size UNet's
prepared FP32 graph is gigabytes), removed when their owner is collected, at exit, and on SIGTERM
(``remove_all``, which the CLI's kill handler calls: ``os._exit`` skips every finalizer)."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

_LIVE: dict[str, None] = {}  # folder path -> None, in creation order


def scratch_folder(owner, prefix: str = "dmc-") -> Path:
    """A new folder under the system temp dir, removed when ``owner`` is garbage collected."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    _LIVE[str(path)] = None
    weakref.finalize(owner, _remove, str(path))
    return path


def _remove(path: str) -> None:
    _LIVE.pop(path, None)
    shutil.rmtree(path, ignore_errors=True)


def remove_all() -> None:
    for path in list(_LIVE):
        _remove(path)
