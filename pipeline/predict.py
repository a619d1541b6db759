"""Predict with an exported model and its runtime alone: no TensorFlow, no Keras, no params.

    pipeline-predict [--model exported/model.onnx] [--top-k 3] [--json] INPUT [INPUT ...]

A .onnx model runs on onnxruntime, a .tflite model (exported/model.tflite, model.int8.tflite) on
ai-edge-litert: the same inputs, the same output.

INPUT is an image file (PNG, JPEG, GIF, WebP, BMP, TIFF), a directory of them (hidden and system
files left out, as prepare leaves them out of an image folder), or a .npy array of one image (h×w or
h×w×c) or many (n×h×w or n×h×w×c) with pixel values 0..255. For a model trained on a CSV table,
INPUT is a .csv file with a header naming the model's feature columns (other columns are ignored),
or a .npy array of feature rows. For a text model, INPUT is a .txt file (one text), a directory of
them, a .csv or .tsv file (its `--text-column`, one text per row), or `-`: one text per line of
standard input. Class names and the input come from the model's own metadata; the model
normalises its raw input itself, so this only decodes. An image of another size is resized
(bilinear) and converted to the model's colour mode (grey: Pillow's "L", ITU-R 601 luma; colour:
RGB), so any photo works; images are decoded exactly as prepare decodes them (EXIF orientation,
16-bit scaling: pipeline/formats/image_folder.py). A bad input is reported on stderr, one line
naming it; the others are still predicted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.classifier import Classifier, open_classifier
from pipeline.cli import run_cli
from pipeline.errors import PipelineError, first_line

MAX_ARRAY_ELEMENTS = 2**28  # 256 M values (1 GiB of uint8 pixels): larger arrays go in several files


@dataclass
class Item:
    """One thing to classify: a name for the user, and its raw input, an image's pixels or a table
    row's features (or why there is none)."""

    name: str
    inputs: np.ndarray | None = None
    error: str | None = None


# ----------------------------------------------------------------------------- inputs
def load_image(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Decoded exactly as prepare decodes an image folder, so deployed inputs match training's."""
    from pipeline.formats.image_folder import UnreadableImage
    from pipeline.formats.image_folder import load_image as decode

    height, width, channels = input_shape
    try:
        pixels = decode(path, (height, width), "grayscale" if channels == 1 else "rgb")
    except UnreadableImage as exc:
        raise PipelineError(f"{path}: {exc}") from None
    return pixels.reshape(input_shape)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a .npy file declares, read from its header alone."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        data_bytes = path.stat().st_size - f.tell()
    if dtype.hasobject:
        raise ValueError("holds Python objects")
    if math.prod(shape) * dtype.itemsize > data_bytes:
        raise ValueError(f"header declares {shape} {dtype}, more than the file holds")
    return shape, dtype


def load_array(path: Path, input_shape: tuple[int, ...]) -> list[Item]:
    """A .npy of inputs; its header (shape, dtype, size) is checked before any data is read."""
    try:
        shape, _ = npy_header(path)
        if math.prod(shape) > MAX_ARRAY_ELEMENTS:
            return [
                Item(
                    str(path),
                    error=f"{path}: array of shape {shape} is larger than the predictor reads "
                    f"({MAX_ARRAY_ELEMENTS:,} values)",
                )
            ]
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        return [Item(str(path), error=f"{path}: not a NumPy .npy array ({first_line(exc)})")]
    if len(input_shape) == 1:
        return split_rows(path, array[np.newaxis] if array.ndim == 1 else array, input_shape)
    h, w, c = input_shape
    if array.ndim in (2, 3) and array.shape[:2] == (h, w) and (array.ndim == 2 or array.shape[2] == c):
        array = array[np.newaxis]
    if array.ndim == 3 and c == 1:
        array = array[..., np.newaxis]
    if array.ndim != 4 or array.shape[1:] != input_shape:
        return [
            Item(str(path), error=f"{path}: array shape {array.shape} is not (n,) + {input_shape} or {input_shape[:2]}")
        ]
    return split_rows(path, array, input_shape)


def split_rows(path: Path, array: np.ndarray, input_shape: tuple[int, ...]) -> list[Item]:
    if array.shape[1:] != input_shape:
        return [Item(str(path), error=f"{path}: array shape {array.shape} is not (n,) + {input_shape}")]
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        return [Item(str(path), error=f"{path}: array dtype {array.dtype} is not numeric")]
    if not np.isfinite(array).all():
        return [Item(str(path), error=f"{path}: array holds NaN or infinite values")]
    if len(input_shape) == 3 and (array.min(initial=0) < 0 or array.max(initial=0) > 255):
        return [Item(str(path), error=f"{path}: pixel values must lie in 0..255, got {array.min()}..{array.max()}")]
    if len(array) == 1:
        return [Item(str(path), array[0])]
    return [Item(f"{path}[{i}]", a) for i, a in enumerate(array)]


def load_table(path: Path, feature_names: list[str]) -> list[Item]:
    """Rows of a CSV file with a header naming (at least) the model's feature columns."""
    from pipeline.formats.csv import read_table

    try:
        table = read_table(
            path, label_column=None, feature_columns=feature_names, columns_from="the model's feature_names"
        )
    except PipelineError as exc:
        return [Item(str(path), error=str(exc))]
    return [Item(f"{path}:{row}", x) for row, x in zip(table.row_numbers, table.features, strict=True)]


def text_items(paths: list[str], classifier: Classifier, text_column: str = "text") -> list[Item]:
    """Each text a user gives a text model, encoded as the model takes it (its UTF-8 bytes), read as
    prepare reads texts."""
    texts: list[tuple[str, str | None, str | None]] = []  # (name, text, error)
    for raw in paths:
        path = Path(raw)
        if raw == "-":
            texts += [(f"-:{n}", line.rstrip("\n"), None) for n, line in enumerate(sys.stdin, start=1)]
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".txt" and not p.name.startswith("."))
            texts += [text_of(file) for file in files] or [(raw, None, f"{path}: directory holds no .txt files")]
        elif path.suffix.lower() in (".csv", ".tsv", ".jsonl"):
            texts += table_texts(path, text_column)
        else:
            texts.append(text_of(path))
    good = [text for _, text, error in texts if error is None]
    encoded = iter(classifier.encode(good)) if good else iter(())
    return [Item(name, error=error) if error else Item(name, next(encoded)) for name, _, error in texts]


