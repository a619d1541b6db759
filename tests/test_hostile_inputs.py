"""Bring your own data, as a hostile user would: files that declare or expand to huge sizes, corrupt
archives, out-of-range params, duplicated columns, killed stages. Each gets one clear line naming
the culprit (or, where stated, a clean skip), with memory and disk bounded. Bombs are small files
made here; the ones that would exhaust memory run in a child process under an address-space limit,
so a regression fails instead of taking the machine down."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.fetch import fetch
from pipeline.formats.idx import read_idx
from pipeline.params import parse_params
from pipeline.prepare import prepare

from helpers.commands import REPO, run, stage_argv
from helpers.data import fetch_and_prepare, write_csv_dataset, write_idx_dataset, write_image_folder_dataset

PYTHON = os.path.abspath(sys.executable)


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares width × height grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def bounded_child(code: str, cwd: Path, address_space: int = 1 << 30) -> subprocess.CompletedProcess:
    """Run `code` in a child Python whose address space is capped (1 GiB by default)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))\n"
    return subprocess.run(
        [PYTHON, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"},
        timeout=300,
    )


# ----------------------------------------------------------------------------- decompression-bomb images
@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_an_image_declaring_900_million_pixels_is_one_line_or_a_listed_skip(tmp_path, policy):
    data = write_image_folder_dataset(tmp_path / "images")
    bomb = tmp_path / "images/train/kind_a/bomb.png"
    bomb.write_bytes(png_declaring(30_000, 30_000))
    assert bomb.stat().st_size < 1024
    data["image_folder"]["unreadable"] = policy
    if policy == "fail":
        with pytest.raises(PipelineError) as info:
            fetch_and_prepare(data, tmp_path)
        assert "raw/train/kind_a/bomb.png: unreadable image (decompression bomb refused" in str(info.value)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "prepared").exists()
    else:
        report, _ = fetch_and_prepare(data, tmp_path)
        assert report["skipped"] == {"count": 1, "files": ["train/kind_a/bomb.png"]}


# ----------------------------------------------------------------------------- IDX headers and gzip bombs
def idx_header(*dims: int) -> bytes:
    return struct.pack(">HBB", 0, 0x08, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_idx_dimensions_whose_product_overflows_64_bits_are_refused(tmp_path):
    path = tmp_path / "images.idx"
    path.write_bytes(idx_header(2**22, 2**21, 2**21) + b"\x00" * 64)  # 2^64 bytes: wraps to 0 in int64
    with pytest.raises(
        PipelineError,
        match=r"images\.idx: truncated: header declares 4194304x2097152x2097152 = "
        r"18446744073709551616 data bytes",
    ):
        read_idx(path, ndims=(3,))


def test_an_idx_gzip_bomb_is_refused_within_bounded_memory(tmp_path):
    """1.5 GiB of zeros after a header declaring 120 images (~2 MB of gzip): the reader stops after
    the 94,080 declared bytes, well inside a 1 GiB address space (the whole content would not fit)."""
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_header(120, 28, 28))
        zeros = b"\x00" * (1 << 24)
        for _ in range(96):
            f.write(zeros)
    assert path.stat().st_size < 10 * 2**20
    proc = bounded_child(
        f"""
        from pipeline.errors import PipelineError
        from pipeline.formats.idx import read_idx
        try:
            read_idx({str(path)!r}, ndims=(3,))
        except PipelineError as exc:
            print(exc)
    """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"{path}: trailing bytes: header declares 120x28x28 = 94080 data bytes, file holds more than {94080 + 2**20}"
    )


# ----------------------------------------------------------------------------- archives
def zeros_zip(path: Path, size: int) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("data/train.csv", "w") as member:
        for _ in range(size >> 24):
            member.write(b"\x00" * (1 << 24))


