"""Prompt tokenization with the Rust ``tokenizers`` package (no transformers, no torch).

The artifact ships each tokenizer as one ``tokenizer.json`` with padding and truncation cleared;
the manifest says the length and pad id, set here explicitly, so the ids are exactly what
diffusers' ``tokenizer(prompt, padding="max_length", max_length=..., truncation=True)`` gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmc.errors import DmcError


class Tokenizer:
    def __init__(self, path: str | Path, max_length: int, pad_id: int):
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:
            raise DmcError("prompt pipelines need the `tokenizers` package: `pip install tokenizers`") from None
        try:
            self.tokenizer = RustTokenizer.from_file(str(path))
        except Exception as e:
            raise DmcError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
        self.max_length = max_length
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.enable_padding(length=max_length, pad_id=pad_id,
                                      pad_token=self.tokenizer.id_to_token(pad_id) or "")

    def encode(self, prompts: list[str]) -> np.ndarray:
        """``[len(prompts), max_length]`` int64 token ids (special tokens added, padded, truncated)."""
        return self.encode_with_mask(prompts)[0]

    def encode_with_mask(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and the attention mask (1 = token, 0 = padding), both ``[n, max_length]`` int64."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        shape = (len(prompts), self.max_length)
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(shape)
        return ids, np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(shape)
