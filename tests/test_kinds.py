"""The kinds of data (pipeline/kinds.py): what depends on image, table or text, decided in one place;
an augmentation set for data it does not apply to is one line naming the key."""

import pytest

from pipeline.errors import PipelineError
from pipeline.kinds import IMAGE, KINDS, LAYOUTS, TABLE, TEXT, kind_named
from pipeline.params import parse_params


def augment(**values):
    return parse_params({"train": {"augment": values}}).train.augment


def test_each_kind_names_its_input_and_layout_once():
    assert [(k.name, k.input_name, k.dtype, k.layout) for k in KINDS.values()] == [
        ("image", "image", "uint8", "NHWC"), ("table", "features", "float32", "NC"), ("text", "text", "uint8", "NB")
    ]  # fmt: skip
    assert LAYOUTS == {"NHWC": IMAGE, "NC": TABLE, "NB": TEXT}
    assert IMAGE.mirrors and not TABLE.mirrors and not TEXT.mirrors


@pytest.mark.parametrize(
    "key, value, advice", [("horizontal_flip", True, "false"), ("translate", 0.1, "0"), ("erase", 0.5, "0")]
)
@pytest.mark.parametrize("kind", [TABLE, TEXT], ids=["table", "text"])
def test_an_image_augmentation_on_other_data_is_one_line_naming_the_key(kind, key, value, advice):
    with pytest.raises(PipelineError) as error:
        kind.check_augment(augment(**{key: value}))
    assert str(error.value) == (
        f"params.yaml: train.augment.{key}: applies to images, the data is {kind.name} (set it to {advice} or null)"
    )


def test_images_take_every_augmentation_and_unset_keys_take_none():
    IMAGE.check_augment(augment(horizontal_flip=True, translate=0.1, erase=0.5))
    for kind in KINDS.values():
        kind.check_augment(augment(horizontal_flip=False, translate=0.0, erase=0.0))
        kind.check_augment(augment())  # null: the preset's choice, filled before training


def test_an_unknown_kind_is_one_line():
    assert kind_named("text") is TEXT
    with pytest.raises(
        PipelineError, match=r"^meta\.json: unknown kind of data 'audio' \(one of image, table, text\)$"
    ):
        kind_named("audio", "meta.json")
