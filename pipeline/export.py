"""Stage `export`: the trained Keras model as a TensorFlow SavedModel and ONNX (float32, optionally
static int8), with the metadata a deployer needs, registered in MLflow.

    exported/saved_model/    serving signature: image (float32, [batch, h, w, c]) -> probabilities
    exported/model.onnx      tf2onnx, input `image` with symbolic dim `batch`, output `probabilities`
    exported/model.int8.onnx onnxruntime static QDQ quantization, calibrated on a seeded train sample
    exported/metadata.json   input spec, class names, normalisation, opset, sizes and sha256 of files

Everything is built in a temporary directory beside exported/ and renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_dir, write_json
from pipeline.cli import run_cli, stage_parser
from pipeline.errors import PipelineError
from pipeline.hashing import file_sha256, tree_sha256
from pipeline.params import ExportParams, load_params

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
LAYOUT = "NHWC"


def float32_model(model):
    """The same model with float32 layers: mixed-precision models export in float32."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    clone = keras.Sequential.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def serving_function(model, input_shape: tuple[int, ...]):
    import tensorflow as tf

    spec = tf.TensorSpec([None, *input_shape], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    return serve


def export_saved_model(model, serve, out: Path) -> None:
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(out), verbose=False)


def input_layout(meta) -> str:
    return LAYOUT if meta.is_image else "NC"


def onnx_metadata(meta, run_id: str | None) -> dict[str, str]:
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    return {
        "class_names": json.dumps(meta.class_names),
        "input_layout": input_layout(meta),
        "input_shape": json.dumps([BATCH_DIM, *meta.input_shape]),
        "input_dtype": "float32",
        "normalization": meta.normalization.to_json(),
        "input_range": "pixels 0..255 before normalization" if meta.is_image else "raw feature values before normalization",
        "feature_names": json.dumps(meta.feature_names or []),
        "output": f"{OUTPUT_NAME}: softmax over class_names",
        "producer_versions": json.dumps({"tensorflow": tf.__version__, "keras": keras.__version__,
                                         "tf2onnx": tf2onnx.__version__, "onnx": onnx.__version__}),
        "mlflow_run_id": run_id or "",
    }


def export_onnx(serve, opset: int, metadata: dict[str, str], out: Path):
    import onnx
    import tf2onnx

    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    (graph_input,) = model_proto.graph.input
    (graph_output,) = model_proto.graph.output
    if graph_input.name != INPUT_NAME or graph_output.name != OUTPUT_NAME:
        raise PipelineError(f"{out}: tf2onnx named the graph {graph_input.name} -> {graph_output.name}")
    for value in (graph_input, graph_output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    model_proto.doc_string = "Classifier exported by the Keras → ONNX pipeline"
    model_proto.producer_name = "tf2onnx"
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        model_proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model_proto, full_check=True)
    onnx.save_model(model_proto, str(out), save_as_external_data=False)
    return model_proto


def calibration_batches(images: np.ndarray, normalization, size: int, seed: int, batch: int = 50):
    rng = np.random.default_rng(seed)
    picked = images[np.sort(rng.choice(len(images), size=min(size, len(images)), replace=False))]
    x = normalization.apply(picked.astype(np.float32)).astype(np.float32)
    return [x[i:i + batch] for i in range(0, len(x), batch)]


def quantize_int8(fp32_path: Path, batches: list[np.ndarray], out: Path, metadata: dict[str, str]) -> None:
    """onnxruntime static quantization (QDQ, int8 weights, uint8 activations) after quant_pre_process."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    pre = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    pre.unlink()
    model = onnx.load(str(out))
    del model.metadata_props[:]
    for key, value in {**metadata, "quantization": "static QDQ int8 (onnxruntime)"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(out), save_as_external_data=False)


def export(model_path: Path, prepared_dir: str, out_dir: Path, params: ExportParams, seed: int,
           run_id: str | None) -> dict[str, Any]:
    """Build every exported artifact in a temporary directory, then move it onto `out_dir`."""
    from pipeline.model import load_keras_model
    from pipeline.records import read_meta, read_split_arrays

    meta = read_meta(prepared_dir)
    model = float32_model(load_keras_model(str(model_path)))
    if tuple(model.input_shape[1:]) != tuple(meta.input_shape):
        raise PipelineError(f"{model_path}: model input {model.input_shape[1:]} does not match the prepared "
                            f"data's {tuple(meta.input_shape)}")
    serve = serving_function(model, meta.input_shape)
    metadata = onnx_metadata(meta, run_id)
    with atomic_dir(out_dir) as tmp:
        export_saved_model(model, serve, tmp / "saved_model")
        export_onnx(serve, params.opset, metadata, tmp / "model.onnx")
        if params.quantize:
            train_images, _ = read_split_arrays(prepared_dir, meta, "train")
            batches = calibration_batches(train_images, meta.normalization, params.calibration_size, seed)
            quantize_int8(tmp / "model.onnx", batches, tmp / "model.int8.onnx", metadata)
        files = {}
        for name in ("model.onnx", "model.int8.onnx"):
            if (tmp / name).exists():
                files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
        saved = tmp / "saved_model"
        files["saved_model"] = {"bytes": sum(p.stat().st_size for p in saved.rglob("*") if p.is_file()),
                                "sha256": tree_sha256(saved)}
        info = {
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, *meta.input_shape],
                      "layout": input_layout(meta), "feature_names": meta.feature_names,
                      "range": [0, 255] if meta.is_image else None},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, meta.num_classes],
                       "meaning": "softmax probabilities over class_names"},
            "class_names": meta.class_names,
            "normalization": meta.normalization.to_dict(),
            "normalization_formula": "(input * scale - mean) / std",
            "opset": params.opset,
            "files": files,
            "source_model": {"path": str(model_path), "sha256": file_sha256(model_path)},
            "producer_versions": json.loads(metadata["producer_versions"]),
            "mlflow_run_id": run_id,
        }
        (tmp / "metadata.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> None:
    parser = stage_parser("export", __doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--model", default="models/model.keras")
    parser.add_argument("--run-file", default="models/mlflow_run.json")
    parser.add_argument("--out", default="exported")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    from pipeline.tracking import Tracker

    tracker = Tracker.resume(args.run_file)
    out = Path(args.out)
    info = export(Path(args.model), args.prepared, out, params.export, params.prepare.seed, tracker.run_id)

    version = tracker.log_onnx_model(out / "model.onnx", params.export.registered_model_name,
                                     input_shape=info["input"]["shape"][1:])
    tracker.log_artifact(out / "saved_model", "saved_model")
    tracker.log_artifact(out / "metadata.json", "export")
    info["mlflow_registered_model"] = {"name": params.export.registered_model_name, "version": version}
    write_json(out / "metadata.json", info)
    sizes = ", ".join(f"{name} {f['bytes'] / 1024:,.0f} KiB" for name, f in info["files"].items())
    print(f"export: {sizes}; registered {params.export.registered_model_name} v{version}")


if __name__ == "__main__":
    run_cli(main)
