"""The kinds of data a classifier takes: images, tables and text. Each data format says which kind it
yields (pipeline/formats/), prepare records it in meta.json, and everything that depends on it reads
it here, in one place: the model's input (name, dtype, layout), which `train.augment` keys and
`train.test_time_flip` apply, what the exported forms' metadata says the input is, and how the
predictor and the servers turn a user's input into the model's. Plain data: no TensorFlow, no
pydantic (the predictor imports it in a deployment with onnxruntime alone).

    kind   input        dtype    shape                  a user gives
    image  `image`      uint8    [batch, h, w, c]       decoded pixels 0..255
    table  `features`   float32  [batch, n]             raw feature values in feature_names order
    text   `text`       uint8    [batch, max_bytes]     the text's UTF-8 bytes, zero-padded (the
                                                        SavedModel: one tf.string per text)
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError

OUTPUT_NAME = "probabilities"  # what every model and exported form outputs: softmax over the classes


@dataclass(frozen=True)
class Kind:
    name: str
    input_name: str  # the models' input name, in every exported form
    dtype: str  # the raw input's dtype as prepare stores it and the models take it
    rank: int  # dimensions of one example's input
    layout: str  # what the dimensions are, as the exported metadata names them
    meaning: str  # what a deployer feeds, for metadata.json and the model card
    augmentations: frozenset[str] = frozenset()  # the `train.augment` keys that apply
    mirrors: bool = False  # whether `train.test_time_flip` applies (a left-right mirror means something)

    def check_augment(self, augment) -> None:
        """One line naming an augmentation set for data it does not apply to (`augment`: the
        resolved `train.augment` section)."""
        for key in ("horizontal_flip", "translate", "erase"):
            if key not in self.augmentations and getattr(augment, key):
                raise PipelineError(
                    f"params.yaml: train.augment.{key}: applies to images, the data is {self.name} "
                    f"(set it to {'false' if key == 'horizontal_flip' else 0} or null)"
                )


IMAGE = Kind(
    "image",
    input_name="image",
    dtype="uint8",
    rank=3,
    layout="NHWC",
    meaning="decoded pixels 0..255 as Pillow, OpenCV or an IDX/CIFAR file give them; normalised inside the model",
    augmentations=frozenset({"horizontal_flip", "translate", "erase"}),
    mirrors=True,
)
TABLE = Kind(
    "table",
    input_name="features",
    dtype="float32",
    rank=1,
    layout="NC",
    meaning="raw feature values in feature_names order; normalised inside the model",
)
TEXT = Kind(
    "text",
    input_name="text",
    dtype="uint8",
    rank=1,
    layout="NB",
    meaning=(
        "the text's UTF-8 bytes, cut at max_bytes and zero-padded to it (the SavedModel takes the text itself, "
        "tf.string); standardised, split into words and looked up in the vocabulary inside the model"
    ),
)
KINDS = {kind.name: kind for kind in (IMAGE, TABLE, TEXT)}
LAYOUTS = {kind.layout: kind for kind in KINDS.values()}


def kind_named(name: str, where: str = "kind") -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise PipelineError(f"{where}: unknown kind of data {name!r} (one of {', '.join(KINDS)})") from None
