"""The figures evaluate draws into reports/figures/ (and the training's MLflow run): the training
curves, the confusion matrix (or, for many classes, the largest confusions) and the test examples
the model got most confidently wrong, as pictures for images and as their texts for text (a table's
rows are no pictures). matplotlib, imported by each function that draws."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FIGURES = ("training_curves.png", "confusion_matrix.png", "worst_errors.png")
# More classes than this: the confusion figure shows the largest confusions instead of an n × n matrix.
MANY_CLASSES = 30


def plot_training_curves(history_csv: Path, out: Path) -> None:
    import matplotlib.pyplot as plt

    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("", "-o"), ("val_", "--s")):
            values = [float(r[f"{split}{metric}"]) for r in rows if r.get(f"{split}{metric}")]
            ax.plot(epochs[: len(values)], values, style, markersize=3, label="validation" if split else "train")
        ax.set(title=f"{metric.capitalize()} per epoch", xlabel="epoch", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def short(name: str, width: int = 24) -> str:
    """A class name that fits a figure's label."""
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_confusion_matrix(labels, predicted, class_names: list[str], out: Path) -> None:
    """Every cell for up to MANY_CLASSES classes; beyond, the largest confusions (an n × n picture of
    hundreds of classes is unreadable and grows with n²)."""
    if len(class_names) > MANY_CLASSES:
        plot_top_confusions(labels, predicted, class_names, out)
        return
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(6.0, 0.75 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), layout="constrained")
    ConfusionMatrixDisplay.from_predictions(
        labels,
        predicted,
        labels=list(range(len(class_names))),
        display_labels=[short(name) for name in class_names],
        normalize="true",
        values_format=".2f",
        cmap="Blues",
        ax=ax,
        colorbar=False,
        xticks_rotation=45,
        text_kw={"fontsize": 8},
    )
    ax.set(title="Confusion matrix (test, each row normalised to 1)", xlabel="predicted class", ylabel="true class")
    fig.savefig(out, dpi=110)
    plt.close(fig)


def top_confusions(labels, predicted, count: int = 25) -> list[tuple[int, int, int]]:
    """The `count` most frequent (true, predicted, examples) mistakes, largest first."""
    wrong = labels != predicted
    pairs, counts = np.unique(np.stack([labels[wrong], predicted[wrong]], axis=1), axis=0, return_counts=True)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:count] if len(counts) else []
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def plot_top_confusions(labels, predicted, class_names: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt

    mistakes = top_confusions(labels, predicted)
    fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(mistakes), 4) + 1.5), layout="constrained")
    names = [f"{short(class_names[t])} → {short(class_names[p])}" for t, p, _ in mistakes]
    ax.barh(range(len(mistakes)), [c for *_, c in mistakes], color="tab:blue")
    ax.set_yticks(range(len(mistakes)), names, fontsize=8)
    ax.invert_yaxis()
    if not mistakes:
        ax.text(0.5, 0.5, "no misclassified test examples", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"Most frequent confusions (test, {len(class_names)} classes: true → predicted)",
           xlabel="test examples")  # fmt: skip
    fig.savefig(out, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class Mistake:
    confidence: float
    index: int
    image: np.ndarray
    label: int
    predicted: int


class WorstErrors:
    """The `count` most confidently wrong examples seen so far, with their inputs: a bounded heap,
    so the figure needs no second pass over the test split and no more than `count` images."""

    def __init__(self, count: int):
        self.count = count
        self.heap: list[tuple[float, int, Mistake]] = []  # (confidence, -index): ties go to the earlier one

    def add(self, first_index: int, images: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> None:
        import heapq

        predicted = probs.argmax(axis=1)
        for i in np.flatnonzero(predicted != labels):
            mistake = Mistake(float(probs[i, predicted[i]]), first_index + int(i), images[i].copy(), int(labels[i]),
                              int(predicted[i]))  # fmt: skip
            item = (mistake.confidence, -mistake.index, mistake)
            if len(self.heap) < self.count:
                heapq.heappush(self.heap, item)
            elif item[:2] > self.heap[0][:2]:
                heapq.heapreplace(self.heap, item)

    def worst(self) -> list[Mistake]:
        return [m for *_, m in sorted(self.heap, key=lambda item: item[:2], reverse=True)]


def plot_worst_errors(worst: list[Mistake], class_names: list[str], out: Path, kind: str = "image") -> int:
    """The test examples the model got wrong with the most confidence (images, or texts); returns
    how many are shown."""
    if kind == "text":
        return plot_worst_texts(worst, class_names, out)
    import matplotlib.pyplot as plt

    cols = 4
    rows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, m in zip(axes.flat, worst, strict=False):  # the grid has a cell per image, and spare cells
        grey = m.image.shape[-1] == 1
        ax.imshow(m.image[..., 0] if grey else m.image, cmap="gray" if grey else None)
        ax.set_title(
            f"true: {short(class_names[m.label])}\npred: {short(class_names[m.predicted])} ({m.confidence:.2f})",
            fontsize=8,
        )
    if not worst:
        axes.flat[0].text(0.5, 0.5, "no misclassified test images", ha="center", va="center")
    fig.suptitle("Most confidently wrong test images")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(worst)


def plot_worst_texts(worst: list[Mistake], class_names: list[str], out: Path, width: int = 110) -> int:
    """The most confidently wrong test texts, one per line: true and predicted class, confidence and
    the text's start (its bytes as the model read them, up to max_bytes)."""
    import textwrap

    import matplotlib.pyplot as plt

    from pipeline.text import decode_text

    drawable = font_characters("monospace")
    lines = []
    for m in worst:
        text = "".join(c if ord(c) in drawable else "?" for c in " ".join(decode_text(m.image).split()))
        head = f"{short(class_names[m.label])} → {short(class_names[m.predicted])} ({m.confidence:.2f}): "
        lines.append(head + textwrap.shorten(text, width=width, placeholder=" …") if text else head + "(empty)")
    fig, ax = plt.subplots(figsize=(12, 0.3 * max(len(lines), 2) + 1.0), layout="constrained")
    ax.axis("off")
    body = "\n".join(lines) if lines else "no misclassified test texts"
    ax.text(0, 1, body, va="top", ha="left", fontsize=8, family="monospace", transform=ax.transAxes)
    fig.suptitle("Most confidently wrong test texts (true → predicted)")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return len(worst)


def font_characters(family: str) -> set[int]:
    """The code points the font matplotlib draws `family` with has glyphs for: others are shown as
    "?" (matplotlib would warn of each missing glyph and draw a box: CJK, emoji)."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family=family))
    return set(font_manager.get_font(path).get_charmap())
