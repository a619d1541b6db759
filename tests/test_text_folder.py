"""Data format `text_folder`: a folder per class of .txt files, read strictly; every file that is not a
text is one line naming it, or skipped and listed; hidden and system files are not examples."""

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.prepared import PreparedData
from pipeline.text import decode_text

from helpers.data import fetch_and_prepare, write_text_folder_dataset


def folder(tmp_path, **files) -> dict:
    """A two-class folder data set of the given files (relative path → bytes), no test part."""
    root = tmp_path / "source"
    for i in range(6):
        for name in ("ham", "spam"):
            path = root / "train" / name / f"{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{name} text number {i}")
    for relative, data in files.items():
        path = root / "train" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {"format": "text_folder", "source": str(root), "text_folder": {"test": None, "max_bytes": 32}}


def prepare(tmp_path, data, **section):
    data["text_folder"].update(section)
    return fetch_and_prepare(data, tmp_path, prepare={"val_fraction": 0.2, "test_fraction": 0.25})


def test_texts_are_stored_as_the_model_reads_them(tmp_path):
    data = write_text_folder_dataset(tmp_path / "source", n_train=40, n_test=12)
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.kind == "text" and meta.input_shape == (128,) and meta.dtype == "uint8"
    assert meta.class_names == ["computers", "food", "sport", "weather"]
    assert report["counts"]["test"] == 12
    x, _ = PreparedData.open(tmp_path / "prepared").arrays("test")
    first = sorted((tmp_path / "source/test").rglob("*.txt"))[0]  # the first class's first file
    assert bytes(x[0]).rstrip(b"\0") == first.read_bytes()[:128]


def test_a_byte_order_mark_is_dropped_and_a_long_text_cut_at_max_bytes(tmp_path):
    data = folder(tmp_path, **{"ham/bom.txt": b"\xef\xbb\xbfham with a BOM", "spam/long.txt": "é".encode() * 100})
    prepare(tmp_path, data)
    rows = np.concatenate([PreparedData.open(tmp_path / "prepared").arrays(s)[0] for s in ("train", "val", "test")])
    texts = {decode_text(row) for row in rows}
    assert "ham with a BOM" in texts
    assert "é" * 16 in texts  # 32 bytes: 16 two-byte characters


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("ham/latin1.txt", "café".encode("latin-1"), "not UTF-8 (byte 0xe9 at offset 3)"),
        ("ham/empty.txt", b"", "empty text"),
        ("ham/blank.txt", b" \n\t ", "empty text"),
        ("spam/huge.txt", b"x" * (1 << 20 + 1), "bytes, more than a text may have"),
    ],
)
def test_a_file_that_is_not_a_text_is_one_line_naming_it_or_is_skipped(tmp_path, name, data, reason):
    source = folder(tmp_path, **{name: data})
    with pytest.raises(PipelineError, match="unreadable: skip") as caught:
        prepare(tmp_path, source)
    assert name in str(caught.value) and reason in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "prepared").exists()  # nothing half-written
    report, meta = prepare(tmp_path, source, unreadable="skip")
    assert report["skipped"] == {"count": 1, "files": [f"train/{name}"]}
    assert sum(meta.counts.values()) == 12


def test_hidden_and_system_files_are_not_examples(tmp_path):
    junk = {
        ".DS_Store": b"\0\0\0\1Bud1",
        "ham/._0.txt": b"\0\5\26\7",
        "spam/Thumbs.db": b"\xd0\xcf",
        "ham/.hidden/x.txt": b"x",
    }
    report, meta = prepare(tmp_path, folder(tmp_path, **junk))
    assert sum(meta.counts.values()) == 12 and report["skipped"]["count"] == 0


def test_the_leakage_check_compares_texts_after_standardisation(tmp_path):
    data = folder(tmp_path)
    for name, text in (("ham/t0.txt", "HAM, text   number 3!!"), ("spam/t0.txt", "an unseen spam text")):
        path = tmp_path / "source/test" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    report, _ = prepare(tmp_path, data, test="test")
    assert report["duplicates"]["test_in_train"] == 1  # ham/3.txt, once standardised


def test_prepare_cli_reports_a_bad_text_in_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    from helpers.commands import stage_argv, tool_env

    data = folder(tmp_path, **{"ham/bad.txt": b"\xff\xfe broken"})
    params = {"data": data, "prepare": {"val_fraction": 0.25, "test_fraction": 0.25}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run([sys.executable, *stage_argv("fetch")[1:]], cwd=tmp_path, env=tool_env(), check=True,
                   capture_output=True)  # fmt: skip
    proc = subprocess.run([sys.executable, *stage_argv("prepare")[1:]], cwd=tmp_path, env=tool_env(PIPELINE_DEBUG=""),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: data/raw/train/ham/bad.txt: not UTF-8 (byte 0xff at offset 0); "
        "set data.text_folder.unreadable: skip to leave such files out"
    ]
