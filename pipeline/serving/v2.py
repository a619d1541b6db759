"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP/REST protocol) for one model: an infer
request's JSON and its binary tensor data extension (the JSON header's length in the
`Inference-Header-Content-Length` header, the raw tensor bytes after it), and the response in either
form. What `tritonclient.http` and KServe's clients send and read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline.serving.inputs import DATATYPES, V2_DATATYPES, BadRequest, ServedModel, as_numbers, model_input

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    id: str | None
    inputs: np.ndarray  # the model's raw input, checked
    binary_output: bool


def parse_infer_request(model: ServedModel, body: bytes, header_length: str | None) -> InferRequest:
    if header_length is None:
        header, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
        header, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise BadRequest("request is not a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"inputs must be a list of one tensor, {model.input.name!r}")
    x, used = input_tensor(model, inputs[0], binary)
    if used != len(binary):
        raise BadRequest(f"{len(binary) - used} bytes of binary data follow the tensors the header describes")
    request_id = request.get("id")
    return InferRequest(None if request_id is None else str(request_id), x, binary_output(model, request))


def input_tensor(model: ServedModel, tensor: dict, binary: memoryview | bytes) -> tuple[np.ndarray, int]:
    """The model's input from one request tensor, and how many binary bytes it took."""
    spec = model.input
    name = tensor.get("name")
    where = f"input {name!r}"
    if name != spec.name:
        raise BadRequest(f"{where}: the model's input is {spec.name!r}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES[model.kind]:
        raise BadRequest(f"{where}: datatype {datatype!r} is not the model's {spec.datatype}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary):
            raise BadRequest(f"{where}: binary_data_size {size!r} is more than the {len(binary)} bytes sent")
        if datatype == "BYTES":
            values = np.array(byte_strings(binary[:size], count, where), dtype=object).reshape(shape)
            return model_input(model, values, where), size
        dtype = V2_DATATYPES[datatype]
        if size != count * dtype.itemsize:
            raise BadRequest(f"{where}: {size} bytes of binary data for shape {shape} of {datatype}")
        values = np.frombuffer(binary[:size], dtype=dtype).reshape(shape)
        return model_input(model, values, where), size
    if "data" not in tensor:
        raise BadRequest(f"{where}: neither data nor parameters.binary_data_size")
    data = tensor["data"]
    if not isinstance(data, list):
        raise BadRequest(f"{where}: data must be a list")
    if datatype == "BYTES":  # strings, for the kind's decoder (text)
        if len(data) != count or not all(isinstance(item, str) for item in data):
            raise BadRequest(f"{where}: BYTES data must be {count} strings for shape {shape}")
        return model_input(model, np.array(data, dtype=object).reshape(shape), where), 0
    values = as_numbers(data, where)
    if values.size != count:
        raise BadRequest(f"{where}: {values.size} values do not fill shape {shape}")
    return model_input(model, values.reshape(shape), where), 0


def byte_strings(data: memoryview | bytes, count: int, where: str) -> list[bytes]:
    """A binary BYTES tensor: each element a 4-byte little-endian length, then that many bytes."""
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(data):
            raise BadRequest(f"{where}: BYTES binary data ends before its {count} elements")
        length = int.from_bytes(data[offset : offset + 4], "little")
        if offset + 4 + length > len(data):
            raise BadRequest(f"{where}: a BYTES element's length runs past the data")
        items.append(bytes(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    if offset != len(data):
        raise BadRequest(f"{where}: {len(data) - offset} bytes follow the BYTES tensor's {count} elements")
    return items


def binary_output(model: ServedModel, request: dict) -> bool:
    """Whether the output goes back as binary data: asked per output (`binary_data`), else for the
    whole request (`binary_data_output`); JSON by default."""
    parameters = request.get("parameters") or {}
    default = bool(parameters.get("binary_data_output", False)) if isinstance(parameters, dict) else False
    outputs = request.get("outputs")
    if outputs is None:
        return default
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise BadRequest("outputs must be a list of objects")
    binary = default
    for output in outputs:
        if output.get("name") != model.output.name:
            raise BadRequest(f"output {output.get('name')!r}: the model's output is {model.output.name!r}")
        binary = bool((output.get("parameters") or {}).get("binary_data", default))
    return binary


def infer_response(model: ServedModel, request: InferRequest, probabilities: np.ndarray) -> tuple[bytes, dict]:
    """The response body and its headers."""
    output: dict = {"name": model.output.name, "datatype": model.output.datatype, "shape": list(probabilities.shape)}
    response: dict = {"model_name": model.name, "model_version": model.version, "outputs": [output]}
    if request.id is not None:
        response["id"] = request.id
    if not request.binary_output:
        output["data"] = probabilities.ravel()
        return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), {"content-type": "application/json"}
    data = np.ascontiguousarray(probabilities, dtype=np.float32).tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = orjson.dumps(response)
    return header + data, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
