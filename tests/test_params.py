"""params.yaml schema: the committed file validates, and every kind of mistake is one clear line."""

import pytest
import yaml
from pydantic import ValidationError

from pipeline.errors import PipelineError
from pipeline.params import flatten, load_params, parse_params

from helpers.commands import REPO, committed_params, run

BASE = {"data": {"format": "idx"}}


def error_for(raw) -> str:
    with pytest.raises(PipelineError) as info:
        parse_params(raw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_committed_params_validate():
    params = parse_params(committed_params())
    assert params.data.format == "idx" and len(params.data.idx.class_names) == 10
    assert set(params.data.idx.sha256) == set(params.data.idx.files())


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({**BASE, "train": {"epochs": 0}}, "params.yaml: train.epochs must be >= 1, got 0"),
        ({**BASE, "trian": {}}, "params.yaml: trian is not a known key"),
        ({**BASE, "prepare": {"seeds": 1}}, "params.yaml: prepare.seeds is not a known key"),
        ({**BASE, "prepare": {"val_fraction": 1.5}}, "params.yaml: prepare.val_fraction must be < 1.0, got 1.5"),
        ({**BASE, "train": {"batch_size": "big"}}, "params.yaml: train.batch_size must be an integer, got 'big'"),
        (
            {**BASE, "train": {"model": [{"Dense": {}, "Flatten": {}}]}},
            "params.yaml: train.model[0] must map one layer",
        ),
        (
            {**BASE, "train": {"mixed_precision": "yes"}},
            "params.yaml: train.mixed_precision must be 'auto', 'on', 'off', 'float16' or 'bfloat16', got 'yes'",
        ),
        (
            {"data": {"idx": {"class_names": ["a", "a"]}}},
            "params.yaml: data.idx.class_names must be unique, 'a' repeats",
        ),
        (
            {"data": {"idx": {"sha256": {"nope.gz": "0" * 64}}}},
            "params.yaml: data.idx.sha256 names 'nope.gz', which is not one of this format's files",
        ),
        (
            {"data": {"cifar10": {"sha256": {"data_batch_9.bin": "0" * 64}}}},
            "params.yaml: data.cifar10.sha256 names 'data_batch_9.bin', which is not one of this format's files",
        ),
        (
            {"data": {"idx": {"sha256": {"train-images-idx3-ubyte.gz": "xyz"}}}},
            "params.yaml: data.idx.sha256.train-images-idx3-ubyte.gz must match",
        ),
        (
            {"data": {"format": "parquet"}},
            "params.yaml: data.format must be 'idx', 'cifar10', 'image_folder', 'csv', 'text_folder' or "
            "'text_table', got 'parquet'",
        ),
        (
            {"data": {"image_folder": {"color_mode": "cmyk"}}},
            "params.yaml: data.image_folder.color_mode must be 'grayscale' or 'rgb', got 'cmyk'",
        ),
        (
            {"data": {"image_folder": {"image_size": [28, 0]}}},
            "params.yaml: data.image_folder.image_size[1] must be >= 1, got 0",
        ),
        ({"data": {"csv": {"feature_columns": []}}}, "params.yaml: data.csv.feature_columns must have at least 1 item"),
        (
            {"train": {"normalization": {"mode": "minmax"}}},
            "params.yaml: train.normalization.mode must be 'preset', 'dataset' or 'fixed', got 'minmax'",
        ),
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


def billion_laughs(levels: int = 9) -> str:
    """A params file whose layer argument nests `levels` anchors, each aliasing the one before 9 times:
    a few hundred bytes that expand to 9**levels strings."""
    anchors = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    anchors += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "data:\n  format: idx\ntrain:\n  model:\n    - Dense:\n        units: 8\n        name:\n" + "".join(
        f"          - {anchor}\n" for anchor in anchors
    )


def test_a_billion_laughs_file_is_refused_while_parsing(tmp_path):
    """Nested aliases would make validation, tracking and flattening walk ~490 million values (gigabytes:
    train ran past its limit); the loader counts the expanded values from the parsed nodes, in time
    linear in the file, and refuses them, in one line naming the file and the anchor."""
    path = tmp_path / "params.yaml"
    path.write_text(billion_laughs())
    with pytest.raises(PipelineError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: refused: its aliases expand it to 490,329,070 values (the anchor on line 15, 48,427,561 values, 10 "
        'times), more than 1,000,000 beyond its own (a "billion laughs" file)'
    )
    proc = run(["python", "-m", "pipeline.fetch", "--params", str(path), "--out", "raw"], tmp_path, check=False)
    assert (proc.returncode, proc.stderr) == (1, f"error: {info.value}\n")
    assert not (tmp_path / "raw").exists()


def test_anchors_within_bounds_still_load_and_a_recursive_one_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "train:\n  model:\n"
        "    - Conv2D: &conv {filters: 8, kernel_size: 3, activation: relu}\n"
        "    - Conv2D: {<<: *conv, filters: 16}\n"
        "    - Flatten: {}\n"
        + billion_laughs(levels=6).split("  model:\n", 1)[1]  # 9**6: half a million values, within bounds
    )
    model = load_params(path).train.model
    assert model[:3] == [
        {"Conv2D": {"filters": 8, "kernel_size": 3, "activation": "relu"}},
        {"Conv2D": {"filters": 16, "kernel_size": 3, "activation": "relu"}},
        {"Flatten": {}},
    ]
    path.write_text("data: &data\n  idx: {train_images: *data}\n")
    with pytest.raises(PipelineError, match=r"params\.yaml: refused: the anchor on line \d holds an alias to itself"):
        load_params(path)


def test_params_are_frozen_and_flatten_to_dotted_keys():
    params = parse_params(BASE)
    with pytest.raises(ValidationError, match="frozen_instance"):
        params.train.epochs = 3
    flat = flatten(params)
    assert flat["train.epochs"] is None and flat["train.seed"] == params.train.seed
    assert flat["train.normalization.mode"] == "preset"
    assert all(not isinstance(v, dict) for v in flat.values())


def test_every_dvc_params_key_exists_in_the_schema():
    """dvc.yaml must list keys that the schema knows, or a typo silently tracks nothing."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    flat = flatten(parse_params(committed_params()))
    for name, stage in stages.items():
        for key in stage.get("params", []):
            assert any(k == key or k.startswith(key + ".") for k in flat), f"{name}: {key}"


def resolved(train: dict):
    from pipeline.presets import filled_from_preset

    return filled_from_preset(parse_params({"train": train}).train)


def test_an_unknown_preset_is_one_line_naming_the_choices():
    with pytest.raises(PipelineError) as info:
        resolved({"model": "cnnx"})
    assert str(info.value) == (
        "params.yaml: train.model must be a preset, 'cnn', 'mlp', 'rnn', 'keras_mlp', 'mlp_128_64', 'lenet', "
        "'cnn4', 'cnn2', 'tabular_mlp', 'text_bag', 'text_cnn' or 'text_lstm', or a list of layers, got 'cnnx'"
    )


@pytest.mark.parametrize("preset", ["cnn", "keras_mlp", "mlp_128_64", "lenet", "cnn2", "text_lstm"])
def test_unset_train_keys_take_the_presets_values(preset):
    from pipeline.presets import PRESETS

    hyper = PRESETS[preset].hyper
    train = resolved({"model": preset, "epochs": None})
    assert (train.epochs, train.batch_size, train.optimizer, train.learning_rate, train.momentum, train.schedule) == (
        hyper.epochs,
        hyper.batch_size,
        hyper.optimizer,
        hyper.learning_rate,
        hyper.momentum,
        hyper.schedule,
    )
    assert (train.label_smoothing, train.early_stopping_patience) == (
        hyper.label_smoothing,
        hyper.early_stopping_patience,
    )
    assert (train.augment.horizontal_flip, train.augment.translate, train.augment.erase) == (
        hyper.horizontal_flip,
        hyper.translate,
        hyper.erase,
    )
    assert (train.text.vocabulary_size, train.text.sequence_length) == (hyper.vocabulary_size, hyper.sequence_length)


def test_set_train_keys_override_the_preset():
    train = resolved({"model": "mlp_128_64", "learning_rate": 0.05, "augment": {"translate": 0.1}})
    assert (train.optimizer, train.learning_rate, train.batch_size) == ("sgd", 0.05, 64)
    assert (train.augment.translate, train.augment.horizontal_flip) == (0.1, False)
    assert resolved({"model": [{"Flatten": {}}]}).epochs == 20  # a layer list: presets.CUSTOM's


def test_test_time_flip_follows_the_flips_training_learnt_unless_set():
    assert resolved({"model": "cnn"}).test_time_flip is True  # the preset flips
    assert resolved({"model": "cnn", "augment": {"horizontal_flip": False}}).test_time_flip is False  # digits
    assert resolved({"model": "cnn2"}).test_time_flip is False
    assert resolved({"model": "cnn", "test_time_flip": False}).test_time_flip is False
    assert resolved({"model": "cnn2", "test_time_flip": True}).test_time_flip is True


def test_committed_params_leave_the_hyperparameters_to_the_preset():
    """So `dvc exp run -S train.model=<preset>` alone trains the preset as its origin does: every key
    a preset brings (presets.Hyper's fields) is null in params.yaml."""
    from dataclasses import fields

    from pipeline.presets import AUGMENT, TEXT, Hyper

    raw = committed_params()["train"]
    for field in fields(Hyper):
        section = raw["augment"] if field.name in AUGMENT else raw["text"] if field.name in TEXT else raw
        assert section[field.name] is None, field.name


@pytest.mark.parametrize(
    "section, values, message",
    [
        ("train", {"batch_size": 10**21}, "params.yaml: train.batch_size must be <= 65536, got 1000000000000000000000"),
        ("train", {"seed": -1}, "params.yaml: train.seed must be >= 0, got -1"),
        ("prepare", {"seed": -1}, "params.yaml: prepare.seed must be >= 0, got -1"),
        ("prepare", {"seed": 2**32}, "params.yaml: prepare.seed must be <= 4294967295, got 4294967296"),
        (
            "train",
            {"normalization": {"mode": "fixed", "mean": float("nan")}},
            "params.yaml: train.normalization.mean must be a finite number, got nan",
        ),
        ("train", {"learning_rate": float("inf")}, "params.yaml: train.learning_rate must be a finite number, got inf"),
        (
            "evaluate",
            {"gate": {"min_accuracy": float("nan")}},
            "params.yaml: evaluate.gate.min_accuracy must be a finite number",
        ),
        ("export", {"calibration_size": 10**12}, "params.yaml: export.calibration_size must be <= 100000"),
        ("train", {"epochs": 10**9}, "params.yaml: train.epochs must be <= 100000"),
        ("tune", {"reduction_factor": 1}, "params.yaml: tune.reduction_factor must be >= 2, got 1"),
    ],
)
def test_params_outside_safe_ranges_name_the_key_before_any_work(section, values, message):
    with pytest.raises(PipelineError) as info:
        parse_params({section: values})
    assert str(info.value).startswith(message)
