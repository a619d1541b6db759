"""Each data format's params section (`data.<format>`): which files, how to read them.

The readers are pipeline/formats/<format>.py; these classes are only the schema, so no stage depends
on a reader it does not run (pipeline/params.py puts them under `data`)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from pipeline.schema import ClassNames, FormatSection


class IdxSection(FormatSection):
    """`data.idx`: images (n, h, w) or (n, h, w, c) and labels (n,), gzip'd or plain."""

    url_prefix_ok: ClassVar[bool] = True  # data.source may be an http(s) prefix the file names are appended to
    train_images: str = "train-images-idx3-ubyte.gz"
    train_labels: str = "train-labels-idx1-ubyte.gz"
    test_images: str = "t10k-images-idx3-ubyte.gz"
    test_labels: str = "t10k-labels-idx1-ubyte.gz"

    def files(self) -> list[str]:
        return [self.train_images, self.train_labels, self.test_images, self.test_labels]


class Cifar10Section(FormatSection):
    """`data.cifar10`: batch files of records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32×32)."""

    url_prefix_ok: ClassVar[bool] = True
    train: Annotated[list[str], Field(min_length=1)] = [f"data_batch_{i}.bin" for i in range(1, 6)]
    test: Annotated[list[str], Field(min_length=1)] = ["test_batch.bin"]
    class_names: ClassNames | None = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                      "ship", "truck"]  # fmt: skip

    def files(self) -> list[str]:
        return [*self.train, *self.test]


Side = Annotated[int, Field(ge=1, le=4096)]


class ImageFolderSection(FormatSection):
    """`data.image_folder`: one subdirectory per class of image files, under `train` (and `test`)."""

    url_prefix_ok: ClassVar[bool] = False  # a folder tree has no file list to append to a URL
    train: str = "train"
    test: str | None = "test"  # null: prepare.test_fraction of `train` becomes the test split
    image_size: tuple[Side, Side] = (28, 28)
    color_mode: Literal["grayscale", "rgb"] = "grayscale"
    unreadable: Literal["fail", "skip"] = "fail"  # an image that cannot be decoded: stop, or skip and report

    def files(self) -> list[str]:
        return [f"{self.train}/"] + ([f"{self.test}/"] if self.test else [])

    def known_files(self) -> list[str] | None:
        return None  # any image under the folders may be named


class CsvSection(FormatSection):
    """`data.csv`: a table with a header row, numeric feature columns and a label column."""

    url_prefix_ok: ClassVar[bool] = True
    train: str = "train.csv"
    test: str | None = "test.csv"  # null: prepare.test_fraction of `train` becomes the test split
    label_column: str = "label"
    feature_columns: Annotated[list[str], Field(min_length=1)] | None = None  # null: every column but the label

    def files(self) -> list[str]:
        return [self.train] + ([self.test] if self.test else [])


# A text's UTF-8 bytes the model reads (longer texts are cut, shorter ones zero-padded): its input width.
MaxBytes = Annotated[int, Field(ge=16, le=65_536)]
Unreadable = Literal["fail", "skip"]


class TextFolderSection(FormatSection):
    """`data.text_folder`: one subdirectory per class of UTF-8 .txt files (one text each), under
    `train` (and `test`): the layout of the IMDB reviews and 20 Newsgroups archives."""

    url_prefix_ok: ClassVar[bool] = False  # a folder tree has no file list to append to a URL
    train: str = "train"
    test: str | None = "test"  # null: prepare.test_fraction of `train` becomes the test split
    max_bytes: MaxBytes = 1024
    unreadable: Unreadable = "fail"  # a file that is not a text (bad UTF-8, empty, too long): stop, or skip and report

    def files(self) -> list[str]:
        return [f"{self.train}/"] + ([f"{self.test}/"] if self.test else [])

    def known_files(self) -> list[str] | None:
        return None  # any text under the folders may be named


class TextTableSection(FormatSection):
    """`data.text_table`: texts and labels in a table: CSV (.csv), TSV (.tsv) or JSON lines (.jsonl),
    by each file's suffix."""

    url_prefix_ok: ClassVar[bool] = True
    train: str = "train.csv"
    test: str | None = "test.csv"  # null: prepare.test_fraction of `train` becomes the test split
    text_column: str = "text"
    label_column: str = "label"
    max_bytes: MaxBytes = 1024
    unreadable: Unreadable = "fail"  # a row without a text or label, or a text too long: stop, or skip and report

    def files(self) -> list[str]:
        return [self.train] + ([self.test] if self.test else [])


FORMAT_SECTIONS = {"idx": IdxSection, "cifar10": Cifar10Section, "image_folder": ImageFolderSection,
                   "csv": CsvSection, "text_folder": TextFolderSection, "text_table": TextTableSection}  # fmt: skip
