"""Data the tests write: tiny data sets in each format the pipeline reads, in that exact format,
learnable (each class has its own bright band or feature offset) and seeded; a subset of the real
Fashion-MNIST; and fetch + prepare of a `data` section, as the stages do it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.hashing import content_sha256

from helpers.commands import committed_params, missing_tool
from helpers.writers import write_batch, write_idx, write_table

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_images(labels: np.ndarray, shape=(28, 28), seed: int = 0) -> np.ndarray:
    """Learnable images: each class lights its own horizontal band, on noise."""
    rng = np.random.default_rng(seed)
    n_classes = int(labels.max()) + 1
    images = rng.integers(0, 60, size=(len(labels), *shape), dtype=np.uint8)
    band = max(1, shape[0] // max(n_classes, 1))
    for i, label in enumerate(labels):
        images[i, label * band : (label + 1) * band, :] = 200 + rng.integers(0, 55)
    return images


def write_idx_dataset(directory: Path, n_train=120, n_test=40, n_classes=4, shape=(28, 28), seed=0) -> dict:
    """Write a complete four-file IDX data set; returns the params `data` section for it."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % n_classes
    rng.shuffle(y_train)
    y_test = np.arange(n_test) % n_classes
    arrays = {
        "train_images": make_images(y_train, shape, seed),
        "train_labels": y_train.astype(np.uint8),
        "test_images": make_images(y_test, shape, seed + 1),
        "test_labels": y_test.astype(np.uint8),
    }
    for role, name in FILES.items():
        write_idx(directory / name, arrays[role])
    return {
        "format": "idx",
        "source": str(directory),
        "idx": {
            **FILES,
            "sha256": {name: content_sha256(directory / name) for name in FILES.values()},
            "class_names": [f"class_{i}" for i in range(n_classes)],
        },
    }


def with_idx(data: dict, **changes) -> dict:
    """The `data` section with keys of its `idx` part changed."""
    return {**data, "idx": {**data["idx"], **changes}}


def balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    return labels


def colour_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    grey = make_images(labels, (size, size), seed)
    rgb = np.stack([grey, grey[:, ::-1], grey.transpose(0, 2, 1)], axis=-1)
    return np.ascontiguousarray(rgb)


def write_cifar10_dataset(directory: Path, n_train=(60, 60), n_test=40, n_classes=4, seed=0) -> dict:
    """Two train batches and a test batch in the CIFAR-10 binary layout; returns the params `data` section."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_files = []
    for i, n in enumerate(n_train, start=1):
        labels = balanced_labels(n, n_classes, rng)
        write_batch(directory / f"data_batch_{i}.bin", colour_images(labels, 32, seed + i), labels)
        train_files.append(f"data_batch_{i}.bin")
    labels = balanced_labels(n_test, n_classes, rng)
    write_batch(directory / "test_batch.bin", colour_images(labels, 32, seed + 9), labels)
    return {
        "format": "cifar10",
        "source": str(directory),
        "cifar10": {
            "train": train_files,
            "test": ["test_batch.bin"],
            "class_names": [f"c{i}" for i in range(n_classes)],
        },
    }


def write_image_folder_dataset(
    directory: Path, n_train=120, n_test=40, n_classes=4, size=28, rgb=False, seed=0, image_size=None
) -> dict:
    """<directory>/{train,test}/<class>/<i>.png (and a JPEG per class); returns the `data` section."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    names = [f"kind_{chr(ord('a') + i)}" for i in range(n_classes)]
    for part, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, n_classes, rng)
        images = colour_images(labels, size, seed) if rgb else make_images(labels, (size, size), seed)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = directory / part / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            suffix = ".jpg" if i < n_classes else ".png"
            Image.fromarray(image).save(folder / f"{i:04d}{suffix}", quality=95)
    return {
        "format": "image_folder",
        "source": str(directory),
        "image_folder": {"image_size": list(image_size or (size, size)), "color_mode": "rgb" if rgb else "grayscale"},
    }


def write_csv_dataset(
    directory: Path, n_train=150, n_test=60, n_features=4, seed=0, label_column="species", n_classes=3
) -> dict:
    """Iris-like: species whose features differ in mean (three, or the first `n_classes` of them, or
    `n_classes` named s000, s001, ... beyond three); returns the `data` section."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    species = ["setosa", "versicolor", "virginica"] if n_classes <= 3 else [f"s{i:03d}" for i in range(n_classes)]
    names = [f"f{i}" for i in range(n_features)]
    for file, n in (("train.csv", n_train), ("test.csv", n_test)):
        labels = balanced_labels(n, n_classes, rng)
        features = rng.normal(size=(n, n_features)) + 3.0 * labels[:, None] * (1 + np.arange(n_features))
        write_table(directory / file, features, [species[y] for y in labels], names, label_column=label_column)
    return {"format": "csv", "source": str(directory), "csv": {"label_column": label_column}}


# Words of each tiny text class, in several scripts (what makes a class learnable), and words every
# class uses. The texts also carry what text readers get wrong: accents, Cyrillic, CJK, emoji,
# punctuation runs, tabs and newlines.
CLASS_WORDS = [
    ["rain", "cloud", "Storm", "wind", "Météo", "ливень"],
    ["goal", "match", "Team", "score", "Fußball", "футбол"],
    ["bread", "soup", "Cheese", "apple", "Käse", "хлеб"],
    ["code", "bug", "Compiler", "server", "Übersetzer", "сервер"],
]
COMMON_WORDS = ["the", "a", "and", "is", "of", "très", "это", "日本語", "🙂", "...", "—", "«ok»"]


def make_texts(labels: np.ndarray, seed: int = 0) -> list[str]:
    """Learnable texts: a few of each class's own words among common ones, in random order."""
    rng = np.random.default_rng(seed)
    texts = []
    for label in labels:
        words = list(rng.choice(CLASS_WORDS[label % len(CLASS_WORDS)], size=3)) + list(rng.choice(COMMON_WORDS, 5))
        rng.shuffle(words)
        separators = rng.choice([" ", "  ", "\t", "\n", ", ", "! "], size=len(words))
        texts.append("".join(w + s for w, s in zip(words, separators, strict=True)).strip())
    return texts


