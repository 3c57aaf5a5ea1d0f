"""Read a safetensors file defensively: its header is validated before any tensor is touched.

A truncated file, a header that claims more bytes than the file has, or a pickle renamed
to ``.safetensors`` each get a clear :class:`DmcError` instead of a library traceback.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from dmc.errors import DmcError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors spec's own limit
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise DmcError(
            f"{path}: {path.suffix} files are Python pickles, which dmc never loads (they can run code). "
            "Convert it once in a trusted environment, e.g. "
            "`python -c \"import torch, safetensors.torch as s; s.save_file(torch.load('in.pt'), 'out.safetensors')\"`, "
            "or save the diffusers model with `save_pretrained(..., safe_serialization=True)`."
        )


def read_header(path: Path) -> tuple[dict, dict]:
    """Return ``(tensor_entries, metadata)`` after checking the header against the file size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            if len(head) < 9:
                raise DmcError(f"{path}: not a safetensors file (only {size} bytes)")
            if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[8:9] != b"{"):
                raise DmcError(
                    f"{path}: this is a pickle/zip archive (a torch checkpoint), not safetensors; "
                    "dmc never unpickles files. Convert it to .safetensors in a trusted environment."
                )
            (n,) = struct.unpack("<Q", head[:8])
            if head[8:9] != b"{":
                raise DmcError(f"{path}: not a safetensors file (no JSON header)")
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise DmcError(
                    f"{path}: corrupt safetensors header (claims {n} header bytes, file has {size})"
                )
            raw = head[8:] + f.read(n - 1)
    except OSError as e:
        raise DmcError(f"{path}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as e:
        raise DmcError(f"{path}: corrupt safetensors header ({e})") from None
    metadata = header.pop("__metadata__", None) or {}
    data_bytes = size - 8 - n
    for name, entry in header.items():
        try:
            start, end = entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise DmcError(f"{path}: corrupt safetensors header (bad entry for {name!r})") from None
        if not (0 <= start <= end <= data_bytes):
            raise DmcError(
                f"{path}: truncated safetensors file (tensor {name!r} ends at byte {end}, "
                f"only {data_bytes} data bytes present)"
            )
    return header, metadata


def load_tensors(path: Path) -> tuple[dict, dict]:
    """Validated load: ``(state_dict of torch tensors, metadata)``."""
    from safetensors.torch import load_file

    _, metadata = read_header(path)
    try:
        return load_file(str(path)), metadata
    except Exception as e:  # the header passed our checks; report what the library saw
        raise DmcError(f"{path}: corrupt safetensors file ({e})") from None