def zeros_tar_gz(path: Path, size: int) -> None:
    class Zeros(io.RawIOBase):
        def __init__(self):
            self.left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left)
            buffer[:n] = b"\x00" * n
            self.left -= n
            return n

    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("data/train.csv")
        info.size = size
        tf.addfile(info, io.BufferedReader(Zeros()))


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_bomb_is_refused_before_anything_is_written(tmp_path, kind):
    archive = tmp_path / f"bomb.{kind}"
    (zeros_zip if kind == "zip" else zeros_tar_gz)(archive, 256 * 2**20)
    assert archive.stat().st_size < 2 * 2**20
    data = {"format": "csv", "source": str(archive), "csv": {"test": None}}
    with pytest.raises(PipelineError) as info:
        fetch(parse_params({"data": data}).data, tmp_path / "raw")
    message = str(info.value)
    assert message.startswith(f"bomb.{kind}: expands to more than ")
    assert "data.max_compression_ratio 100×" in message and "refusing to extract" in message
    assert not (tmp_path / "raw").exists()
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) < 3 * 2**20  # nothing expanded


def test_the_extracted_byte_limit_is_settable(tmp_path):
    data = write_csv_dataset(tmp_path / "table" / "iris")
    archive = tmp_path / "iris.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "table" / "iris", arcname="iris")
    data = {**data, "source": str(archive), "max_extracted_bytes": 1000}
    with pytest.raises(
        PipelineError, match=r"iris\.tar\.gz: expands to more than 1,000 bytes .*data\.max_extracted_bytes 1,000"
    ):
        fetch(parse_params({"data": data}).data, tmp_path / "raw")
    data["max_extracted_bytes"] = 10**6
    fetch(parse_params({"data": data}).data, tmp_path / "raw")
    assert (tmp_path / "raw/train.csv").is_file()


def test_a_corrupt_tar_gz_is_one_line(tmp_path):
    archive = tmp_path / "random.tar.gz"
    archive.write_bytes(np.random.default_rng(0).bytes(4096))
    data = {"format": "csv", "source": str(archive)}
    with pytest.raises(PipelineError) as info:
        fetch(parse_params({"data": data}).data, tmp_path / "raw")
    assert str(info.value).startswith("random.tar.gz: cannot extract archive (")
    assert "\n" not in str(info.value)


def test_gzip_errors_in_fetch_name_the_source_file_not_a_temporary_copy(tmp_path, tiny_data):
    source = Path(tiny_data["source"])
    name = "t10k-labels-idx1-ubyte.gz"
    (source / name).write_bytes((source / name).read_bytes()[:-12])  # truncated download
    data = {**tiny_data, "idx": {**tiny_data["idx"], "sha256": None}}
    with pytest.raises(PipelineError, match=rf"^{source}/{name}: truncated gzip stream"):
        fetch(parse_params({"data": data}).data, tmp_path / "raw")


# ----------------------------------------------------------------------------- params
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
    ],
)
def test_params_outside_safe_ranges_name_the_key_before_any_work(section, values, message):
    with pytest.raises(PipelineError) as info:
        parse_params({section: values})
    assert str(info.value).startswith(message)


def test_checksums_can_be_switched_off_with_null_which_dvc_exp_run_can_set(tmp_path, tiny_data):
    """`-S data.idx.sha256={}` merges into the existing dict (Hydra) and changes nothing; null replaces it."""
    other = write_idx_dataset(tmp_path / "other", seed=7)  # another IDX data set: Fashion-MNIST's checksums fail
    from pipeline.params import load_params

    fashion = load_params(REPO / "params.yaml").data.idx.sha256
    assert fashion
    with pytest.raises(PipelineError, match="checksum mismatch"):
        fetch(parse_params({"data": {**other, "idx": {**other["idx"], "sha256": fashion}}}).data, tmp_path / "a")
    fetch(parse_params({"data": {**other, "idx": {**other["idx"], "sha256": None}}}).data, tmp_path / "b")
    assert (tmp_path / "b/train-images-idx3-ubyte.gz").is_file()


# ----------------------------------------------------------------------------- CSV
def test_a_duplicated_csv_header_name_is_refused(tmp_path):
    source = tmp_path / "table"
    source.mkdir()
    (source / "train.csv").write_text(
        "f0,f0,f1,label\n" + "".join(f"{i},{i + 1},{i + 2},{'ab'[i % 2]}\n" for i in range(20))
    )
    data = {"format": "csv", "source": str(source), "csv": {"test": None}}
    with pytest.raises(
        PipelineError, match=r"raw/train\.csv: header names column 'f0' more than once \(columns \[1, 2\]\)"
    ):
        fetch_and_prepare(data, tmp_path)


