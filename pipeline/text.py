"""Text as the models take it: UTF-8 bytes, cut at `max_bytes` and zero-padded to it (uint8
[batch, max_bytes]: the counterpart of uint8 pixels), which every runtime carries with its built-in
operators. The standardisation that the model applies to those bytes (pipeline/text_layers.py)
is defined here once, on any array namespace: NumPy here (the leakage check compares texts as the
model reads them), keras.ops inside the model.

Standardisation, byte by byte (what Keras' TextVectorization calls lower_and_strip_punctuation,
for the scripts of the languages this project is measured on):
- lower case: ASCII, Latin-1 (À-Þ), Latin Extended-A (Ā-ž: Polish, Czech, ...), basic Cyrillic;
- separators: every ASCII character but letters and digits, Latin-1 punctuation and symbols
  (U+00A0-U+00BF: no-break space, « », ¡ ¿ ...), General Punctuation (U+2000-U+207F: dashes,
  curly quotes, …), CJK punctuation (U+3000-U+303F), the byte-order mark, and the padding;
- a word is a run of other bytes (letters, digits, any other script's characters).
No TensorFlow, no Keras: the predictor encodes texts with this module in a deployment that has
only onnxruntime or ai-edge-litert.
"""

from __future__ import annotations

import numpy as np

SPACE = 32
ENCODING = "UTF-8"
STANDARDIZATION = (
    "lower case (ASCII, Latin-1, Latin Extended-A, Cyrillic); ASCII punctuation, symbols and whitespace, "
    "Latin-1 punctuation, General and CJK punctuation are separators; a word is a run of other bytes"
)


