"""Stage prepare: validated, stratified, seeded splits in TFRecord shards that read back exactly."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from pipeline import prepare as prepare_stage
from pipeline.errors import PipelineError
from pipeline.formats.idx import read_idx
from pipeline.prepared import PreparedData, read_meta

from helpers.commands import REPO, call_core, run, stage_argv
from helpers.data import FILES, fetch_into, write_idx_dataset
from helpers.hostile import PYTHON
from helpers.writers import write_idx


@pytest.fixture
def raw(tiny_data, tmp_path):
    fetch_into(tiny_data, tmp_path / "raw")
    return tmp_path / "raw"


def prepare(raw, out, params: dict) -> dict:
    """The prepare stage's core on `params` (raw, validated whole), as its edge runs it: the
    prepared data into `out`, the data report beside it; returns the report."""
    report = out.with_name(f"{out.name}.json")
    call_core(prepare_stage.STAGE, params, {"raw": raw}, {"out": out, "report": report})
    return json.loads(report.read_text())


def run_prepare(tiny_data, raw, out, **prepare_params):
    return prepare(raw, out, {"data": tiny_data, "prepare": {"shard_size": 50, **prepare_params}})


def split_arrays(directory, split):
    return PreparedData.open(directory).arrays(split)


def test_splits_are_stratified_complete_and_read_back(tiny_data, raw, tmp_path):
    report = run_prepare(tiny_data, raw, tmp_path / "prepared", val_fraction=0.25)
    assert report["counts"] == {"train": 90, "val": 30, "test": 40}
    assert sorted(report["per_class"]["val"].values()) == [7, 7, 8, 8]
    assert set(report["per_class"]["train"].values()) <= {22, 23}

    meta = read_meta(tmp_path / "prepared")
    assert meta.input_shape == (28, 28, 1) and meta.num_classes == 4
    assert meta.shards["train"] == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]

    x_raw, y_raw = read_idx(raw / FILES["train_images"], (3,)), read_idx(raw / FILES["train_labels"], (1,))
    x_tr, y_tr = split_arrays(tmp_path / "prepared", "train")
    x_va, y_va = split_arrays(tmp_path / "prepared", "val")
    # Every training example lands in exactly one of train/val, unchanged.
    together = np.concatenate([x_tr, x_va]).reshape(120, -1)
    assert sorted(map(bytes, together)) == sorted(map(bytes, x_raw.reshape(120, -1)))
    assert np.bincount(np.concatenate([y_tr, y_va])).tolist() == np.bincount(y_raw).tolist()
    x_te, y_te = split_arrays(tmp_path / "prepared", "test")
    assert x_te.shape == (40, 28, 28, 1) and len(y_te) == 40


def test_split_is_seeded(tiny_data, raw, tmp_path):
    run_prepare(tiny_data, raw, tmp_path / "a", seed=1)
    run_prepare(tiny_data, raw, tmp_path / "b", seed=1)
    run_prepare(tiny_data, raw, tmp_path / "c", seed=2)
    val = {name: split_arrays(tmp_path / name, "val")[0] for name in "abc"}
    np.testing.assert_array_equal(val["a"], val["b"])
    assert not np.array_equal(val["a"], val["c"])


def test_prepare_measures_the_train_statistics_and_keeps_inputs_raw(tiny_data, raw, tmp_path):
    report = run_prepare(tiny_data, raw, tmp_path / "p")
    meta = read_meta(tmp_path / "p")
    x, _ = split_arrays(tmp_path / "p", "train")
    assert x.dtype == np.uint8
    stats = meta.statistics
    assert stats.scale == pytest.approx(1 / 255)
    assert stats.mean == pytest.approx(x.mean() / 255) and stats.std == pytest.approx(x.std() / 255)
    assert report["inputs"]["train_mean"] == pytest.approx(x.mean() / 255)


def test_duplicates_between_train_and_test_are_counted(tiny_data, raw, tmp_path):
    files = FILES
    x, xt = read_idx(raw / files["train_images"], (3,)), read_idx(raw / files["test_images"], (3,)).copy()
    xt[[0, 5, 9]] = x[[3, 4, 5]]
    write_idx(raw / files["test_images"], xt)
    report = run_prepare(tiny_data, raw, tmp_path / "p")
    assert report["duplicates"]["test_in_train"] == 3


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda raw, f: (raw / f["train_labels"]).write_bytes((raw / f["train_labels"]).read_bytes()[:20]),
            "train-labels-idx1-ubyte.gz: truncated gzip stream",
        ),
        (
            lambda raw, f: write_idx(raw / f["test_labels"], np.array([0, 1, 9] * 13 + [0], np.uint8)),
            "t10k-labels-idx1-ubyte.gz: label 9 at index 2 is outside the 4 classes",
        ),
        (
            lambda raw, f: write_idx(raw / f["test_labels"], np.zeros(39, np.uint8)),
            "t10k-labels-idx1-ubyte.gz: holds 39 labels but",
        ),
        (
            lambda raw, f: write_idx(raw / f["test_images"], np.zeros((40, 27, 28), np.uint8)),
            r"t10k-images-idx3-ubyte.gz: input shape \(27, 28, 1\) differs",
        ),
    ],
)
def test_bad_input_fails_and_keeps_previous_output(tiny_data, raw, tmp_path, corrupt, message):
    out = tmp_path / "prepared"
    run_prepare(tiny_data, raw, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    corrupt(raw, FILES)
    with pytest.raises(PipelineError, match=message):
        run_prepare(tiny_data, raw, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")] == []


def test_bad_input_leaves_no_output_when_there_was_none(tiny_data, raw, tmp_path):
    files = FILES
    (raw / files["train_images"]).write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(PipelineError, match="train-images-idx3-ubyte.gz: corrupt gzip data"):
        run_prepare(tiny_data, raw, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_class_too_small_to_stratify(tiny_data, raw, tmp_path):
    files = FILES
    labels = np.zeros(120, np.uint8)
    labels[0] = 3
    labels[1:60] = 1
    write_idx(raw / files["train_labels"], labels)
    # Classes 0, 1 and 3 occur (2 does not, which is no error); class 3 once is too few.
    msg = "prepare.val_fraction: class 3 has 1 training example; a stratified split needs at least 2 per class"
    with pytest.raises(PipelineError, match=f"^{msg}$"):
        run_prepare(tiny_data, raw, tmp_path / "prepared")


def test_prepare_does_not_depend_on_the_model(tiny_data, raw, tmp_path):
    """The preset's normalisation is the model's business (train.normalization): prepared data and
    their statistics are the same whichever model trains on them."""
    from pipeline.hashing import tree_sha256

    for name, model in (("a", "keras_mlp"), ("b", "lenet"), ("c", [{"Flatten": {}}])):
        prepare(raw, tmp_path / name, {"data": tiny_data, "train": {"model": model}})
    assert len({tree_sha256(tmp_path / name) for name in "abc"}) == 1


def test_shards_are_tensorflow_s_own_bytes_and_the_same_in_every_process(tmp_path):
    """prepare writes tf.train.Example records without TensorFlow: they must be the bytes TensorFlow
    writes (deterministic serialisation: map entries in key order), TFRecordDataset must read them,
    and every process must write the same shard (DVC hashes the bytes)."""
    import hashlib
    import subprocess
    import sys

    import tensorflow as tf

    from pipeline.records import SplitWriter, serialize_example

    from helpers.commands import tool_env

    pixels = np.arange(24, dtype=np.uint8).reshape(3, 2, 4, 1)
    for x, label in zip(pixels, [0, 1, 2**40], strict=True):
        feature = {
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.tobytes()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        ours = serialize_example(x.tobytes(), label)
        theirs = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
        assert theirs == ours
    script = (
        "import sys, hashlib, numpy as np; from pathlib import Path; from pipeline.records import SplitWriter,"
        " serialize_example; w = SplitWriter(Path(sys.argv[1]), 2);"
        " [w.write(serialize_example(x.tobytes(), i)) for i, x in enumerate(np.arange(24, dtype=np.uint8)"
        ".reshape(3, 2, 4, 1))]; names = w.close();"
        " print(names, hashlib.sha256(b''.join((Path(sys.argv[1]) / n).read_bytes() for n in names)).hexdigest())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"p{i}")], stdout=subprocess.PIPE, text=True, env=tool_env()
        )
        for i in range(3)
    ]
    outputs = {proc.communicate()[0].strip() for proc in procs}
    writer = SplitWriter(tmp_path / "here", 2)
    for i, x in enumerate(pixels):
        writer.write(serialize_example(x.tobytes(), i))
    names = writer.close()
    assert names == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    here = hashlib.sha256(b"".join((tmp_path / "here" / n).read_bytes() for n in names)).hexdigest()
    assert outputs == {f"{names} {here}"}, outputs
    read = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset([str(tmp_path / "here" / n)
                                                                                     for n in names])]  # fmt: skip
    assert [e.features.feature["label"].int64_list.value[0] for e in read] == [0, 1, 2]
    assert read[2].features.feature["image"].bytes_list.value[0] == pixels[2].tobytes()


def test_one_class_is_one_line(tiny_data, raw, tmp_path):
    write_idx(raw / FILES["train_labels"], np.full(120, 2, np.uint8))
    with pytest.raises(PipelineError, match=r"^data\.idx: the data holds one class \('class_2', 120 examples\); "
                       "a classifier needs at least 2$"):  # fmt: skip
        run_prepare(tiny_data, raw, tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_skewed_classes_are_counted_and_warned_about(tiny_data, raw, tmp_path):
    labels = np.array([0] * 100 + [1] * 15 + [2] * 3 + [3] * 2, np.uint8)
    write_idx(raw / FILES["train_labels"], labels)
    report = run_prepare(tiny_data, raw, tmp_path / "prepared")
    meta = read_meta(tmp_path / "prepared")
    # The stratified split keeps the proportions: 90 / 13-14 / 2-3 / 1-2 of 108 in train, the rest in val.
    train, val = meta.class_counts["train"], meta.class_counts["val"]
    assert sum(train) == 108 and train[0] == 90 and 13 <= train[1] <= 14 and 2 <= train[2] <= 3 and 1 <= train[3] <= 2
    assert val == [10, 2, 0, 0]  # what the seeded split draws (scikit-learn's allocation of a 12-example val)
    assert [t + v for t, v in zip(train, val, strict=True)] == [100, 15, 3, 2]
    assert report["warnings"] == [
        f"skewed classes: 'class_3' has {meta.class_counts['train'][3]} training examples, 'class_0' 90 "
        f"(1:{90 / meta.class_counts['train'][3]:.0f}); train.class_weight: balanced weighs each class by its rarity"
    ]
    assert meta.positive_class is None  # four classes: no positive class


def test_two_classes_have_a_positive_class(tmp_path):
    from helpers.data import fetch_and_prepare, write_csv_dataset

    data = write_csv_dataset(tmp_path / "table", n_classes=2)
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.class_names == ["setosa", "versicolor"] and meta.positive_class == "versicolor"
    assert report["positive_class"] == "versicolor" and report["warnings"] == []
    data["csv"]["positive_class"] = "setosa"
    _, meta = fetch_and_prepare(data, tmp_path / "again")
    assert meta.positive_class == "setosa"
    for positive, message in (
        ("virginica", "data.csv.positive_class 'virginica' is not one of the classes ['setosa', 'versicolor']"),
    ):
        data["csv"]["positive_class"] = positive
        with pytest.raises(PipelineError, match=f"^{re.escape(message)}$"):
            fetch_and_prepare(data, tmp_path / positive)
    data = write_csv_dataset(tmp_path / "three")
    data["csv"]["positive_class"] = "setosa"
    with pytest.raises(PipelineError, match=r"^data\.csv\.positive_class applies to two-class data; the data has 3"):
        fetch_and_prepare(data, tmp_path / "three-prepared")


# ----------------------------------------------------------------------------- streaming, on every core
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_corrupt_image_found_late_by_a_worker_is_one_line_or_a_listed_skip(tmp_path, policy):
    """Two decoding processes, ~400 images: the undecodable one comes after shards are written."""
    from helpers.data import write_image_folder_dataset

    data = write_image_folder_dataset(tmp_path / "images", n_train=400, n_test=8)
    bad = tmp_path / "images/train/kind_d/0399.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    data["image_folder"]["unreadable"] = policy
    params = {"data": data, "prepare": {"shard_size": 50, "workers": 2}}
    fetch_into(data, tmp_path / "raw")
    if policy == "fail":
        with pytest.raises(PipelineError) as info:
            prepare(tmp_path / "raw", tmp_path / "prepared", params)
        message = str(info.value)
        assert message.startswith(f"{tmp_path}/raw/train/kind_d/0399.png: unreadable image (") and "\n" not in message
        assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "raw"]  # no output, no temporaries
    else:
        report = prepare(tmp_path / "raw", tmp_path / "prepared", params)
        assert report["skipped"] == {"count": 1, "files": ["train/kind_d/0399.png"]}
        assert report["counts"]["train"] + report["counts"]["val"] == 399


def test_the_output_is_the_same_whatever_the_number_of_processes(tmp_path):
    from pipeline.hashing import tree_sha256

    from helpers.data import write_image_folder_dataset

    data = write_image_folder_dataset(tmp_path / "images", n_train=300, n_test=20, rgb=True, size=20)
    data["image_folder"]["image_size"] = [16, 16]  # resized: the work the processes share
    fetch_into(data, tmp_path / "raw")
    for workers in (1, 2, 3):
        params = {"data": data, "prepare": {"shard_size": 64, "workers": workers}}
        prepare(tmp_path / "raw", tmp_path / f"p{workers}", params)
    assert len({tree_sha256(tmp_path / f"p{n}") for n in (1, 2, 3)}) == 1


# A Beam worker that cannot start, for real: one whose interpreter exits at once (a sitecustomize that
# only Beam's workers run: they alone have the runner's control address in their environment).
WORKER_EXITS = """import os
if "CONTROL_API_SERVICE_DESCRIPTOR" in os.environ:
    os._exit(3)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["no loopback", "workers exit at start"])
