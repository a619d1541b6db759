"""Data format `text_folder`: <root>/<class name>/<text>.txt, one UTF-8 text per file (a byte-order
mark accepted), the layout of the IMDB reviews and 20 Newsgroups archives. Class names are the folder
names, in sorted order, unless params give them. A file that is not a text (not UTF-8, empty, or
longer than MAX_TEXT_BYTES) stops the stage with one line naming it, or is skipped and reported, as
`data.text_folder.unreadable` says. Each text is stored as the model reads it: its UTF-8 bytes cut
at `max_bytes` and zero-padded (pipeline/text.py).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.formats.base import Decoded, Part, Scan
from pipeline.formats.folders import class_files

NAME = "text_folder"
KIND = "text"  # the kind of data it yields (pipeline/kinds.py)
SUFFIXES = (".txt",)
# A file larger than this is not one text a classifier reads (a log, a dump, a book): refused from its
# size, without reading it, so a huge file costs no memory.
MAX_TEXT_BYTES = 1 << 20

DECODE_IN_PROCESSES = True  # reading many small files: spread over every core
TEXTS_PER_CHUNK = 256


class UnreadableText(ValueError):
    """A file that is not a text the pipeline reads."""


def scan(raw_dir: Path, section) -> Scan:
    """Every text file's class (its folder) and path; nothing is read yet."""
    where = "data.text_folder"
    names, labels, keys = class_files(raw_dir, section.train, section.class_names, SUFFIXES, where, "text")
    parts = {"train": Part("train", labels, keys)}
    if section.test:
        _, labels, keys = class_files(raw_dir, section.test, names, SUFFIXES, where, "text")
        parts["test"] = Part("test", labels, keys)
    return Scan(parts, names, (section.max_bytes,), KIND)


def chunks(raw_dir: Path, section, scan: Scan, part: str, start: int = 0, stop: int | None = None):
    """(position, text paths relative to the raw directory), TEXTS_PER_CHUNK at a time."""
    keys = scan.parts[part].keys
    stop = len(keys) if stop is None else min(stop, len(keys))
    for position in range(start, stop, TEXTS_PER_CHUNK):
        yield position, keys[position : min(position + TEXTS_PER_CHUNK, stop)]


def decode_options(section, scan: Scan) -> dict:
    return {"max_bytes": section.max_bytes, "unreadable": section.unreadable}


def decode(payload: list[str], raw_dir: Path, options: dict) -> Decoded:
    """The texts of `payload` (paths relative to `raw_dir`) as input rows; a file that is not a text
    stops prepare with one line, or is skipped and named (`unreadable: skip`)."""
    from pipeline.text import encode_texts

    texts, skipped = [], []
    for offset, key in enumerate(payload):
        path = Path(raw_dir) / key
        try:
            texts.append(read_text(path))
        except UnreadableText as exc:
            if options["unreadable"] == "fail":
                raise PipelineError(
                    f"{path}: {exc}; set data.text_folder.unreadable: skip to leave such files out"
                ) from None
            skipped.append((offset, key))
    return Decoded(encode_texts(texts, options["max_bytes"]), skipped)


def read_text(path: Path) -> str:
    """One file's text, the one reader prepare and the predictor share; UnreadableText says why not."""
    size = path.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise UnreadableText(f"{size:,} bytes, more than a text may have ({MAX_TEXT_BYTES:,})")
    return checked_text(path.read_bytes())


def checked_text(data: bytes) -> str:
    """Bytes as a text: UTF-8 (a byte-order mark dropped), not empty once whitespace is stripped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnreadableText(f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    if not text.strip():
        raise UnreadableText("empty text")
    return text
