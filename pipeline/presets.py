"""The model presets (`train.model: <name>`): each one's layers, the inputs it fits, its own training
hyperparameters and input normalisation. Pure data and small functions; no TensorFlow.

A `train.*` key left unset (null) in params.yaml takes the preset's value; a value set there wins.
An explicit layer list (no preset) takes `CUSTOM`'s values. Every body ends before the classifier
head, Dense(classes) + softmax, which `model.build_model` appends from the data's class count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

Layers = list[dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class Hyper:
    """Training hyperparameters a preset brings; each fills the `train.*` key of the same name."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 0.001
    momentum: float = 0.0
    schedule: str = "constant"
    label_smoothing: float = 0.0
    early_stopping_patience: int = 5  # epochs without a val_loss improvement; 0: every epoch runs
    horizontal_flip: bool = False
    translate: float = 0.0  # random translation, a fraction of height and width
    erase: float = 0.0  # random erasing, the probability an image has a rectangle erased
    vocabulary_size: int = 20_000  # text: ids the vectorizer emits (padding, out-of-vocabulary, the words)
    sequence_length: int = 256  # text: words of each text the model reads


@dataclass(frozen=True)
class Preset:
    name: str
    origin: str
    layers: Callable[[tuple[int, ...], int | None], Layers]  # (input shape, text vocabulary size) → body
    hyper: Hyper
    # Normalisation when train.normalization.mode is `preset`: ("dataset",) or ("fixed", mean, std).
    normalization: tuple = ("dataset",)
    # The kinds of data it takes (pipeline/kinds.py): image, table, text.
    kinds: tuple[str, ...] = ("image",)
    channels: int | None = None  # required channel count, for presets made for colour images
    min_size: int = 1  # smallest height/width the spatial layers can reduce
    intended_for: str = ""

    def check_input(self, input_shape: tuple[int, ...], kind: str) -> str | None:
        """Why this preset cannot take `kind` data of `input_shape`, or None when it can."""
        shape = "×".join(map(str, input_shape))
        if kind not in self.kinds:
            wanted = " or ".join(KIND_WORDS[k] for k in self.kinds)
            return f"preset {self.name!r} needs {wanted}, the data is {KIND_WORDS[kind]} ({shape})"
        if kind == "image":
            height, width, channels = input_shape
            if self.channels is not None and channels != self.channels:
                return (
                    f"preset {self.name!r} is for {self.intended_for}; the data has {shape} images "
                    f"({channels} channel{'s' if channels != 1 else ''}, it needs {self.channels})"
                )
            if min(height, width) < self.min_size:
                return (
                    f"preset {self.name!r} needs images of at least {self.min_size}×{self.min_size} "
                    f"(it is for {self.intended_for}); the data has {shape}"
                )
        return None


KIND_WORDS = {"image": "images", "table": "feature vectors (a table)", "text": "text"}
# BatchNorm's moving statistics, which inference uses, follow each batch with this momentum. Keras'
# default 0.99 needs ~500 steps to forget its initial (0, 1): a few thousand images give ~30 steps
# an epoch, and inference-mode BatchNorm then normalises with statistics the network never saw
# (validation accuracy fell to chance on a 3,600-image set). 0.9 (PyTorch's default) settles in ~40.
BN = {"BatchNormalization": {"momentum": 0.9}}


def _conv_bn_relu(filters: int) -> Layers:
    return [
        {"Conv2D": {"filters": filters, "kernel_size": 3, "padding": "same", "use_bias": False}},
        BN,
        {"Activation": {"activation": "relu"}},
    ]


def _cnn(*_) -> Layers:
    # Conv/batch-norm blocks 16 → 64, 64 → 128, pooled after each stage (~12.9M MACs/image). 16 filters
    # at full size, where 32 cost as long as a 64-filter conv at 14×14 (memory-bound element-wise work
    # on 28×28 maps), and a second conv at 14×14: test accuracy 0.9340 against 0.9326 for 32-64-128
    # (benchmarks/default_model.py: mid-64x2).
    return [
        *_conv_bn_relu(16),
        {"MaxPooling2D": {"pool_size": 2}},
        *_conv_bn_relu(64),
        *_conv_bn_relu(64),
        {"MaxPooling2D": {"pool_size": 2}},
        *_conv_bn_relu(128),
        {"MaxPooling2D": {"pool_size": 2}},
        {"Flatten": {}},
        {"Dropout": {"rate": 0.3}},
        {"Dense": {"units": 128, "use_bias": False}},
        BN,
        {"Activation": {"activation": "relu"}},
        {"Dropout": {"rate": 0.3}},
    ]


def _mlp(*_) -> Layers:
    return [
        {"Flatten": {}},
        {"Dense": {"units": 256, "activation": "relu"}},
        {"Dropout": {"rate": 0.2}},
        {"Dense": {"units": 128, "activation": "relu"}},
        {"Dropout": {"rate": 0.2}},
    ]