def write_text_folder_dataset(directory: Path, n_train=120, n_test=40, n_classes=4, seed=0) -> dict:
    """<directory>/{train,test}/<class>/<i>.txt; returns the `data` section."""
    rng = np.random.default_rng(seed)
    names = ["weather", "sport", "food", "computers"][:n_classes]
    for part, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, n_classes, rng)
        for i, (text, label) in enumerate(zip(make_texts(labels, seed + len(part)), labels, strict=True)):
            folder = directory / part / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return {"format": "text_folder", "source": str(directory), "text_folder": {"max_bytes": 128}}


def write_text_table_dataset(directory: Path, n_train=120, n_test=40, n_classes=4, seed=0, suffix=".csv") -> dict:
    """A table of texts and labels (.csv, .tsv or .jsonl); returns the `data` section."""
    import csv
    import json

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = ["weather", "sport", "food", "computers"][:n_classes]
    for part, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, n_classes, rng)
        texts = make_texts(labels, seed + len(part))
        path = directory / f"{part}{suffix}"
        if suffix == ".jsonl":
            pairs = zip(texts, labels, strict=True)
            rows = [json.dumps({"review": text, "topic": names[label]}) for text, label in pairs]
            path.write_text("".join(row + "\n" for row in rows))
            continue
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if suffix == ".tsv" else ",")
            writer.writerow(["review", "topic"])
            for text, label in zip(texts, labels, strict=True):
                writer.writerow([" ".join(text.split()) if suffix == ".tsv" else text, names[label]])
    section = {"train": f"train{suffix}", "test": f"test{suffix}", "text_column": "review",
               "label_column": "topic", "max_bytes": 128}  # fmt: skip
    return {"format": "text_table", "source": str(directory), "text_table": section}


def thousand_class_predictions():
    """Labels and probabilities of 3,000 test examples over 1,000 long-named classes, right 60 % of
    the time: what evaluate's report and figures must keep bounded."""
    n = 1000
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n), 3)
    probs = rng.dirichlet(np.ones(n) * 0.05, len(labels))
    probs[np.arange(len(labels)), labels] += 0.5 * (rng.random(len(labels)) < 0.6)
    names = [f"species {i:04d} with a long descriptive name" for i in range(n)]
    return labels, probs, names


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def subset_of_fashion_mnist(directory: Path, n_train: int, n_test: int) -> dict:
    """The first examples of Debian's real Fashion-MNIST, written as an IDX data set; returns the
    params `data` section. Missing data fails under CI (which installs it) and skips elsewhere."""
    from pipeline.formats.idx import read_idx

    if not FASHION_MNIST.is_dir():
        missing_tool(str(FASHION_MNIST), "apt-get install dataset-fashion-mnist")
    directory.mkdir(parents=True, exist_ok=True)
    for role, name in FILES.items():
        array = read_idx(FASHION_MNIST / name, ndims=(1, 3))
        write_idx(directory / name, array[: n_train if role.startswith("train") else n_test])
    classes = committed_params()["data"]["idx"]["class_names"]
    return {"format": "idx", "source": str(directory), "idx": {**FILES, "sha256": None, "class_names": classes}}


def fetch_into(data: dict, out: Path):
    """The fetch stage's core on the `data` section, into `out`, as its edge runs it; returns its
    StageResult."""
    from pipeline import fetch

    from helpers.commands import call_core

    return call_core(fetch.STAGE, {"data": data}, outputs={"out": out})


def fetch_and_prepare(data: dict, root: Path, **sections):
    """Fetch `data` into root/raw and prepare it into root/prepared, as the stages do; returns the
    data report and the prepared metadata."""
    from pipeline import fetch, prepare
    from pipeline.prepared import read_meta

    from helpers.commands import call_core

    params = {"data": data, "prepare": {"shard_size": 50, **sections.pop("prepare", {})}, **sections}
    call_core(fetch.STAGE, params, outputs={"out": root / "raw"})
    call_core(prepare.STAGE, params, {"raw": root / "raw"}, {"out": root / "prepared", "report": root / "data.json"})
    return json.loads((root / "data.json").read_text()), read_meta(root / "prepared")
