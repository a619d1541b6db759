"""Test-time flip averaging inside the model (`train.test_time_flip`): two Keras layers that are
identities while training and, at inference, score every image and its left-right mirror and return
the mean of the two probability vectors.

    Input → normalise → MirrorBatch → <body> → Dense → softmax → AverageMirrored

MirrorBatch turns a batch of n images into 2n (the images, then their mirrors); AverageMirrored
splits the 2n probability rows in two halves and averages them. Because they are layers of the
Sequential, everything downstream sees one model: validation during training, evaluate's metrics,
every exported graph (SavedModel, ONNX, LiteRT: a Gather, a Concat and a Split, standard ops each
runtime has) and verify's parity. The price is twice the inference work; training is unchanged.

Registered with Keras' serialization, so `keras.saving.load_model` (safe mode) rebuilds them once
this module is imported (pipeline/model.py: load_keras_model does).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="pipeline")
class MirrorBatch(keras.layers.Layer):
    """At inference, [images; images mirrored left to right] (batch 2n); in training, the batch as given."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        width = inputs.shape[2]  # (batch, height, width, channels): static for images
        mirrored = ops.take(inputs, list(range(width - 1, -1, -1)), axis=2)
        return ops.concatenate([inputs, mirrored], axis=0)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="pipeline")
class AverageMirrored(keras.layers.Layer):
    """At inference, the mean of the two halves of the batch MirrorBatch made (back to n rows)."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        plain, mirrored = ops.split(inputs, 2, axis=0)
        return (plain + mirrored) * 0.5

    def compute_output_shape(self, input_shape):
        return input_shape


def mirror_layers() -> tuple[keras.layers.Layer, keras.layers.Layer]:
    """The pair, named as the model summary and the exported graphs show them; both float32 (the
    first follows the float32 normalisation, the second the float32 softmax, even under mixed precision)."""
    return MirrorBatch(dtype="float32", name="mirror"), AverageMirrored(dtype="float32", name="mirror_average")


def averages_mirrors(model) -> bool:
    """Whether `model` holds the mirror pair (its inference costs two passes per image)."""
    return any(isinstance(layer, MirrorBatch) for layer in model.layers)


def single_pass(model):
    """The same network without the mirror pair (one pass an image, the same weights): what
    `test_time_flip: false` would have exported, for timing the difference."""
    from pipeline.rebuild import rebuilt

    def without_mirrors(config) -> None:
        config["layers"] = [
            layer for layer in config["layers"] if layer["class_name"] not in ("MirrorBatch", "AverageMirrored")
        ]

    return rebuilt(model, without_mirrors)


def with_mirrors(model):
    """The same network with the mirror pair around its body (the same weights): what
    `test_time_flip: true` would have exported. The model itself when it holds the pair already."""
    from pipeline.rebuild import rebuilt

    def add_mirrors(config) -> None:
        layers = config["layers"]
        first, average = (keras.saving.serialize_keras_object(layer) for layer in mirror_layers())
        body = next(i for i, layer in enumerate(layers) if layer["class_name"] not in ("InputLayer", "Rescaling"))
        config["layers"] = [*layers[:body], first, *layers[body:], average]

    return model if averages_mirrors(model) else rebuilt(model, add_mirrors)
