"""params.yaml schema: the committed file validates, and every kind of mistake is one clear line."""

import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.params import flatten, load_params, parse_params

from conftest import REPO

BASE = {"data": {"class_names": ["a", "b"]}}


def error_for(raw) -> str:
    with pytest.raises(PipelineError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_committed_params_validate():
    params = load_params(REPO / "params.yaml")
    assert len(params.data.class_names) == 10
    assert set(params.data.sha256) == set(params.data.files.names())


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({**BASE, "train": {"epochs": 0}}, "params.yaml: train.epochs must be >= 1, got 0"),
        ({**BASE, "trian": {}}, "params.yaml: trian is not a known key"),
        ({**BASE, "prepare": {"seeds": 1}}, "params.yaml: prepare.seeds is not a known key"),
        ({**BASE, "prepare": {"val_fraction": 1.5}}, "params.yaml: prepare.val_fraction must be < 1.0, got 1.5"),
        ({**BASE, "train": {"batch_size": "big"}}, "params.yaml: train.batch_size must be an integer, got 'big'"),
        ({**BASE, "train": {"model": "cnnx"}}, "params.yaml: train.model must be 'mlp', 'cnn' or 'rnn', got 'cnnx'"),
        ({**BASE, "train": {"model": [{"Dense": {}, "Flatten": {}}]}}, "params.yaml: train.model[0] must map one layer"),
        ({**BASE, "train": {"mixed_precision": "yes"}}, "params.yaml: train.mixed_precision must be 'auto', 'on' or 'off', got 'yes'"),
        ({"data": {"class_names": ["a", "a"]}}, "params.yaml: data.class_names must be unique, 'a' repeats"),
        ({"data": {"class_names": ["a", "b"], "sha256": {"nope.gz": "0" * 64}}},
         "params.yaml: data.sha256 names 'nope.gz', which is not one of data.files"),
        ({"data": {"class_names": ["a", "b"], "sha256": {"train-images-idx3-ubyte.gz": "xyz"}}},
         "params.yaml: data.sha256.train-images-idx3-ubyte.gz must match"),
        ({}, "params.yaml: data is required"),
        ([1, 2], "params.yaml: must be a mapping of sections, got list"),
    ],
)
def test_bad_params_name_key_and_value(raw, expected):
    assert error_for(raw).startswith(expected)


def test_several_mistakes_are_counted():
    message = error_for({**BASE, "train": {"epochs": 0, "batch_size": 0}})
    assert message.endswith("(and 1 more)")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PipelineError, match=r"nope\.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(PipelineError, match=r"bad\.yaml: not valid YAML \(line \d+\)"):
        load_params(bad)


def test_params_are_frozen_and_flatten_to_dotted_keys():
    params = parse_params(BASE)
    with pytest.raises(Exception):
        params.train.epochs = 3
    flat = flatten(params)
    assert flat["train.epochs"] == params.train.epochs
    assert flat["prepare.normalization.mode"] == "dataset"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_every_dvc_params_key_exists_in_the_schema():
    """dvc.yaml must list keys that the schema knows, or a typo silently tracks nothing."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    flat = flatten(load_params(REPO / "params.yaml"))
    for name, stage in stages.items():
        for key in stage.get("params", []):
            assert any(k == key or k.startswith(key + ".") for k in flat), f"{name}: {key}"
