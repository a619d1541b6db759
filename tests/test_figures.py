"""Evaluate's figures (pipeline/figures.py): drawn without a display, something on every canvas, bounded
for any number of classes, the worst errors kept in a bounded heap as the test split streams by."""

import numpy as np
from PIL import Image

from pipeline.figures import (
    WorstErrors,
    plot_confusion_matrix,
    plot_training_curves,
    plot_worst_errors,
    top_confusions,
)


def drawn(path, min_size) -> None:
    """A figure of at least `min_size` pixels with something on it, not a blank canvas."""
    with Image.open(path) as image:
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], (path.name, image.size)
        assert len(set(image.convert("L").getdata())) > 10, path.name


def test_figures_are_drawn_without_a_display(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    history = tmp_path / "history.csv"
    history.write_text(
        "epoch,loss,accuracy,val_loss,val_accuracy,learning_rate\n"
        "1,1.0,0.5,1.1,0.45,0.001\n2,0.6,0.7,0.7,0.65,0.0005\n3,0.4,0.8,0.5,0.75,0.0001\n"
    )
    plot_training_curves(history, tmp_path / "curves.png")
    names = [f"class name {i}" for i in range(10)]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200)
    probs = rng.dirichlet(np.ones(10), 200)
    plot_confusion_matrix(labels, probs.argmax(1), names, tmp_path / "cm.png")
    worst = WorstErrors(16)
    images = rng.integers(0, 255, (200, 28, 28, 1))
    for start in range(0, 200, 64):  # batch by batch, as evaluate streams the test split
        worst.add(start, images[start : start + 64], labels[start : start + 64], probs[start : start + 64])
    predicted = probs.argmax(1)
    wrong = np.flatnonzero(predicted != labels)
    expected = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:16]
    assert [m.index for m in worst.worst()] == list(expected)  # the 16 most confident mistakes, in order
    shown = plot_worst_errors(worst.worst(), names, tmp_path / "worst.png")
    assert shown == 16
    for name, min_size in (("curves.png", (1000, 400)), ("cm.png", (800, 800)), ("worst.png", (1000, 1000))):
        drawn(tmp_path / name, min_size)


def test_many_classes_get_a_bar_chart_of_the_largest_confusions(tmp_path):
    from helpers.data import thousand_class_predictions

    labels, probs, names = thousand_class_predictions()
    predicted = probs.argmax(1)
    mistakes = top_confusions(labels, predicted)
    assert len(mistakes) == 25 and [c for *_, c in mistakes] == sorted((c for *_, c in mistakes), reverse=True)
    plot_confusion_matrix(labels, predicted, names, tmp_path / "cm.png")
    with Image.open(tmp_path / "cm.png") as image:  # a bar chart of 25 confusions, not 10^6 cells
        assert image.size[0] < 1500 and image.size[1] < 1500


def test_the_worst_texts_are_listed_as_the_model_read_them(tmp_path):
    """Text data: the mistakes' bytes decoded, one line each (no picture of a byte array)."""
    texts = ["le ciel est gris, pluie demain", "the team scored twice", "Käse und Brot", ""]
    max_bytes = 32
    inputs = np.zeros((len(texts), max_bytes), np.uint8)
    for row, text in zip(inputs, texts, strict=True):
        data = text.encode()[:max_bytes]
        row[: len(data)] = np.frombuffer(data, np.uint8)
    labels = np.array([0, 1, 2, 0])
    probs = np.array([[0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.6, 0.1, 0.3], [0.3, 0.4, 0.3]])
    worst = WorstErrors(8)
    worst.add(0, inputs, labels, probs)
    assert [m.index for m in worst.worst()] == [0, 2, 3]  # by confidence: 0.9, 0.6, 0.4
    assert plot_worst_errors(worst.worst(), ["weather", "sport", "food"], tmp_path / "worst.png", "text") == 3
    drawn(tmp_path / "worst.png", (1000, 100))
