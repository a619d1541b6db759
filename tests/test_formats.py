"""The data formats beside IDX: CIFAR-10 binary, image folders, CSV tables, and archives as a source.
Each is written here in its exact format, fetched and prepared by the real stages, read back, and
broken once to show its one-line error."""

import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import yaml

from pipeline.errors import PipelineError
from pipeline.formats.cifar10 import RECORD, read_batch
from pipeline.prepared import PreparedData

from helpers.commands import run
from helpers.data import fetch_and_prepare, write_cifar10_dataset, write_csv_dataset, write_image_folder_dataset
from helpers.data import fetch_into as fetch
from helpers.hostile import png_declaring
from helpers.servers import static_http


def split(tmp_path, meta, name):
    data = PreparedData.open(tmp_path / "prepared")
    assert data.meta == meta
    return data.arrays(name)


# ----------------------------------------------------------------------------- CIFAR-10 binary
def test_cifar10_binary_reads_back_exactly(tmp_path):
    data = write_cifar10_dataset(tmp_path / "cifar")
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.input_shape == (32, 32, 3) and meta.dtype == "uint8" and meta.class_names == ["c0", "c1", "c2", "c3"]
    assert report["counts"] == {"train": 108, "val": 12, "test": 40}
    expected, labels = read_batch(tmp_path / "cifar/test_batch.bin", 4)
    x, y = split(tmp_path, meta, "test")
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, labels)
    # Channel planes land in the last axis: red is plane 0 of the record.
    record = (tmp_path / "cifar/test_batch.bin").read_bytes()[:RECORD]
    assert x[0, 0, :, 0].tolist() == list(record[1:33]) and x[0, 0, :, 1].tolist() == list(record[1025:1057])


def test_cifar10_truncated_batch_is_one_clear_line(tmp_path):
    data = write_cifar10_dataset(tmp_path / "cifar")
    batch = tmp_path / "cifar/data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(
        PipelineError,
        match=r"data_batch_2\.bin: 184280 bytes is not a whole number of "
        r"3073-byte CIFAR-10 records \(59 records and 2973 bytes over",
    ):
        fetch_and_prepare(data, tmp_path)
    assert not (tmp_path / "prepared").exists()


def test_cifar10_label_outside_the_classes(tmp_path):
    data = write_cifar10_dataset(tmp_path / "cifar")
    batch = tmp_path / "cifar/test_batch.bin"
    content = bytearray(batch.read_bytes())
    content[RECORD * 3] = 7  # record 3's label byte; only 4 classes
    batch.write_bytes(bytes(content))
    with pytest.raises(PipelineError, match=r"test_batch\.bin: record 3 has label 7, outside the 4 classes"):
        fetch_and_prepare(data, tmp_path)


def test_archive_source_is_extracted_and_its_top_folder_dropped(tmp_path):
    write_cifar10_dataset(tmp_path / "cifar-10-batches-bin")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    data = {**write_cifar10_dataset(tmp_path / "unused"), "source": str(archive)}
    _, meta = fetch_and_prepare(data, tmp_path)
    assert meta.counts["test"] == 40
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "test_batch.bin",
    ]