def encode_texts(texts: list[str], max_bytes: int) -> np.ndarray:
    """Texts as the models' input: each one's UTF-8 bytes, cut at `max_bytes`, zero-padded."""
    out = np.zeros((len(texts), max_bytes), dtype=np.uint8)
    for row, text in enumerate(texts):
        data = text.encode("utf-8")[:max_bytes]
        out[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out


def decode_text(row: np.ndarray) -> str:
    """One input row back as text (its padding dropped; a character cut at max_bytes shown as �)."""
    return bytes(np.asarray(row, dtype=np.uint8)).rstrip(b"\0").decode("utf-8", errors="replace")


class NumpyOps:
    """The few array operations `standardize` uses, with keras.ops' names, on NumPy arrays."""

    where = staticmethod(np.where)
    concatenate = staticmethod(np.concatenate)
    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def cast(x, dtype):
        return np.asarray(x).astype(dtype)


def shifted(ops, x, k: int):
    """x[:, i - k] at position i (k > 0: the byte k before; k < 0: the byte -k after), 0 off the ends."""
    if k > 0:
        return ops.concatenate([ops.zeros_like(x[:, :k]), x[:, :-k]], axis=1)
    return ops.concatenate([x[:, -k:], ops.zeros_like(x[:, :-k])], axis=1)


def between(x, low: int, high: int):
    return (x >= low) & (x <= high)


def standardize(ops, b):
    """int32 bytes [batch, n] → standardised int32 bytes, separators as 32 (`ops`: keras.ops or NumpyOps)."""

    def as_int(mask):
        return ops.cast(mask, "int32")

    before, after = shifted(ops, b, 1), shifted(ops, b, -1)
    lower = b + 32 * as_int(between(b, 65, 90))  # ASCII A-Z
    lower = lower + 32 * as_int((before == 0xC3) & between(b, 0x80, 0x9E) & (b != 0x97))  # Latin-1 À-Þ, not ×
    # Latin Extended-A, U+0100-U+017F (C4 80 - C5 BF): upper case is the even code point of a pair in
    # U+0100-0137 and U+014A-0177, the odd one in U+0139-0148 and U+0179-017E; lower case is one more.
    point = (before - 0xC4) * 64 + (b - 0x80) + 0x100
    in_block = ((before == 0xC4) | (before == 0xC5)) & between(b, 0x80, 0xBF)
    even = as_int(point % 2 == 0)
    pairs = (between(point, 0x100, 0x137) | between(point, 0x14A, 0x177)) & (even == 1)
    odd_pairs = (between(point, 0x139, 0x148) | between(point, 0x179, 0x17E)) & (even == 0)
    upper = in_block & (pairs | odd_pairs)
    carry = upper & (b == 0xBF)  # U+013F → U+0140 moves to the next lead byte
    lower = lower + as_int(upper) - 64 * as_int(carry)
    lower = lower + as_int(shifted(ops, as_int(carry), -1) == 1)  # the lead byte before a carried one
    # Cyrillic: U+0400-040F → U+0450-045F (D0 8x → D1 9x), U+0410-041F → +0x20 (D0 9x → D0 Bx),
    # U+0420-042F → U+0440-044F (D0 Ax → D1 8x).
    d0 = before == 0xD0
    lower = lower + 16 * as_int(d0 & between(b, 0x80, 0x8F)) + 32 * as_int(d0 & between(b, 0x90, 0x9F))
    lower = lower - 32 * as_int(d0 & between(b, 0xA0, 0xAF))
    lower = lower + as_int((b == 0xD0) & (between(after, 0x80, 0x8F) | between(after, 0xA0, 0xAF)))
    # Separators. ASCII but letters and digits (after lower-casing), and the padding:
    alnum = between(lower, 48, 57) | between(lower, 97, 122)
    separator = (lower < 128) & ~alnum
    # Latin-1 punctuation and symbols, both bytes: C2 A0 - C2 BF.
    latin1 = (b == 0xC2) & between(after, 0xA0, 0xBF)
    separator = separator | latin1 | (shifted(ops, as_int(latin1), 1) == 1)
    # Three-byte punctuation, all three bytes: General Punctuation E2 80/81 xx, CJK E3 80 xx, BOM EF BB BF.
    three = ((b == 0xE2) & between(after, 0x80, 0x81)) | ((b == 0xE3) & (after == 0x80))
    three = as_int(three | ((b == 0xEF) & (after == 0xBB) & (shifted(ops, b, -2) == 0xBF)))
    separator = separator | (three == 1) | (shifted(ops, three, 1) == 1) | (shifted(ops, three, 2) == 1)
    return ops.where(separator, SPACE, lower)


def standardized_words(inputs: np.ndarray) -> bytes:
    """One text's input row as the model reads it: its words, standardised, joined by one space
    (what the leakage check compares)."""
    standard = standardize(NumpyOps, np.asarray(inputs, dtype=np.int32)[np.newaxis])[0]
    return b" ".join(bytes(standard.astype(np.uint8)).split())


# Words become vocabulary ids through a hash of their last WORD_BYTES standardised bytes
# (polynomial, base MULTIPLIER, modulo the prime BUCKETS: integer arithmetic that stays within
# int32 in every runtime) and a table of BUCKETS entries from hash to id, built from the training
# split's most frequent words. Ids: 0 padding, 1 a word outside the vocabulary, 2... by frequency.
WORD_BYTES = 24
MULTIPLIER = 257
BUCKETS = 1_048_573  # the largest prime below 2^20
PAD, OOV = 0, 1


def word_bucket(word: bytes) -> int:
    """The hash bucket of one standardised word, as the model computes it."""
    h = 0
    for byte in word[-WORD_BYTES:]:
        h = (h * MULTIPLIER + byte) % BUCKETS
    return h


def text_words(row: np.ndarray) -> list[bytes]:
    """One input row's words, standardised, as the model splits them."""
    return standardized_words(row).split()


def adapt_vocabulary(batches, vocabulary_size: int) -> list[str]:
    """The training split's most frequent words (ties: the first seen), at most `vocabulary_size` - 2
    (ids 0 and 1 are padding and out-of-vocabulary); `batches` yields uint8 input rows."""
    from collections import Counter

    counts: Counter[bytes] = Counter()
    for rows in batches:
        for row in rows:
            counts.update(text_words(row))
    return [word.decode("utf-8", errors="surrogateescape") for word, _ in counts.most_common(vocabulary_size - 2)]


def vocabulary_table(words: list[str]) -> np.ndarray:
    """Bucket → id for `words` (ids 2.. in order; a bucket two words share keeps the more frequent)."""
    table = np.full(BUCKETS, OOV, dtype=np.int32)
    for rank in range(len(words) - 1, -1, -1):
        table[word_bucket(words[rank].encode("utf-8", errors="surrogateescape"))] = rank + 2
    return table


# Texts every exported form must score as Keras does, beside the test split (verify's probes): what
# tokenizers get wrong. The last is longer than any max_bytes: each form cuts it alike.
AWKWARD_TEXTS = [
    "",
    "   ",
    "\t\n \r\n\t",
    "!!!???...,,,;;;:::---",
    "Crème brûlée, naïve café: À LA CARTE — déjà vu «très» ¿qué? ¡Sí!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. ЁЖИК",
    "Zażółć gęślą jaźń. PŘÍLIŠ ŽLUŤOUČKÝ KŮŇ ÚPĚL ĎÁBELSKÉ ÓDY",
    "日本語のテキスト、句読点。中文文本，标点符号！한국어 텍스트",
    "emoji 😀🎉👍🏽 flags 🇩🇪 and a zero-width\u200bjoiner",
    "word " * 5000,
]


def probe_texts(kind: str) -> list[str]:
    """The texts verify probes every form with, beside the test split: AWKWARD_TEXTS for text."""
    return list(AWKWARD_TEXTS) if kind == "text" else []
