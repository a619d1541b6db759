"""Tiny data sets in each format the pipeline reads, written here in that exact format, learnable
(each class has its own bright band or feature offset) and seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.formats.cifar10 import write_batch
from pipeline.formats.csv import write_table

from conftest import make_images


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


def write_csv_dataset(directory: Path, n_train=150, n_test=60, n_features=4, seed=0, label_column="species") -> dict:
    """Iris-like: three species whose features differ in mean; returns the `data` section."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    species = ["setosa", "versicolor", "virginica"]
    names = [f"f{i}" for i in range(n_features)]
    for file, n in (("train.csv", n_train), ("test.csv", n_test)):
        labels = balanced_labels(n, 3, rng)
        features = rng.normal(size=(n, n_features)) + 3.0 * labels[:, None] * (1 + np.arange(n_features))
        write_table(directory / file, features, [species[y] for y in labels], names, label_column=label_column)
    return {"format": "csv", "source": str(directory), "csv": {"label_column": label_column}}
