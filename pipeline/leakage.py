"""The leakage check: which test examples also occur in train or validation. Each example stands
for 16 bytes, a digest of what the model sees of it: the raw input for images and tables; for
text, the text after the model's own standardisation (pipeline/text.py), so "Hello, world" and
"hello world" are one text. prepare and its Beam workers keep only the digests, never the inputs."""

from __future__ import annotations

import hashlib

import numpy as np


def digest(inputs: np.ndarray, kind: str) -> bytes:
    """16 bytes that stand for one example in the leakage check."""
    if kind == "text":
        from pipeline.text import standardized_words

        data = standardized_words(inputs)
    else:
        data = inputs.tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


def as_digests(digests: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(digests), dtype="V16")


def count_shared(seen: np.ndarray, digests: np.ndarray) -> int:
    """How many of `digests` also occur in `seen` (arrays of 16-byte digests)."""
    return int(np.isin(digests, seen).sum()) if len(digests) and len(seen) else 0
