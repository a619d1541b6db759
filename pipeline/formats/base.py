"""What every data format's reader gives prepare, in two passes that never hold a whole split:

1. `scan(raw_dir, section) -> Scan`: the cheap pass. Each part of the data (`train`, and `test` when
   the data has its own) with every example's label (and, for files, its key), the class names, the
   input shape and dtype; labels, headers and sizes are validated here, before anything is written.
2. `chunks(raw_dir, section, scan, part, start, stop)`: the examples of a part in order, a chunk at a
   time, as `(position of the first, payload)`; `decode(payload, raw_dir, options)` turns a payload
   into inputs (uint8 images (k, h, w, c), float32 rows (k, f), uint8 text bytes (k, max_bytes)),
   validated, and names what it
   skipped. `decode` is a plain function of plain data, so prepare can run it in worker processes
   (formats with `DECODE_IN_PROCESSES`) and Beam on its workers.

No pydantic here (nor in the readers): the predictor decodes images and tables with the format
modules in a deployment that has only onnxruntime, NumPy and Pillow. The params sections' common
base is pipeline/schema.py's FormatSection."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.kinds import KINDS

# Examples read per chunk: about this many bytes of inputs (a few MB in flight per worker).
CHUNK_BYTES = 4 << 20


@dataclass
class Part:
    """One part of the raw data as the format has it: `train`, or the data's own `test`."""

    name: str
    labels: np.ndarray  # int64, one per example, in the part's order
    keys: list[str] | None = None  # each example's file, relative to the raw directory (image folders)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Scan:
    parts: dict[str, Part]
    class_names: list[str]
    input_shape: tuple[int, ...]
    kind: str  # image | table | text (pipeline/kinds.py): the inputs' dtype and meaning
    feature_names: list[str] | None = None
    skipped: list[str] = field(default_factory=list)  # examples the first pass left out (unreadable: skip)

    @property
    def dtype(self) -> str:
        return KINDS[self.kind].dtype

    def chunk_examples(self) -> int:
        """How many examples make one chunk of about CHUNK_BYTES."""
        size = int(np.prod(self.input_shape)) * np.dtype(self.dtype).itemsize
        return max(1, CHUNK_BYTES // max(size, 1))


@dataclass
class Decoded:
    inputs: np.ndarray  # the payload's examples that decoded, in order
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (offset in the payload, file) left out


def check_same_shape(train: tuple, test: tuple, test_path) -> None:
    from pipeline.errors import PipelineError

    if train != test:
        raise PipelineError(f"{test_path}: input shape {test} differs from the train part's {train}")