def test_beam_workers_that_cannot_start_stop_prepare_in_one_line(tmp_path, fault):
    """Beam's in-process runner in multi-process mode waited forever for workers that had exited (with
    loopback down they give up after two minutes; others at once). Loopback is now checked first, and a
    worker's exit stops the pipeline: one line, exit status 1, nothing written."""
    import subprocess
    import sys

    import yaml

    from helpers.commands import tool_env, without_loopback
    from helpers.data import write_image_folder_dataset

    data = write_image_folder_dataset(tmp_path / "images", n_train=40, n_test=8)
    fetch_into(data, tmp_path / "raw")
    beam_options = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    params = {"data": data, "prepare": {"shard_size": 20, "runner": "beam", "beam_options": beam_options}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "pipeline.prepare", "--params", "params.yaml", "--raw", "raw",
               "--out", "prepared", "--report", "data.json"]  # fmt: skip
    env = tool_env()
    if fault == "no loopback":
        command = without_loopback(command)
        expected = (
            "error: prepare.beam_options: --direct_running_mode=multi_processing serves its workers on localhost, "
            "which does not answer here (Network is unreachable); bring loopback up (ip link set lo up) or leave "
            "the mode out\n"
        )
    else:
        (tmp_path / "site").mkdir()
        (tmp_path / "site/sitecustomize.py").write_text(WORKER_EXITS)
        env["PYTHONPATH"] = str(tmp_path / "site")
        expected = (
            "error: prepare.runner: beam: a worker process exited before the pipeline finished (Worker subprocess "
            "exited with return code 3; its own output, if any, is above)\n"
        )
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (1, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "params.yaml", "raw"] + (
        ["site"] if fault != "no loopback" else []
    )


