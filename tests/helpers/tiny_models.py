"""Tiny exported models built in a test, with the metadata export writes: an ONNX image classifier
(uint8 NHWC pixels -> probabilities) and table classifier (float32 features), and the image model
as a LiteRT file. Seeded weights; milliseconds to build (the LiteRT one needs TensorFlow's converter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def metadata(input_shape: list, layout: str, classes: int, feature_names: list[str] | None = None) -> dict[str, str]:
    return {
        "class_names": json.dumps([f"class_{i}" for i in range(classes)]),
        "input_shape": json.dumps(input_shape),
        "input_layout": layout,
        "feature_names": json.dumps(feature_names or []),
    }


def weights(inputs: int, classes: int, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, scale, (inputs, classes)).astype(np.float32), rng.normal(0, 0.1, classes).astype(np.float32)


PIXEL_SCALE, FEATURE_SCALE = 0.002, 0.5  # weights that keep the softmax of 0..255 pixels unsaturated


def linear_onnx(path: Path, name: str, elem_type: int, shape: tuple[int, ...], classes: int, props: dict[str, str],
                batch: str | int = "batch", seed: int = 0) -> Path:  # fmt: skip
    """input -> float -> [n, features] -> MatMul + Add -> Softmax -> `probabilities`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = int(np.prod(shape))
    w, b = weights(features, classes, seed, PIXEL_SCALE if elem_type == TensorProto.UINT8 else FEATURE_SCALE)
    nodes = [
        helper.make_node("Cast", [name], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(name, elem_type, [batch, *shape])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes])],
        [
            numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"),
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))
    return path


def image_onnx(path: Path, shape=(4, 4, 1), classes: int = 3, batch: str | int = "batch") -> Path:
    from onnx import TensorProto

    props = metadata([batch, *shape], "NHWC", classes)
    return linear_onnx(path, "image", TensorProto.UINT8, shape, classes, props, batch)


def table_onnx(path: Path, features: int = 3, classes: int = 3) -> Path:
    from onnx import TensorProto

    props = metadata(["batch", features], "NC", classes, [f"f{i}" for i in range(features)])
    return linear_onnx(path, "features", TensorProto.FLOAT, (features,), classes, props, seed=1)


def image_litert(path: Path, shape=(4, 4, 1), classes: int = 3) -> Path:
    """The image model's arithmetic as a LiteRT file (TensorFlow's converter), signature
    `serving_default`: image (uint8, any batch) -> probabilities, with the pipeline's metadata."""
    import tensorflow as tf

    from pipeline.litert import with_metadata

    w, b = weights(int(np.prod(shape)), classes, 0, PIXEL_SCALE)

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.uint8, name="image")])
        def serve(self, image):
            flat = tf.reshape(tf.cast(image, tf.float32), [-1, int(np.prod(shape))])
            return {"probabilities": tf.nn.softmax(flat @ w + b)}

    module = Tiny()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    flatbuffer = converter.convert()
    path.write_bytes(with_metadata(flatbuffer, metadata(["batch", *shape], "NHWC", classes)))
    return path
