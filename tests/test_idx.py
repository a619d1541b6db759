"""IDX parsing: a valid round trip, and every corruption rejected with a one-line message naming the file."""

import gzip
import struct

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.formats.idx import read_idx, scan_part
from pipeline.hashing import content_sha256

from helpers.hostile import bounded_child
from helpers.writers import write_idx


def expect_error(pattern, fn, *args):
    with pytest.raises(PipelineError, match=pattern) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("name", ["images.gz", "images.idx"])
def test_round_trip(tmp_path, name):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.uint8)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / "labels.gz", labels)
    y, shape = scan_part(tmp_path / name, tmp_path / "labels.gz", n_classes=3)
    assert shape == (5, 3, 1) and y.dtype == np.int64
    np.testing.assert_array_equal(read_idx(tmp_path / name, (3,)), images)
    np.testing.assert_array_equal(y, labels)


def test_checksum_is_of_content_not_compression(tmp_path):
    data = np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)
    write_idx(tmp_path / "a.gz", data)
    payload = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "b.gz").write_bytes(gzip.compress(payload, compresslevel=1))
    write_idx(tmp_path / "c.idx", data)
    assert (tmp_path / "a.gz").read_bytes() != (tmp_path / "b.gz").read_bytes()
    assert content_sha256(tmp_path / "a.gz") == content_sha256(tmp_path / "b.gz") == content_sha256(tmp_path / "c.idx")


def raw_idx(magic: int, dims: tuple, data: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data


def test_bad_magic(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw_idx(0x00000801, (2,), b"\0\0")))
    message = expect_error("bad magic number 0x00000801", read_idx, path, (3, 4))
    assert str(path) in message


def test_wrong_element_type(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw_idx(0x00000D03, (1, 2, 2), b"\0" * 16)))
    expect_error("bad magic number 0x00000d03", read_idx, path, (3, 4))


def test_truncated_data(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw_idx(0x00000803, (3, 4, 4), b"\0" * 40)))
    expect_error(r"truncated: header declares 3x4x4 = 48 data bytes, file holds 40", read_idx, path, (3,))


def test_trailing_bytes(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(raw_idx(0x00000801, (3,), b"\0" * 5)))
    expect_error("trailing bytes: header declares 3 = 3 data bytes, file holds 5", read_idx, path, (1,))


def test_truncated_header(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(struct.pack(">I", 0x00000803) + b"\0\0\0\1"))
    expect_error(r"truncated IDX header \(8 of 16 bytes\)", read_idx, path, (3,))
    path.write_bytes(gzip.compress(b"\0\0"))
    expect_error("too short for an IDX header", read_idx, path, (3,))


def test_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((50, 28, 28), np.uint8) + np.arange(28, dtype=np.uint8))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    expect_error("truncated gzip stream", read_idx, path, (3,))


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.gz"
    rng = np.random.default_rng(1)
    write_idx(path, rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8))
    blob = bytearray(path.read_bytes())
    for i in range(30, len(blob) - 30, 97):
        blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))
    expect_error("corrupt gzip data", read_idx, path, (3,))


def test_not_gzip_despite_name(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"this is not gzip at all, just text" * 4)
    expect_error("corrupt gzip data", read_idx, path, (3,))


def test_missing_file(tmp_path):
    expect_error("nope.gz: file not found", read_idx, tmp_path / "nope.gz", (3,))


def test_counts_disagree(tmp_path):
    write_idx(tmp_path / "i.gz", np.zeros((5, 4, 4), np.uint8))
    write_idx(tmp_path / "l.gz", np.zeros(4, np.uint8))
    expect_error(
        r"l\.gz: holds 4 labels but .*i\.gz holds 5 images",
        scan_part,
        tmp_path / "i.gz",
        tmp_path / "l.gz",
        10,
    )


def test_label_outside_classes(tmp_path):
    write_idx(tmp_path / "i.gz", np.zeros((3, 4, 4), np.uint8))
    write_idx(tmp_path / "l.gz", np.array([0, 1, 7], np.uint8))
    expect_error(
        r"l\.gz: label 7 at index 2 is outside the 3 classes",
        scan_part,
        tmp_path / "i.gz",
        tmp_path / "l.gz",
        3,
    )


def test_labels_file_given_as_images(tmp_path):
    write_idx(tmp_path / "l.gz", np.zeros(4, np.uint8))
    expect_error(
        "bad magic number 0x00000801, expected 0x00000803 or 0x00000804",
        scan_part,
        tmp_path / "l.gz",
        tmp_path / "l.gz",
        3,
    )


# ----------------------------------------------------------------------------- hostile headers and gzip bombs
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