@pytest.mark.slow
def test_beam_on_two_worker_processes_offline_gives_the_local_runner_s_splits(tmp_path):
    """`prepare.runner: beam` with Beam's in-process runner in multi-process mode, two workers, the
    network cut: the same examples in each split, class names, counts, and statistics to 1e-6."""
    import subprocess
    import sys

    import yaml

    from helpers.commands import offline, tool_env
    from helpers.data import write_image_folder_dataset

    data = write_image_folder_dataset(tmp_path / "images", n_train=300, n_test=4, rgb=True)
    data["image_folder"]["test"] = None  # the test split is drawn too
    fetch_into(data, tmp_path / "raw")
    beam_options = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    for runner in ("local", "beam"):
        params = {"data": data, "prepare": {"shard_size": 40, "runner": runner, "beam_options": beam_options}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        command = [sys.executable, "-m", "pipeline.prepare", "--params", "params.yaml", "--raw", "raw",
                   "--out", runner, "--report", f"{runner}.json"]  # fmt: skip
        proc = subprocess.run(offline(command), cwd=tmp_path, env=tool_env(), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == "", proc.stderr[-3000:]  # Beam's own logging stays off a quiet console
    local, beam = (read_meta(tmp_path / runner) for runner in ("local", "beam"))
    assert beam.class_names == local.class_names and beam.counts == local.counts
    assert beam.class_counts == local.class_counts and beam.input_shape == local.input_shape
    np.testing.assert_allclose(beam.statistics.mean, local.statistics.mean, rtol=1e-6)
    np.testing.assert_allclose(beam.statistics.std, local.statistics.std, rtol=1e-6)
    for split in ("train", "val", "test"):
        examples = [
            sorted((x.tobytes(), int(y)) for x, y in zip(*split_arrays(tmp_path / r, split), strict=True))  # fmt: skip
            for r in ("local", "beam")
        ]
        assert examples[0] == examples[1] and len(examples[0]) == local.counts[split], split
    local_report, beam_report = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("local", "beam"))
    for key, value in beam_report.pop("inputs").items():  # merged in another order: equal to rounding
        assert value == pytest.approx(local_report["inputs"][key], rel=1e-9)
    del local_report["inputs"]
    assert beam_report == local_report  # counts, per class, the leakage check, skips, warnings


# ----------------------------------------------------------------------------- a killed prepare
def test_a_killed_prepare_leaves_nothing_after_its_rerun(tmp_path, tiny_data):
    """The real thing: SIGKILL `python -m pipeline.prepare` while it writes shards, then rerun it."""
    import signal
    import time

    import yaml

    # 20,000 examples in shards of 10: ~2,000 files, seconds of writing to be killed in.
    data = write_idx_dataset(tmp_path / "big", n_train=20000, n_test=200)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data, "prepare": {"shard_size": 10}}))
    run(stage_argv("fetch", PYTHON), tmp_path, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        stage_argv("prepare", PYTHON),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "data").glob(".prepared.tmp-*/train/*")):
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert list((tmp_path / "data").glob(".prepared.tmp-*")), "prepare finished before it could be killed"
    run(stage_argv("prepare", PYTHON), tmp_path, PYTHONPATH=str(REPO))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prepared", "raw"]
