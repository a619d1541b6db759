"""The served model's input and output tensors, and the one place that turns what a request carries
into the model's raw input. Each kind of data has its request form here and nowhere else: the HTTP
protocols (MLflow's JSON, the Open Inference Protocol) only find the values and hand them over."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.classifier import Classifier

# The Open Inference Protocol's tensor datatypes (Triton's names without TYPE_) as NumPy dtypes.
V2_DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype: name for name, dtype in V2_DATATYPES.items()}
PLATFORMS = {".onnx": "onnxruntime_onnx", ".tflite": "tensorflow_lite"}


class BadRequest(Exception):
    """A request the server refuses: an HTTP status (4xx) and one line saying what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # without the batch dimension

    @property
    def datatype(self) -> str:
        return DATATYPE_OF[self.dtype]

    def shape_text(self) -> str:
        return "[" + ", ".join(["n", *map(str, self.shape)]) + "]"


def model_kind(classifier: Classifier) -> str:
    """What kind of data the model takes (pipeline/kinds.py), as its exported metadata names it."""
    return classifier.kind.name


class ServedModel:
    """An exported classifier as the server names and describes it."""

    def __init__(self, classifier: Classifier, name: str, version: str = "1"):
        self.classifier, self.name, self.version = classifier, name, version
        self.kind = model_kind(classifier)
        self.platform = PLATFORMS.get(Path(classifier.path).suffix, "unknown")
        self.input = Tensor(classifier.input_name, np.dtype(classifier.input_dtype), tuple(classifier.input_shape))
        output_name = getattr(classifier, "output_name", None) or classifier.session.get_outputs()[0].name
        self.output = Tensor(output_name, np.dtype(np.float32), (len(classifier.class_names),))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The runtime on one batch of raw inputs; called from one thread at a time (LiteRT's
        interpreter is not thread-safe; onnxruntime's threads already use every core)."""
        return np.asarray(self.classifier.run(x), dtype=np.float32)

    def metadata(self) -> dict:
        """The Open Inference Protocol's model metadata (also Triton's and KServe's): a text model
        takes its texts as a BYTES tensor (UINT8 rows of the encoded bytes work too)."""
        inputs = [tensor_metadata(self.input)]
        if self.kind == "text":
            inputs = [{"name": self.input.name, "datatype": "BYTES", "shape": [-1]}]
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": inputs,
            "outputs": [tensor_metadata(self.output)],
            "parameters": {"kind": self.kind, "class_names": self.classifier.class_names},
        }


def without_spinning(classifier: Classifier, threads: int | None) -> Classifier:
    """The classifier with onnxruntime's intra-op threads not spinning between calls. Spinning saves
    a caller that runs calls back to back a thread wake-up; in a server the spinning threads hold the
    cores its event loop needs to read the next requests (benchmarks/serving.py: the default model
    under 8 clients on two cores, roughly 1.5-2x the images/s without it). A LiteRT interpreter is
    returned as it is."""
    from pipeline.classifier import OnnxClassifier

    if not isinstance(classifier, OnnxClassifier):
        return classifier
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = classifier.session.get_providers()
    classifier.session = ort.InferenceSession(str(classifier.path), options, providers=providers)
    return classifier


def tensor_metadata(tensor: Tensor) -> dict:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": [-1, *tensor.shape]}


def as_numbers(values, where: str) -> np.ndarray:
    """JSON values (nested lists) as a NumPy array of numbers, or BadRequest."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{where}: not a rectangular array of numbers (ragged nesting)") from None
    if array.dtype.kind not in "iuf":
        raise BadRequest(f"{where}: not an array of numbers ({describe_dtype(array)} values)")
    return array


def describe_dtype(array: np.ndarray) -> str:
    return {"b": "boolean", "U": "string", "S": "bytes", "O": "mixed or non-numeric"}.get(
        array.dtype.kind, str(array.dtype)
    )


def model_input(model: ServedModel, values, where: str) -> np.ndarray:
    """A request's values (JSON nested lists, or an array decoded from binary tensor data) as the
    model's raw input, [n, *input shape] in its dtype; BadRequest naming `where` otherwise. The
    decoder of the model's kind decides what it accepts."""
    return DECODERS[model.kind](values, model.input, where)


def checked_shape(array: np.ndarray, spec: Tensor, where: str) -> np.ndarray:
    if array.ndim != len(spec.shape) + 1 or array.shape[1:] != spec.shape:
        raise BadRequest(f"{where}: shape {list(array.shape)} is not {spec.shape_text()}")
    return array


def image_pixels(values, spec: Tensor, where: str) -> np.ndarray:
    """Images: integers 0..255 (uint8 pixels, NHWC as decoders give them)."""
    array = checked_shape(as_numbers(values, where), spec, where)
    if array.dtype == np.uint8:
        return array
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadRequest(f"{where}: pixels must lie in 0..255, got values from {array.min()} to {array.max()}")
    if array.dtype.kind == "f" and not np.array_equal(array, np.rint(array)):
        raise BadRequest(f"{where}: pixels must be integers 0..255, got fractions")
    return array.astype(np.uint8)


def table_features(values, spec: Tensor, where: str) -> np.ndarray:
    """Tables: finite numbers, float32 features in the model's feature_names order."""
    features = checked_shape(as_numbers(values, where), spec, where).astype(np.float32)
    if not np.isfinite(features).all():
        raise BadRequest(f"{where}: features must be finite numbers (NaN, infinite or beyond float32)")
    return features


def text_bytes(values, spec: Tensor, where: str) -> np.ndarray:
    """Texts: strings (JSON), or UTF-8 bytes (an Open Inference Protocol BYTES tensor), encoded as the
    model takes them (pipeline/text.py: cut at max_bytes, zero-padded); or rows already encoded
    (uint8 [n, max_bytes])."""
    from pipeline.text import encode_texts

    if isinstance(values, np.ndarray) and values.dtype == np.uint8:
        return checked_shape(values, spec, where)
    items = np.asarray(values, dtype=object).reshape(-1) if not isinstance(values, (str, bytes)) else [values]
    texts = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"{where}: a text is not UTF-8") from None
        if not isinstance(item, str):
            raise BadRequest(f"{where}: texts must be strings, got {type(item).__name__}")
        texts.append(item)
    return encode_texts(texts, spec.shape[0])


DECODERS = {"image": image_pixels, "table": table_features, "text": text_bytes}
# The Open Inference Protocol datatypes a request may declare for each kind's input.
DATATYPES = {"image": {"UINT8"}, "table": {"FP32"}, "text": {"BYTES", "UINT8"}}