# ----------------------------------------------------------------------------- stale temporaries
def test_temporaries_of_a_killed_stage_are_swept_by_the_next_run(tmp_path, tiny_data):
    """A SIGKILL mid-write leaves `.prepared.tmp-<pid>-*`; the next write of the same output removes it
    (its process is gone) and leaves a live process's temporary alone."""
    dead = subprocess.run(
        [PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".prepared.tmp-{dead}-x1y2"
    (stale / "train").mkdir(parents=True)
    (stale / "train/part-00000-of-00002.tfrecord").write_bytes(b"half")
    (tmp_path / f".prepared.old-{dead}").mkdir()
    live = tmp_path / f".prepared.tmp-{os.getpid()}-live"
    live.mkdir()
    params = parse_params({"data": tiny_data, "prepare": {"shard_size": 50}})
    fetch(params.data, tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", params)
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared"))
    assert leftovers == [live.name]


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


# ----------------------------------------------------------------------------- the predictor's .npy inputs
def test_predictor_npy_declaring_a_trillion_values_or_holding_nan_is_one_line(tmp_path):
    from pipeline.predict import load_array

    huge = tmp_path / "huge.npy"
    with open(huge, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    assert huge.stat().st_size < 256
    (item,) = load_array(huge, (28, 28, 1))
    assert (
        item.error
        == f"{huge}: not a NumPy .npy array (header declares (1000000000000,) float64, more than the file holds)"
    )

    np.save(tmp_path / "nan.npy", np.full((2, 28, 28), np.nan))
    (item,) = load_array(tmp_path / "nan.npy", (28, 28, 1))
    assert item.error == f"{tmp_path / 'nan.npy'}: array holds NaN or infinite values"
    np.save(tmp_path / "big.npy", np.full((1, 28, 28), 300.0))
    (item,) = load_array(tmp_path / "big.npy", (28, 28, 1))
    assert item.error == f"{tmp_path / 'big.npy'}: pixel values must lie in 0..255, got 300.0..300.0"


def test_predictor_refuses_a_decompression_bomb_png_in_one_line(tmp_path):
    from pipeline.predict import collect_inputs

    (tmp_path / "bomb.png").write_bytes(png_declaring(30_000, 30_000))
    (item,) = collect_inputs([str(tmp_path / "bomb.png")], (28, 28, 1))
    assert item.error.startswith(f"{tmp_path / 'bomb.png'}: decompression bomb refused")
    assert "\n" not in item.error


# ----------------------------------------------------------------------------- train's edges
@pytest.mark.slow
def test_a_bad_layer_list_fails_before_any_mlflow_run(project):
    import yaml
    from mlflow.tracking import MlflowClient

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["model"] = [{"Dense": {"unit": 3}}]
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run(stage_argv("train", PYTHON), project, check=False, PYTHONPATH=str(REPO))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: train.model[0]: Dense has no argument 'unit' (did you mean 'units'?)"
    )
    client = MlflowClient(params["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("t")
    assert experiment is None or client.search_runs([experiment.experiment_id]) == []
    assert not (project / "models/.train-state").exists()


@pytest.mark.slow
def test_an_unreachable_tracking_server_leaves_no_training_state(project):
    proc = run(
        stage_argv("train", PYTHON),
        project,
        check=False,
        PYTHONPATH=str(REPO),
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
    )
    assert not (project / "models/.train-state").exists()


def test_predictor_names_its_own_source_of_feature_names(tmp_path):
    from pipeline.predict import load_table

    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    (item,) = load_table(tmp_path / "rows.csv", ["f0", "f1"])
    assert (
        item.error
        == f"{tmp_path / 'rows.csv'}: no feature column 'f0' (the model's feature_names); columns are ['a', 'b']"
    )


def test_json_report_of_a_params_error_has_no_traceback(tmp_path):
    """The stage's own command line: one `error:` line, exit 1."""
    (tmp_path / "params.yaml").write_text(json.dumps({"train": {"batch_size": 10**21}}))
    proc = run(stage_argv("train", PYTHON), tmp_path, check=False, PYTHONPATH=str(REPO))
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: params.yaml: train.batch_size must be <= 65536, got 1000000000000000000000")