def text_of(path: Path) -> tuple[str, str | None, str | None]:
    """(name, text, error) of one .txt file."""
    from pipeline.formats.text_folder import UnreadableText, read_text

    try:
        return str(path), read_text(path), None
    except FileNotFoundError:
        return str(path), None, f"{path}: no such file"
    except (UnreadableText, OSError) as exc:
        return str(path), None, f"{path}: {first_line(exc)}"


def table_texts(path: Path, text_column: str) -> list[tuple[str, str | None, str | None]]:
    """(name, text, error) of each record of a table's text column."""
    from pipeline.formats.text_table import records

    try:
        return [(f"{path}:{r.line}", r.text, None if r.problem is None else f"{path}: line {r.line}: {r.problem}")
                for r in records(path, text_column, None)]  # fmt: skip
    except PipelineError as exc:
        return [(str(path), None, str(exc))]


def collect_inputs(
    paths: list[str], input_shape: tuple[int, ...], feature_names: list[str] | None = None
) -> list[Item]:
    """Items in the order given (a directory's files sorted by name). Images are decoded in this
    thread: on a quiet machine, two threads took 2.4x as long (Python's lock), a pool of forked
    processes 0.6x, not worth forking a process that holds onnxruntime's threads."""
    items: list[Item] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            from pipeline.formats.image_folder import EXTENSIONS, is_image_file

            files = sorted(p for p in path.iterdir() if is_image_file(p, path))
            if not files:
                items.append(Item(raw, error=f"{path}: directory holds no image files ({', '.join(EXTENSIONS)})"))
            targets = files
        else:
            targets = [path]
        for target in targets:
            if not target.exists():
                items.append(Item(str(target), error=f"{target}: no such file"))
            elif target.suffix.lower() == ".npy":
                items.extend(load_array(target, input_shape))
            elif target.suffix.lower() == ".csv" and len(input_shape) == 1:
                items.extend(load_table(target, feature_names or []))
            else:
                try:
                    items.append(Item(str(target), load_image(target, input_shape)))
                except PipelineError as exc:
                    items.append(Item(str(target), error=str(exc)))
    return items


def predict_items(classifier: Classifier, items: list[Item], k: int) -> list[dict]:
    good = [item for item in items if item.error is None]
    probs = classifier.probabilities(np.stack([item.inputs for item in good])) if good else np.zeros((0, 0))
    ranked = iter(classifier.top_k(probs, k)) if good else iter(())
    results = []
    for item in items:
        if item.error is not None:
            results.append({"input": item.name, "error": item.error})
        else:
            results.append(
                {"input": item.name, "predictions": [{"class": c, "probability": round(p, 6)} for c, p in next(ranked)]}
            )
    return results


def format_table(results: list[dict]) -> str:
    rows = [
        (r["input"], "   ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"]))
        for r in results
        if "predictions" in r
    ]
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows)
    return "\n".join(
        [f"{'input':<{width}}  top classes (probability)"] + [f"{name:<{width}}  {preds}" for name, preds in rows]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pipeline-predict", description=__doc__.splitlines()[0])
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, directory of them, .npy; .csv (table models); .txt, .csv/.tsv or - (text models)",
    )
    parser.add_argument(
        "--model", default="exported/model.onnx", help=".onnx (onnxruntime) or .tflite (ai-edge-litert)"
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per input (JSON lines)")
    parser.add_argument("--text-column", default="text", help="a text model's CSV/TSV column of texts")
    parser.add_argument(
        "--threads", type=int, default=None, help="the runtime's threads (onnxruntime intra-op, LiteRT's interpreter)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)

    classifier = open_classifier(args.model, args.threads)
    k = max(1, min(args.top_k, len(classifier.class_names)))
    if classifier.kind.name == "text":
        items = text_items(args.inputs, classifier, args.text_column)
    else:
        items = collect_inputs(args.inputs, classifier.input_shape, classifier.feature_names)
    results = predict_items(classifier, items, k)
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"error: {r['error']}", file=sys.stderr)
    if args.json:
        for r in results:
            if "predictions" in r:
                print(json.dumps(r))
    else:
        table = format_table(results)
        if table:
            print(table)
    if failed:
        sys.exit(1)


def cli() -> None:
    """Console-script entry point (`pipeline-predict`)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
