"""The leakage check (pipeline/leakage.py): 16 bytes for each example, of what the model sees of it;
texts compared after the model's own standardisation."""

import numpy as np

from pipeline.leakage import as_digests, count_shared, digest
from pipeline.text import encode_texts


def test_images_and_tables_are_the_same_example_only_byte_for_byte():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert digest(image, "image") == digest(image.copy(), "image") and len(digest(image, "image")) == 16
    other = image.copy()
    other[0, 0, 0] += 1
    assert digest(other, "image") != digest(image, "image")
    row = np.array([1.5, -2.0], np.float32)
    assert digest(row, "table") != digest(row + np.float32(1e-6), "table")


def test_texts_are_the_same_example_when_the_model_reads_the_same_words():
    same, also_same, other = encode_texts(["Hello, world", "  hello   WORLD!", "hello there"], 32)
    assert digest(same, "text") == digest(also_same, "text")
    assert digest(other, "text") != digest(same, "text")


def test_shared_examples_are_counted_among_the_digests():
    seen = as_digests([digest(np.array([i], np.uint8), "image") for i in range(5)])
    test = as_digests([digest(np.array([i], np.uint8), "image") for i in (3, 4, 9, 3)])
    assert count_shared(seen, test) == 3  # 3 twice, 4 once; 9 is new
    assert count_shared(seen, as_digests([])) == 0 and count_shared(as_digests([]), test) == 0
