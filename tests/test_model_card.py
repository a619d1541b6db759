"""The model card from the stages' reports: every section, class names as written, the latency that
verify measured of these very files."""

from pipeline.model_card import CardInputs, render


def inputs(latency=None) -> CardInputs:
    per_class = {
        "T-shirt_top": {"class": "T-shirt/top", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10},
        "Bag": {"class": "Bag", "precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 10},
    }
    return CardInputs(
        registered={"name": "fashion-mnist-classifier", "version": "4"},
        run={"run_id": "abc", "commit": "f" * 40, "summary": "cnn (10 parameters) on fashion-mnist"},
        data={"name": "fashion-mnist", "format": "idx", "source": "/data", "checksums": {"a.gz": "0" * 64},
              "sha256": "1" * 64, "test_sha256": "2" * 64,
              "report": {"counts": {"train": 90, "val": 10, "test": 20}, "duplicates": {"test_in_train": 0}}},
        metadata={"class_names": ["T-shirt/top", "Bag"], "files": {"model.onnx": {"sha256": "s1"}},
                  "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 28, 28, 1], "meaning": "pixels"},
                  "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", 2]},
                  "producer_versions": {"keras": "3"}},
        training={"epochs_run": 3, "best_epoch": 2, "parameters": 10, "global_batch_size": 8},
        hyper={"model_name": "cnn", "optimizer": "adam", "learning_rate": 0.001},
        evaluation={"test": {"examples": 20, "accuracy": 0.9, "top2_accuracy": 1.0, "macro_f1": 0.92,
                             "loss": 0.3, "ece": 0.05, "per_class": per_class}},
        parity={"formats": {"keras": {"accuracy": 0.9},
                            "onnx": {"accuracy": 0.9, "max_abs_diff": 1e-6, "argmax_agreement": 1.0},
                            "onnx_int8": {"accuracy": 0.85, "max_abs_diff": 0.1, "argmax_agreement": 0.95,
                                          "accuracy_drop_vs_float32": 0.05},
                            "litert": {"accuracy": 0.9, "max_abs_diff": 2e-6, "argmax_agreement": 1.0},
                            "litert_int8": {"accuracy": 0.88, "max_abs_diff": 0.08, "argmax_agreement": 0.97,
                                            "accuracy_drop_vs_float32": 0.02}},
                "max_int8_drop": 0.1, **({"latency": latency} if latency else {})},
    )  # fmt: skip


def test_the_card_has_every_section_from_the_reports():
    card = render(inputs())
    assert card.startswith("# Model card: fashion-mnist-classifier v4\n")
    for text in ("## Data", "## Model", "## Results", "## Intended use and limits", "## Provenance",
                 "| T-shirt/top | 0.900 | 0.800 | 0.850 | 10 |", "| litert | 0.9000 | 2e-06 | 100.00 % |",
                 "int8 accuracy drop against the same runtime's float32 file: onnx_int8 0.0500, litert_int8 0.0200",
                 "0 test and n/a validation examples", "`a.gz`: `" + "0" * 64, "Weakest classes: T-shirt/top",
                 "28×28 greyscale images", "Latency: not measured."):  # fmt: skip
        assert text in card, text


def test_latency_is_what_verify_timed_of_these_files():
    timed = {"onnxruntime": "1.32.0", "ai-edge-litert": "2.3.0", "cpus": 2,
             "engines": {"onnx": {"batch1_median_ms": 0.1, "batch256_images_per_s": 9000.0},
                         "litert_int8": {"batch1_median_ms": 0.05, "batch256_images_per_s": 12000.0}}}  # fmt: skip
    card = render(inputs(timed))
    assert "| onnx | 0.100 | 9,000 |" in card and "| litert_int8 | 0.050 | 12,000 |" in card
    assert "ai-edge-litert 2.3.0 with XNNPACK" in card
    assert "Latency of these very files, timed by `verify` (2 logical CPUs, onnxruntime 1.32.0" in card
    assert "Session settings: keep onnxruntime's defaults (graph optimisation `ORT_ENABLE_ALL`" in card


def test_a_binary_card_names_the_positive_class_and_what_was_left_out():
    card_inputs = inputs()
    test = {
        **card_inputs.evaluation["test"],
        "roc_auc": 0.97,
        "average_precision": 0.95,
        "task": {
            "type": "binary",
            "classes": 2,
            "positive_class": "Bag",
            "left_out": {"top2_accuracy": "needs more than 2 classes"},
        },
        "confusion": {"true_positives": 9, "false_positives": 1, "true_negatives": 9, "false_negatives": 1},
    }
    del test["top2_accuracy"]
    import dataclasses

    card = render(dataclasses.replace(card_inputs, evaluation={"test": test}))
    assert "**Task:** binary, 2 classes; the positive class (ROC AUC, average precision, confusion) is **Bag**." in card
    assert "Left out: top2 accuracy (needs more than 2 classes)." in card
    assert "| accuracy | macro F1 | ROC AUC | average precision | log loss | calibration (ECE) |" in card
    assert "| 0.9000 | 0.9200 | 0.9700 | 0.9500 | 0.3000 | 0.0500 |" in card
    assert "9 true positives, 1 false positives, 9 true negatives, 1 false negatives" in card
