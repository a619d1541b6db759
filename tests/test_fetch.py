"""Stage fetch: local copy and HTTP download, checksum verification, no half-written data/raw."""

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.hashing import content_sha256

from helpers.commands import committed_params, run
from helpers.data import FILES, with_idx, write_csv_dataset, write_idx_dataset, write_image_folder_dataset
from helpers.data import fetch_into as fetch
from helpers.servers import answering_http, endless_body, redirect_loop, static_http


def data_params(data: dict, **changes) -> dict:
    return {**data, **changes}


def idx_params(data: dict, **changes) -> dict:
    return with_idx(data, **changes)


def test_local_copy_verifies_every_file(tiny_data, tmp_path):
    result = fetch(data_params(tiny_data), tmp_path / "raw")
    assert result.summary == "4 idx files (4 checksums verified)"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(FILES.values())
    assert {p.name: content_sha256(p) for p in (tmp_path / "raw").iterdir()} == tiny_data["idx"]["sha256"]


def test_checksum_mismatch_names_file_and_hashes_and_leaves_nothing(tiny_data, tmp_path):
    name = FILES["test_labels"]
    wrong = {**tiny_data["idx"]["sha256"], name: "0" * 64}
    with pytest.raises(PipelineError) as info:
        fetch(idx_params(tiny_data, sha256=wrong), tmp_path / "raw")
    message = str(info.value)
    # Named as the user knows it (under data.source), with advice that `dvc exp run -S` can follow.
    assert message.startswith(f"{tiny_data['source']}/{name}: checksum mismatch: data.idx.sha256 expects {'0' * 64}")
    assert tiny_data["idx"]["sha256"][name] in message
    assert "`dvc exp run -S data.idx.sha256=null ...`" in message
    assert not (tmp_path / "raw").exists()
    assert list(tmp_path.glob(".raw*")) == []


def test_failure_keeps_previous_output(tiny_data, tmp_path):
    fetch(data_params(tiny_data), tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with pytest.raises(PipelineError):
        fetch(idx_params(tiny_data, sha256={FILES["train_images"]: "f" * 64}), tmp_path / "raw")
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_missing_source_and_missing_file(tiny_data, tmp_path):
    with pytest.raises(PipelineError, match=r"^data\.source: .*nowhere is not a directory or an archive$"):
        fetch(data_params(tiny_data, source=str(tmp_path / "nowhere")), tmp_path / "raw")
    (tmp_path / "source" / FILES["test_images"]).unlink()
    with pytest.raises(PipelineError, match=r"t10k-images-idx3-ubyte\.gz: file not found"):
        fetch(data_params(tiny_data), tmp_path / "raw")


@pytest.fixture
def http_source(tiny_data):
    with static_http(tiny_data["source"]) as url:
        yield f"{url}/"


def test_http_download(tiny_data, tmp_path, http_source):
    result = fetch(data_params(tiny_data, source=http_source), tmp_path / "raw")
    assert result.summary == "4 idx files (4 checksums verified)"
    assert {p.name: content_sha256(p) for p in (tmp_path / "raw").iterdir()} == tiny_data["idx"]["sha256"]


def test_http_missing_file_is_one_line(tiny_data, tmp_path, http_source):
    sha = {k: v for k, v in tiny_data["idx"]["sha256"].items() if k != FILES["test_labels"]}
    data = with_idx({**tiny_data, "source": http_source}, test_labels="absent.gz", sha256=sha)
    with pytest.raises(PipelineError, match=r"absent\.gz: download failed \("):
        fetch(data, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_server_that_streams_without_end_is_stopped_at_the_limit(tiny_data, tmp_path):
    """data.max_extracted_bytes bounds a download too: a server that never ends the body fills no disk."""
    limit, sent = 1 << 20, []
    with answering_http(endless_body(sent, give_up=64 << 20)) as url, pytest.raises(PipelineError) as info:
        fetch(data_params(tiny_data, source=f"{url}/", max_extracted_bytes=limit), tmp_path / "raw")
    message = str(info.value)
    assert message == (
        f"{url}/{FILES['train_images']}: download stopped at 1,048,576 bytes (data.max_extracted_bytes), "
        "and the server was still sending"
    )
    assert sent and sent[0] < 16 * limit  # the client hung up, the server did not run out
    assert not (tmp_path / "raw").exists() and list(tmp_path.glob(".raw*")) == []


def test_a_download_larger_than_announced_limit_is_refused_before_reading(tiny_data, tmp_path, http_source):
    with pytest.raises(PipelineError, match=r"^http://.*/train-images-idx3-ubyte\.gz: the server announces [\d,]+ "
                       r"bytes, more than data\.max_extracted_bytes \(100\)$"):  # fmt: skip
        fetch(data_params(tiny_data, source=http_source, max_extracted_bytes=100), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_redirect_loop_is_one_line_naming_the_url(tiny_data, tmp_path):
    with answering_http(redirect_loop) as url, pytest.raises(PipelineError) as info:
        fetch(data_params(tiny_data, source=f"{url}/a/"), tmp_path / "raw")
    assert str(info.value) == (
        f"{url}/a/{FILES['train_images']}: download failed (the server redirects in a loop, or more than 10 times)"
    )
    assert not (tmp_path / "raw").exists() and list(tmp_path.glob(".raw*")) == []


def test_a_symlink_loop_in_the_source_folder_is_one_line_naming_the_link(tmp_path):
    """Links are followed (their targets copied), so one that leads back to a folder above it would
    copy without end: refused, naming the link. A link to a folder elsewhere is still followed."""
    data = write_image_folder_dataset(tmp_path / "images", n_train=8, n_test=4)
    write_image_folder_dataset(tmp_path / "elsewhere", n_train=4, n_test=4)
    (tmp_path / "images/train/kind_b/more").symlink_to(tmp_path / "elsewhere/train/kind_b")
    params = data_params(data)
    fetch(params, tmp_path / "raw")
    copied = sorted(p.name for p in (tmp_path / "raw/train/kind_b/more").iterdir())
    assert copied == sorted(p.name for p in (tmp_path / "elsewhere/train/kind_b").iterdir()) != []

    loop = tmp_path / "images/train/kind_a/loop"
    loop.symlink_to("..")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "raw").rglob("*"))
    with pytest.raises(PipelineError) as info:
        fetch(params, tmp_path / "raw")
    assert str(info.value) == (
        f"{loop}: symbolic link loop (-> .., a folder that holds the link); fetch copies what links "
        "point to: remove the link or point it elsewhere"
    )
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "raw").rglob("*")) == before  # kept
    assert list(tmp_path.glob(".raw*")) == []

    loop.unlink()
    loop.symlink_to(tmp_path / "images")  # above the copied folder: the loop closes deeper down
    with pytest.raises(PipelineError, match=rf"^{loop}: symbolic link loop \(-> {tmp_path}/images, "):
        fetch(params, tmp_path / "raw")

    loop.unlink()
    loop.symlink_to("loop")  # a link to itself: the copy fails on it
    with pytest.raises(PipelineError, match=rf"^{loop}: cannot copy \(\[Errno 40\] Too many levels of symbolic links"):
        fetch(params, tmp_path / "raw")