def test_archive_members_cannot_escape_the_data_directory(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    (tmp_path / "payload").write_bytes(b"x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escaped")
    data = {**write_cifar10_dataset(tmp_path / "unused"), "source": str(archive)}
    with pytest.raises(PipelineError, match=r"^evil\.tar\.gz: cannot extract archive"):
        fetch(data, tmp_path / "work/raw")
    assert not (tmp_path / "work/escaped").exists() and not (tmp_path / "work/raw").exists()


def test_archive_by_url_as_the_official_cifar10_download_is(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    write_cifar10_dataset(tmp_path / "cifar-10-batches-bin")
    with tarfile.open(www / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    with static_http(www) as url:
        data = {**write_cifar10_dataset(tmp_path / "unused"), "source": f"{url}/cifar-10-binary.tar.gz"}
        _, meta = fetch_and_prepare(data, tmp_path)
    assert meta.input_shape == (32, 32, 3) and meta.counts["test"] == 40


def test_zipped_image_folder_and_a_zip_member_escaping(tmp_path):
    data = write_image_folder_dataset(tmp_path / "images")
    archive = shutil.make_archive(str(tmp_path / "images"), "zip", root_dir=tmp_path / "images")
    _, meta = fetch_and_prepare({**data, "source": archive}, tmp_path)
    assert meta.counts["test"] == 40 and meta.class_names == ["kind_a", "kind_b", "kind_c", "kind_d"]

    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("../../escaped.txt", "x")
    with pytest.raises(PipelineError, match=r"^evil\.zip: member '\.\./\.\./escaped\.txt' would extract outside"):
        fetch({**data, "source": str(tmp_path / "evil.zip")}, tmp_path / "raw2")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "raw2").exists()


# ----------------------------------------------------------------------------- image folders
def test_image_folder_grey_resized_with_classes_from_folders(tmp_path):
    data = write_image_folder_dataset(tmp_path / "images", size=36, image_size=(28, 28))
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.input_shape == (28, 28, 1) and meta.class_names == ["kind_a", "kind_b", "kind_c", "kind_d"]
    assert report["counts"]["test"] == 40 and report["skipped"]["count"] == 0
    x, y = split(tmp_path, meta, "test")
    assert x.dtype == np.uint8 and np.bincount(y).tolist() == [10, 10, 10, 10]


def test_image_folder_rgb_without_test_folder_splits_a_test_fraction(tmp_path):
    data = write_image_folder_dataset(tmp_path / "images", size=32, rgb=True)
    data["image_folder"]["test"] = None
    report, meta = fetch_and_prepare(data, tmp_path, prepare={"test_fraction": 0.25, "shard_size": 50})
    assert meta.input_shape == (32, 32, 3)
    assert report["counts"] == {"train": 81, "val": 9, "test": 30}
    # Colour images: statistics per channel (the last axis), the examples stay raw pixels.
    x, _ = split(tmp_path, meta, "train")
    assert x.dtype == np.uint8
    np.testing.assert_allclose(meta.statistics.mean, x.mean(axis=(0, 1, 2)) / 255, rtol=1e-6)
    np.testing.assert_allclose(meta.statistics.std, x.std(axis=(0, 1, 2)) / 255, rtol=1e-6)
    assert sorted(report["per_class"]["test"].values()) == [7, 7, 8, 8]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_unreadable_image_fails_or_is_skipped_and_reported(tmp_path, policy):
    data = write_image_folder_dataset(tmp_path / "images")
    bad = tmp_path / "images/train/kind_b/0999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    data["image_folder"]["unreadable"] = policy
    if policy == "fail":
        with pytest.raises(
            PipelineError,
            match=r"raw/train/kind_b/0999\.png: unreadable image .*"
            r"set data\.image_folder\.unreadable: skip",
        ):
            fetch_and_prepare(data, tmp_path)
        assert not (tmp_path / "prepared").exists()
    else:
        report, meta = fetch_and_prepare(data, tmp_path)
        assert report["skipped"] == {"count": 1, "files": ["train/kind_b/0999.png"]}
        assert meta.counts["train"] + meta.counts["val"] == 120


def test_test_folder_with_other_classes_is_an_error(tmp_path):
    data = write_image_folder_dataset(tmp_path / "images")
    (tmp_path / "images/test/kind_d").rename(tmp_path / "images/test/kind_z")
    with pytest.raises(PipelineError, match=r"raw/test: class folders .* do not match"):
        fetch_and_prepare(data, tmp_path)


def test_file_names_cannot_leave_the_source(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    data["csv"]["test"] = "../outside.csv"
    with pytest.raises(PipelineError, match=r"^data\.csv: '\.\./outside\.csv' must be a relative path inside"):
        fetch(data, tmp_path / "raw")


def test_image_folder_from_a_url_prefix_is_refused(tmp_path):
    data = {**write_image_folder_dataset(tmp_path / "images"), "source": "http://127.0.0.1:9/images"}
    with pytest.raises(PipelineError, match=r"^data\.source: .*image_folder data come from a directory or an archive"):
        fetch(data, tmp_path / "raw")


# Files that a copy from a Mac or Windows brings along, and a hidden folder: none is an example.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(16) + b"\x00\x00"  # the header of a ._x.png
SYSTEM_FILES = {".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(64), "Thumbs.db": b"\xd0\xcf\x11\xe0" + bytes(60),
                "desktop.ini": b"[.ShellClassInfo]\r\nIconResource=x\r\n"}  # fmt: skip


def test_hidden_and_system_files_in_an_image_folder_are_not_examples(tmp_path):
    from PIL import Image

    data = write_image_folder_dataset(tmp_path / "images")
    train, test = tmp_path / "images/train", tmp_path / "images/test"
    for folder in (train, train / "kind_a", test / "kind_b"):
        for name, content in SYSTEM_FILES.items():
            (folder / name).write_bytes(content)
    (train / "kind_a/._0004.png").write_bytes(APPLE_DOUBLE)
    (test / "kind_c/._0002.jpg").write_bytes(APPLE_DOUBLE)
    (train / "kind_b/.thumbnails").mkdir()  # a hidden folder's images, even decodable ones
    Image.new("L", (28, 28)).save(train / "kind_b/.thumbnails/0001.png")
    Image.new("L", (28, 28)).save(train / "kind_c/.hidden.png")
    report, meta = fetch_and_prepare(data, tmp_path)
    assert report["skipped"]["count"] == 0
    assert meta.counts["train"] + meta.counts["val"] == 120 and meta.counts["test"] == 40


def png_16_bit(path, pixels: np.ndarray) -> None:
    """A 16-bit PNG of (h, w, 1|3|4) uint16 pixels, written by hand: Pillow writes 16-bit grey only."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))  # fmt: skip


RAMP = np.arange(12 * 16, dtype=np.int64).reshape(12, 16) * 341  # 0..65131: every high byte 0..254


def image_case(kind: str, path_stem):
    """Write one image of Pillow mode (or file kind) `kind` beside `path_stem`; returns its path and the
    (12, 16, 3) uint8 RGB pixels prepare must give it."""
    from PIL import Image

    high = (RAMP >> 8).astype(np.uint8)
    grey = np.repeat(high[..., None], 3, axis=2)
    colour = np.stack([high, high[::-1], 255 - high], axis=2)
    if kind == "I;16":
        path = path_stem.with_suffix(".png")
        Image.fromarray(RAMP.astype(np.uint16)).save(path)
        return path, grey
    if kind == "RGB;16":
        path = path_stem.with_suffix(".png")
        png_16_bit(path, np.stack([RAMP, RAMP[::-1], 65535 - RAMP], axis=2))
        return path, colour
    if kind == "RGBA;16":
        path = path_stem.with_suffix(".png")
        png_16_bit(path, np.stack([RAMP, RAMP[::-1], 65535 - RAMP, RAMP], axis=2))
        return path, colour
    if kind == "I":
        path = path_stem.with_suffix(".tif")
        Image.fromarray(RAMP.astype(np.int32)).save(path)
        return path, grey
    if kind == "F":
        path = path_stem.with_suffix(".tiff")
        Image.fromarray(high.astype(np.float32) / 255).save(path)
        return path, grey
    if kind == "LA":
        path = path_stem.with_suffix(".png")
        Image.fromarray(np.stack([high, 255 - high], axis=2)).save(path)  # mode LA
        return path, grey
    if kind in ("RGBA", "P"):
        path = path_stem.with_suffix(".webp" if kind == "RGBA" else ".gif")
        image = Image.fromarray(np.concatenate([colour, high[..., None]], axis=2))
        if kind == "RGBA":
            image.save(path, lossless=True, exact=True)
            return path, colour
        palette = Image.fromarray(colour).quantize(256)  # a GIF: a palette, and a second frame after it
        palette.save(path, save_all=True, append_images=[Image.new("P", (16, 12), 7)], transparency=0)
        return path, np.asarray(palette.convert("RGB"))
    if kind == "CMYK":
        path = path_stem.with_suffix(".tif")
        Image.fromarray(colour).convert("CMYK").save(path)
        return path, colour
    if kind == "BMP":
        path = path_stem.with_suffix(".bmp")
        Image.fromarray(colour).save(path)
        return path, colour
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["I;16", "RGB;16", "RGBA;16", "I", "F", "LA", "P", "RGBA", "CMYK", "BMP"])
def test_every_pillow_mode_becomes_8_bits_scaled_as_prepare_and_the_predictor_read_it(tmp_path, kind):
    """16-bit images keep their high byte (Pillow's I;16 -> L conversion would clip them to 255), I is
    read as 16-bit, F as 0..1; palette, alpha and CMYK images become RGB; an animated GIF its first
    frame. prepare and the predictor share the decoder: the same pixels in grey and colour."""
    from PIL import Image

    from pipeline.formats.image_folder import load_image
    from pipeline.predict import load_image as predictor_image

    path, expected = image_case(kind, tmp_path / "image")
    np.testing.assert_array_equal(load_image(path, (12, 16), "rgb"), expected)
    grey = np.asarray(Image.fromarray(expected).convert("L"))[..., None]
    np.testing.assert_array_equal(load_image(path, (12, 16), "grayscale"), grey)
    np.testing.assert_array_equal(predictor_image(path, (12, 16, 1)), grey)


def test_the_exif_orientation_is_applied_before_resizing(tmp_path):
    """A phone stores a portrait photo landscape, with EXIF orientation 6 (turn 90 degrees clockwise)."""
    from PIL import Image

    from pipeline.formats.image_folder import load_image

    stored = (RAMP >> 8).astype(np.uint8)  # 12 high, 16 wide, as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "portrait.png", exif=exif)
    shown = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))  # 16 high, 12 wide
    np.testing.assert_array_equal(load_image(tmp_path / "portrait.png", (16, 12), "grayscale")[..., 0], shown)


def test_an_image_folder_of_16_bit_scans_and_every_extension_read_prepares_scaled(tmp_path):
    """Scanners, microscopes: 16-bit grey PNGs, prepared as their 8-bit values (not 255); and the
    README's other extensions (GIF, WebP, BMP, TIFF, any case) are examples too."""
    from PIL import Image

    levels = {"dark": 0x1234, "light": 0xC0DE}
    for name, level in levels.items():
        folder = tmp_path / "scans/train" / name
        folder.mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8), level + i, np.uint16)).save(folder / f"{i:02d}.png")
        eight = Image.fromarray(np.full((8, 8), level >> 8, np.uint8))
        for suffix in (".gif", ".webp", ".bmp", ".tif", ".TIFF"):
            eight.save(folder / f"more{suffix}", **({"lossless": True} if suffix == ".webp" else {}))
    data = {"format": "image_folder", "source": str(tmp_path / "scans"),
            "image_folder": {"image_size": [8, 8], "test": None}}  # fmt: skip
    report, meta = fetch_and_prepare(data, tmp_path, prepare={"test_fraction": 0.25})
    assert sum(meta.counts.values()) == 34 and report["skipped"]["count"] == 0
    assert meta.class_names == ["dark", "light"]
    for part in ("train", "val", "test"):
        x, y = split(tmp_path, meta, part)
        for label, name in enumerate(meta.class_names):
            assert np.unique(x[y == label]).tolist() == [levels[name] >> 8], (part, name)


# ----------------------------------------------------------------------------- CSV tables
def test_csv_table_with_per_feature_standardisation(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    report, meta = fetch_and_prepare(data, tmp_path)
    assert meta.input_shape == (4,) and meta.dtype == "float32" and meta.kind == "table"
    assert meta.class_names == ["setosa", "versicolor", "virginica"]
    assert meta.feature_names == ["f0", "f1", "f2", "f3"]
    x, _ = split(tmp_path, meta, "train")
    np.testing.assert_allclose(meta.statistics.mean, x.mean(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(meta.statistics.std, x.std(axis=0, dtype=np.float64), rtol=1e-6)
    assert meta.statistics.scale == 1.0
    assert report["counts"] == {"train": 135, "val": 15, "test": 60}


def test_csv_class_names_in_params_fix_the_order(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    data["csv"]["class_names"] = ["virginica", "setosa", "versicolor"]
    _, meta = fetch_and_prepare(data, tmp_path)
    assert meta.class_names == ["virginica", "setosa", "versicolor"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda rows: rows[4].__setitem__(2, "abc"), r"train\.csv: row 5, column 'f2': 'abc' is not a number"),
        (lambda rows: rows[2].__setitem__(0, ""), r"train\.csv: row 3, column 'f0': missing value"),
        (lambda rows: rows[6].__setitem__(4, ""), r"train\.csv: row 7, column 'species': missing label"),
        (lambda rows: rows[3].pop(), r"train\.csv: row 4 has 4 cells, the header has 5"),
        (
            lambda rows: rows[0].__setitem__(4, "kind"),
            r"train\.csv: no label column 'species' \(data\.csv\.label_column\)",
        ),
        (lambda rows: rows[8].__setitem__(1, "inf"), r"train\.csv: row 9, column 'f1': 'inf' is not a finite number"),
    ],
)
def test_malformed_csv_names_row_and_column(tmp_path, edit, message):
    data = write_csv_dataset(tmp_path / "table")
    path = tmp_path / "table/train.csv"
    rows = [line.split(",") for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    with pytest.raises(PipelineError, match=message):
        fetch_and_prepare(data, tmp_path)
    assert not (tmp_path / "prepared").exists()


def test_csv_label_unknown_to_class_names(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    data["csv"]["class_names"] = ["setosa", "versicolor"]
    with pytest.raises(PipelineError, match=r"train\.csv: row \d+, column 'species': label 'virginica' is not one of"):
        fetch_and_prepare(data, tmp_path)


def test_prepare_cli_reports_a_bad_csv_in_one_line(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    (tmp_path / "table/test.csv").write_text("f0,f1,f2,f3,species\n1,2,x,4,setosa\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data}))
    run(["python", "-m", "pipeline.fetch", "--params", "params.yaml", "--out", "raw"], tmp_path)
    proc = run(
        [
            "python",
            "-m",
            "pipeline.prepare",
            "--params",
            "params.yaml",
            "--raw",
            "raw",
            "--out",
            "prepared",
            "--report",
            "data.json",
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: raw/test.csv: row 2, column 'f2': 'x' is not a number"
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "data.json").exists()


@pytest.mark.timeout(60)  # quadratic, it took minutes (the header searched once per column)
def test_a_wide_csv_prepares_in_time_linear_in_its_size(tmp_path):
    """50,000 feature columns (gene expression, pixels as columns): each column's position is found
    once, so prepare's time grows with the cells, not with the square of the columns."""
    import time

    columns, rows = 50_000, 12
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1000, size=(rows, columns))
    (tmp_path / "wide").mkdir()
    with open(tmp_path / "wide/train.csv", "w") as f:
        f.write(",".join([*(f"g{i}" for i in range(columns)), "label"]) + "\n")
        for i, row in enumerate(values):
            f.write(",".join(map(str, row)) + f",{'ab'[i % 2]}\n")
    data = {"format": "csv", "source": str(tmp_path / "wide"), "csv": {"test": None}}
    start = time.perf_counter()
    report, meta = fetch_and_prepare(data, tmp_path, prepare={"test_fraction": 0.35, "val_fraction": 0.15})
    seconds = time.perf_counter() - start
    assert meta.input_shape == (columns,) and meta.feature_names[-1] == f"g{columns - 1}"
    x = np.concatenate([split(tmp_path, meta, part)[0] for part in ("train", "val", "test")])
    assert sorted(map(tuple, x.astype(np.int64))) == sorted(map(tuple, values))  # every cell, in its column
    assert seconds < 30, f"{seconds:.1f} s"


def test_checksums_apply_to_any_format(tmp_path):
    data = write_csv_dataset(tmp_path / "table")
    data["csv"]["sha256"] = {"train.csv": "0" * 64}
    with pytest.raises(PipelineError, match=r"/table/train\.csv: checksum mismatch: data\.csv\.sha256 expects 0{64}"):
        fetch(data, tmp_path / "raw")
    images = write_image_folder_dataset(tmp_path / "images")
    images["image_folder"]["sha256"] = {"train/kind_a/nope.png": "0" * 64}
    with pytest.raises(PipelineError, match=r"data\.image_folder\.sha256: names 'train/kind_a/nope\.png', which"):
        fetch(images, tmp_path / "raw")


# ----------------------------------------------------------------------------- hostile inputs
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
