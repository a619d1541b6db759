"""An exported classifier with its runtime alone: an ONNX file with onnxruntime, a LiteRT (.tflite)
file with ai-edge-litert. Its metadata read back from the file (class names, the kind of data and
its input shape and dtype), raw inputs in, probabilities out; a text model's texts encoded as it
takes them (pipeline/text.py). What the predictor, promote and verify run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError, first_line
from pipeline.kinds import LAYOUTS, Kind

REQUIRED_METADATA = ("class_names", "input_shape", "input_layout")
INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class Classifier:
    """What every exported form shares: the metadata's contract and top-k; engines subclass `run`."""

    path: Path
    class_names: list[str]
    kind: Kind  # what the model takes (pipeline/kinds.py), from the input layout its metadata names
    input_shape: tuple[int, ...]
    feature_names: list[str]
    input_dtype: type

    def read_properties(self, props: dict[str, str]) -> None:
        missing = [key for key in REQUIRED_METADATA if key not in props]
        if missing:
            raise PipelineError(f"{self.path}: metadata lacks {', '.join(missing)} (not exported by this pipeline?)")
        try:
            self.class_names = json.loads(props["class_names"])
            self.input_shape = tuple(int(d) for d in json.loads(props["input_shape"])[1:])
            self.feature_names = json.loads(props.get("feature_names") or "[]")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PipelineError(f"{self.path}: metadata is malformed") from None
        kind = LAYOUTS.get(props["input_layout"])
        if kind is None or len(self.input_shape) != kind.rank:
            raise PipelineError(
                f"{self.path}: input layout {props['input_layout']} {self.input_shape} is none of "
                "NHWC images, NC feature vectors, NB text bytes"
            )
        self.kind = kind

    def run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of one batch of inputs already in the model's dtype."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> np.ndarray:
        """Texts as a text model's input rows: UTF-8 bytes, cut at its max_bytes, zero-padded."""
        from pipeline.text import encode_texts

        return encode_texts(texts, self.input_shape[0])

    def probabilities(self, inputs: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities for raw inputs of shape (n, *input_shape): pixels 0..255, features, or a
        text model's encoded rows (`encode`)."""
        x = raw_input(inputs, self.input_dtype)
        if not len(x):
            return np.zeros((0, len(self.class_names)))
        return np.concatenate([self.run(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])

    def top_k(self, probs: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order, strict=True)]


class OnnxClassifier(Classifier):
    def __init__(self, model_path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        self.path = found(model_path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise PipelineError(f"{self.path}: onnxruntime cannot load it ({first_line(exc)})") from None
        self.read_properties(self.session.get_modelmeta().custom_metadata_map)
        (graph_input,) = self.session.get_inputs()
        self.input_name = graph_input.name
        if graph_input.type not in INPUT_DTYPES:
            raise PipelineError(
                f"{self.path}: input {graph_input.name} is {graph_input.type}, not raw uint8 pixels "
                "or float32 features (exported by an older version of this pipeline?)"
            )
        self.input_dtype = INPUT_DTYPES[graph_input.type]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class LiteRTClassifier(Classifier):
    """A .tflite file on ai-edge-litert's interpreter (XNNPACK on CPU), through its `serving_default`
    signature: the batch dimension follows the input."""

    def __init__(self, model_path: str | Path, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        from pipeline.litert import SIGNATURE, read_metadata

        self.path = found(model_path)
        self.read_properties(read_metadata(self.path))
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads or None)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as exc:
            raise PipelineError(f"{self.path}: the LiteRT runtime cannot load it ({first_line(exc)})") from None
        inputs, outputs = self.runner.get_input_details(), self.runner.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise PipelineError(
                f"{self.path}: signature {SIGNATURE} has {len(inputs)} inputs and {len(outputs)} outputs"
            )
        ((self.input_name, details),) = inputs.items()
        (self.output_name,) = outputs
        if details["dtype"] not in (np.uint8, np.float32):
            raise PipelineError(
                f"{self.path}: input {self.input_name} is {np.dtype(details['dtype'])}, not uint8 or float32"
            )
        self.input_dtype = details["dtype"]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.runner(**{self.input_name: x})[self.output_name]


ENGINES = {".onnx": OnnxClassifier, ".tflite": LiteRTClassifier}


def open_classifier(model_path: str | Path, threads: int | None = None) -> Classifier:
    """The classifier for an exported file, by its suffix: .onnx or .tflite."""
    path = Path(model_path)
    engine = ENGINES.get(path.suffix)
    if engine is None:
        raise PipelineError(f"{path}: not an exported model (.onnx or .tflite)")
    return engine(path, threads)


def found(model_path: str | Path) -> Path:
    path = Path(model_path)
    if not path.is_file():
        raise PipelineError(f"{path}: model file not found (run `dvc repro export`)")
    return path


def raw_input(values: np.ndarray, dtype) -> np.ndarray:
    """Values as the model's input dtype: pixels rounded to uint8 (callers checked 0..255), features float32."""
    if dtype == np.uint8 and values.dtype != np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype, copy=False)