def _rnn(input_shape: tuple[int, ...], *_) -> Layers:
    # Each image row is one time step: (height, width * channels).
    height, width, channels = input_shape
    return [
        {"Reshape": {"target_shape": [height, width * channels]}},
        {"LSTM": {"units": 128}},
        {"Dropout": {"rate": 0.2}},
    ]


def _keras_mlp(*_) -> Layers:
    return [
        {"Flatten": {}},
        {"Dense": {"units": 64, "activation": "relu"}},
        {"Dense": {"units": 64, "activation": "relu"}},
    ]


def _mlp_128_64(*_) -> Layers:
    return [
        {"Flatten": {}},
        {"Dense": {"units": 128, "activation": "relu"}},
        {"Dense": {"units": 64, "activation": "relu"}},
    ]


def _lenet(*_) -> Layers:
    return [
        {"Conv2D": {"filters": 6, "kernel_size": 5, "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 2}},
        {"Conv2D": {"filters": 16, "kernel_size": 5, "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 2}},
        {"Flatten": {}},
        {"Dense": {"units": 120, "activation": "relu"}},
        {"Dense": {"units": 84, "activation": "relu"}},
    ]


def _cnn4(*_) -> Layers:
    blocks: Layers = []
    for filters in (16, 32, 64, 128):
        blocks += [
            {"Conv2D": {"filters": filters, "kernel_size": 3, "padding": "same", "activation": "relu"}},
            {"MaxPooling2D": {"pool_size": 2}},
        ]
    return [*blocks, {"Flatten": {}}, {"Dense": {"units": 512, "activation": "relu"}}]


def _cnn2(*_) -> Layers:
    return [
        {"Conv2D": {"filters": 32, "kernel_size": 3, "padding": "same", "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 2}},
        {"Conv2D": {"filters": 64, "kernel_size": 3, "padding": "same", "activation": "relu"}},
        {"MaxPooling2D": {"pool_size": 2}},
        {"Flatten": {}},
        {"Dense": {"units": 128, "activation": "relu"}},
    ]


def _tabular_mlp(*_) -> Layers:
    return [{"Dense": {"units": 10, "activation": "relu"}}]


def _text_bag(_, vocabulary_size: int) -> Layers:
    # fastText (Joulin et al. 2016): the mean of the words' embeddings, then the linear classifier.
    return [{"EmbeddingBag": {"input_dim": vocabulary_size, "output_dim": 64}}, {"Dropout": {"rate": 0.2}}]


def _text_cnn(_, vocabulary_size: int) -> Layers:
    # Kim 2014, one filter width: 5-word windows, max over the text.
    return [
        {"Embedding": {"input_dim": vocabulary_size, "output_dim": 64}},
        {"Conv1D": {"filters": 128, "kernel_size": 5, "padding": "same", "activation": "relu"}},
        {"GlobalMaxPooling1D": {}},
        {"Dropout": {"rate": 0.3}},
    ]


def _text_lstm(_, vocabulary_size: int) -> Layers:
    # The tutorials' recurrent classifier: embedding, a bidirectional LSTM, its last states.
    return [
        {"Embedding": {"input_dim": vocabulary_size, "output_dim": 64}},
        {"Bidirectional": {"layer": {"LSTM": {"units": 64}}}},
        {"Dropout": {"rate": 0.3}},
    ]


_HALF = ("fixed", 0.5, 0.5)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "cnn",
            "this project's default: conv/batch-norm 16, 64, 64, 128, dropout, cosine-decayed Adam, "
            "flips (and each test image averaged with its mirror)",
            _cnn,
            Hyper(epochs=20, batch_size=128, schedule="cosine", horizontal_flip=True),
            min_size=8,
            intended_for="small grey or colour images",
        ),
        Preset(
            "mlp",
            "this project's baseline MLP: 256-128 with dropout",
            _mlp,
            Hyper(epochs=20, batch_size=128, schedule="cosine"),
            kinds=("image", "table"),
        ),
        Preset(
            "rnn",
            "an LSTM reading each image row as one time step",
            _rnn,
            Hyper(epochs=10, batch_size=128, schedule="cosine"),
            intended_for="images read row by row",
        ),
        Preset(
            "keras_mlp",
            "the Keras/TensorFlow beginner tutorial: 64-64 MLP, Adam, 5 epochs, inputs in [0, 1]",
            _keras_mlp,
            Hyper(epochs=5, batch_size=32),
            normalization=("fixed", 0.0, 1.0),
            kinds=("image", "table"),
        ),
        Preset(
            "mlp_128_64",
            "the PyTorch-style MLP: 128-64, SGD lr 0.01 momentum 0.9, batch 64, mean/std 0.5",
            _mlp_128_64,
            Hyper(epochs=10, batch_size=64, optimizer="sgd", learning_rate=0.01, momentum=0.9),
            normalization=_HALF,
            kinds=("image", "table"),
        ),
        Preset(
            "lenet",
            "the PyTorch CIFAR-10 tutorial's LeNet: batch 4, 2 epochs, SGD lr 0.001 momentum 0.9",
            _lenet,
            Hyper(epochs=2, batch_size=4, optimizer="sgd", learning_rate=0.001, momentum=0.9),
            normalization=_HALF,
            channels=3,
            min_size=32,
            intended_for="32×32×3 colour images (CIFAR-10)",
        ),
        Preset(
            "cnn4",
            "a classic CIFAR-10 CNN: four conv/pool blocks 16-32-64-128, Dense 512, SGD lr 0.01",
            _cnn4,
            Hyper(epochs=10, batch_size=64, optimizer="sgd", learning_rate=0.01),
            channels=3,
            min_size=16,
            intended_for="32×32×3 colour images (CIFAR-10)",
        ),
        Preset(
            "cnn2",
            "the classic MNIST CNN: two conv/pool blocks 32-64, Dense 128, SGD lr 0.01",
            _cnn2,
            Hyper(epochs=10, batch_size=64, optimizer="sgd", learning_rate=0.01),
            min_size=4,
            intended_for="28×28 grey images",
        ),
        # A table of ~100 rows gives 4 steps an epoch at batch 32: 50 such epochs of Adam 0.001 stop at
        # 0.67 on Iris. Batch 8 and Adam 0.01 (the TensorFlow Iris walkthrough's rate) reach 0.97.
        Preset(
            "tabular_mlp",
            "the tabular (Iris-style) classifier: one Dense(10, relu) layer, Adam 0.01, batch 8",
            _tabular_mlp,
            Hyper(epochs=100, batch_size=8, learning_rate=0.01),
            kinds=("table",),
            intended_for="feature vectors",
        ),
        Preset(
            "text_bag",
            "fastText-style bag of words: the mean of 64-d word embeddings, Adam 0.01",
            _text_bag,
            Hyper(epochs=30, batch_size=64, learning_rate=0.01, schedule="cosine", early_stopping_patience=3),
            kinds=("text",),
            intended_for="text",
        ),
        Preset(
            "text_cnn",
            "a 1-D convolutional text classifier: 64-d embeddings, 128 filters of 5 words, max over the text",
            _text_cnn,
            Hyper(epochs=10, batch_size=64, learning_rate=0.003, schedule="cosine", early_stopping_patience=3),
            kinds=("text",),
            intended_for="text",
        ),
        Preset(
            "text_lstm",
            "the tutorials' recurrent classifier: 64-d embeddings, a bidirectional LSTM of 64 units",
            _text_lstm,
            Hyper(
                epochs=10,
                batch_size=64,
                learning_rate=0.003,
                schedule="cosine",
                early_stopping_patience=3,
                sequence_length=128,
            ),  # fmt: skip
            kinds=("text",),
            intended_for="text",
        ),
    ]
}

# Values for an explicit layer list (no preset).
CUSTOM = Hyper(epochs=20, batch_size=128, schedule="cosine")

PRESET_NAMES = tuple(PRESETS)


def hyper_for(model: str | list) -> Hyper:
    return PRESETS[model].hyper if isinstance(model, str) else CUSTOM


AUGMENT = ("horizontal_flip", "translate", "erase")  # Hyper's keys that fill train.augment, not train itself
TEXT = ("vocabulary_size", "sequence_length")  # and train.text


def filled_from_preset(train):
    """The `train` params (params.TrainParams) with every key left null filled from the preset (or
    CUSTOM for a layer list); an unknown preset is one line naming the choices."""
    from pipeline.errors import PipelineError

    if isinstance(train.model, str) and train.model not in PRESETS:
        choices = ", ".join(repr(name) for name in PRESET_NAMES[:-1]) + f" or {PRESET_NAMES[-1]!r}"
        raise PipelineError(f"params.yaml: train.model must be {choices}, got {train.model!r}")
    hyper = hyper_for(train.model)
    top = {f.name: getattr(hyper, f.name) for f in fields(Hyper) if f.name not in AUGMENT + TEXT}
    filled = {key: value for key, value in top.items() if getattr(train, key) is None}
    augment = train.augment.model_copy(
        update={key: getattr(hyper, key) for key in AUGMENT if getattr(train.augment, key) is None}
    )
    text = train.text.model_copy(update={key: getattr(hyper, key) for key in TEXT if getattr(train.text, key) is None})
    if train.test_time_flip is None:  # a model that learnt mirrors is scored on them too
        filled["test_time_flip"] = augment.horizontal_flip
    return train.model_copy(update={**filled, "augment": augment, "text": text})


def normalization_for_model(model: str | list) -> tuple:
    return PRESETS[model].normalization if isinstance(model, str) else ("dataset",)


def check_fits(model: str | list, input_shape: tuple[int, ...], kind: str) -> str | None:
    return PRESETS[model].check_input(tuple(input_shape), kind) if isinstance(model, str) else None


def preset_layers(name: str, input_shape: tuple[int, ...], vocabulary_size: int | None = None) -> Layers:
    return PRESETS[name].layers(tuple(input_shape), vocabulary_size)
