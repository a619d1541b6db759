"""A Triton Inference Server model repository for an exported ONNX file, so that a Triton user
deploys it without editing anything:

    <out>/<name>/config.pbtxt    platform onnxruntime_onnx; input and output names, data types and
                                 dims read from the ONNX graph; max_batch_size, dynamic batching,
                                 a CPU instance group; the class names as the output's labels
    <out>/<name>/labels.txt      one class name a line (Triton's classification extension)
    <out>/<name>/1/model.onnx    the file itself

`tritonserver --model-repository <out>` then serves `/v2/models/<name>/infer`, the protocol
`pipeline-serve` speaks too. Reads the ONNX file with `onnx` alone (no TensorFlow, no Triton)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.errors import PipelineError

# ONNX TensorProto element types as Triton's model-config data types (model_config.proto).
TRITON_TYPES = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}
LABELS = "labels.txt"


def graph_tensors(model) -> tuple[list[dict], list[dict], bool]:
    """The graph's inputs (initializers aside) and outputs: name, Triton type and dims; and whether
    every tensor's first dimension is a free batch dimension."""
    initializers = {init.name for init in model.graph.initializer}
    tensors = {
        "input": [v for v in model.graph.input if v.name not in initializers],
        "output": list(model.graph.output),
    }
    described: dict[str, list[dict]] = {"input": [], "output": []}
    batched = True
    for role, values in tensors.items():
        for value in values:
            kind = value.type.tensor_type.elem_type
            if kind not in TRITON_TYPES:
                raise PipelineError(f"{role} {value.name}: ONNX element type {kind} has no Triton data type")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            first = value.type.tensor_type.shape.dim[0] if dims else None
            batched &= first is not None and not first.HasField("dim_value")
            described[role].append({"name": value.name, "data_type": TRITON_TYPES[kind], "dims": dims})
    return described["input"], described["output"], batched


def tensor_block(role: str, tensors: list[dict], labels: bool = False) -> list[str]:
    lines = [f"{role} ["]
    for i, tensor in enumerate(tensors):
        lines += [
            "  {",
            f"    name: {json.dumps(tensor['name'], ensure_ascii=False)}",
            f"    data_type: {tensor['data_type']}",
            f"    dims: [ {', '.join(str(d) for d in tensor['dims'])} ]",
        ]
        if labels:
            lines.append(f'    label_filename: "{LABELS}"')
        lines.append("  }," if i < len(tensors) - 1 else "  }")
    return [*lines, "]"]


def model_config(model, name: str, max_batch_size: int, max_queue_delay_us: int, instances: int) -> str:
    inputs, outputs, batched = graph_tensors(model)
    if batched:
        for tensor in (*inputs, *outputs):
            tensor["dims"] = tensor["dims"][1:]  # Triton adds the batch dimension itself
    else:
        max_batch_size = 0  # a fixed first dimension: Triton must not batch it
    labelled = class_names(model) is not None and len(outputs) == 1
    lines = [
        f"name: {json.dumps(name, ensure_ascii=False)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        *tensor_block("input", inputs),
        *tensor_block("output", outputs, labels=labelled),
    ]
    if max_batch_size > 0:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", "    kind: KIND_CPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def class_names(model) -> list[str] | None:
    props = {p.key: p.value for p in model.metadata_props}
    try:
        names = json.loads(props["class_names"])
    except (KeyError, json.JSONDecodeError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def write_model_repository(
    onnx_path: str | Path,
    out_dir: str | Path,
    name: str,
    max_batch_size: int = 64,
    max_queue_delay_us: int = 0,
    instances: int = 1,
) -> Path:
    """`<out_dir>/<name>/` for the ONNX file at `onnx_path` (replaced whole if it exists, atomically);
    returns that directory."""
    import onnx

    from pipeline.atomic import atomic_dir

    onnx_path = Path(onnx_path)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise PipelineError(f"Triton model name {name!r} must be a plain directory name")
    if max_batch_size < 0 or max_queue_delay_us < 0 or instances < 1:
        raise PipelineError("Triton max_batch_size and max_queue_delay_us must be >= 0, instances >= 1")
    from google.protobuf.message import DecodeError

    if not onnx_path.is_file():
        raise PipelineError(f"{onnx_path}: model file not found")
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except (OSError, DecodeError) as exc:
        raise PipelineError(f"{onnx_path}: not a readable ONNX file ({type(exc).__name__})") from None
    config = model_config(model, name, max_batch_size, max_queue_delay_us, instances)
    target = Path(out_dir) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        (tmp / "1").mkdir()
        shutil.copyfile(onnx_path, tmp / "1" / "model.onnx")
        (tmp / "config.pbtxt").write_text(config)
        names = class_names(model)
        if names is not None:
            (tmp / LABELS).write_text("".join(f"{n}\n" for n in names))
    return target


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.triton", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the exported .onnx file")
    parser.add_argument("out", help="the model repository (tritonserver --model-repository)")
    parser.add_argument("name", help="the model's name in Triton")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-queue-delay-us", type=int, default=0)
    parser.add_argument("--instances", type=int, default=1, help="CPU instances of the model")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    written = write_model_repository(
        args.model, args.out, args.name, args.max_batch_size, args.max_queue_delay_us, args.instances
    )
    print(f"wrote {written}/config.pbtxt, {written}/1/model.onnx")


if __name__ == "__main__":
    from pipeline.cli import run_cli

    run_cli(main)