def test_cli_does_not_import_tensorflow_and_reports_errors(tiny_data, tmp_path):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": tiny_data}))
    probe = (
        "import sys; from pipeline.fetch import main; main(['--params', sys.argv[1], '--out', sys.argv[2]]);"
        "assert 'tensorflow' not in sys.modules, 'fetch imported tensorflow'"
    )
    run(["python", "-c", probe, str(params), str(tmp_path / "raw")], tmp_path)

    params.write_text(yaml.safe_dump({"data": {**tiny_data, "source": str(tmp_path / "gone")}}))
    proc = run(
        ["python", "-m", "pipeline.fetch", "--params", str(params), "--out", str(tmp_path / "raw2")],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: data.source:")


def test_a_stage_run_in_process_leaves_its_callers_environment_as_it_was(tiny_data, tmp_path, monkeypatch):
    """A stage sets its own logging variables (TF_CPP_MIN_LOG_LEVEL, MLflow's); kept afterwards, they
    would make the next stage run from that process (a test, a notebook) think the user set them and
    leave its console unfiltered (CI: Beam's worker logs on prepare's stderr)."""
    import os

    import yaml

    from pipeline.fetch import main

    for key in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR",
                "PIPELINE_DEBUG"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": tiny_data}))
    before = dict(os.environ)
    main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "raw")])
    assert (tmp_path / "raw").is_dir()
    assert dict(os.environ) == before


# ----------------------------------------------------------------------------- hostile archives and sources
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
        fetch(data, tmp_path / "raw")
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
        fetch(data, tmp_path / "raw")
    data["max_extracted_bytes"] = 10**6
    fetch(data, tmp_path / "raw")
    assert (tmp_path / "raw/train.csv").is_file()


def test_a_corrupt_tar_gz_is_one_line(tmp_path):
    archive = tmp_path / "random.tar.gz"
    archive.write_bytes(np.random.default_rng(0).bytes(4096))
    data = {"format": "csv", "source": str(archive)}
    with pytest.raises(PipelineError) as info:
        fetch(data, tmp_path / "raw")
    assert str(info.value).startswith("random.tar.gz: cannot extract archive (")
    assert "\n" not in str(info.value)


def test_gzip_errors_in_fetch_name_the_source_file_not_a_temporary_copy(tmp_path, tiny_data):
    source = Path(tiny_data["source"])
    name = "t10k-labels-idx1-ubyte.gz"
    (source / name).write_bytes((source / name).read_bytes()[:-12])  # truncated download
    data = {**tiny_data, "idx": {**tiny_data["idx"], "sha256": None}}
    with pytest.raises(PipelineError, match=rf"^{source}/{name}: truncated gzip stream"):
        fetch(data, tmp_path / "raw")


def test_checksums_can_be_switched_off_with_null_which_dvc_exp_run_can_set(tmp_path, tiny_data):
    """`-S data.idx.sha256={}` merges into the existing dict (Hydra) and changes nothing; null replaces it."""
    other = write_idx_dataset(tmp_path / "other", seed=7)  # another IDX data set: Fashion-MNIST's checksums fail
    fashion = committed_params()["data"]["idx"]["sha256"]
    assert fashion
    with pytest.raises(PipelineError, match="checksum mismatch"):
        fetch({**other, "idx": {**other["idx"], "sha256": fashion}}, tmp_path / "a")
    fetch({**other, "idx": {**other["idx"], "sha256": None}}, tmp_path / "b")
    assert (tmp_path / "b/train-images-idx3-ubyte.gz").is_file()
