"""pipeline/text_layers.py: the text vectorizer and the bag of embeddings inside the model, and what
tf2onnx and the LiteRT converter make of them: standard ONNX and built-in LiteRT ops only, each
runtime computing what Keras computes, on the awkward texts; the SavedModel taking the texts."""

import numpy as np
import pytest

from pipeline.text import AWKWARD_TEXTS, PAD, encode_texts, text_words, vocabulary_table, word_bucket

pytestmark = pytest.mark.slow
MAX_BYTES = 96
TEXTS = [*AWKWARD_TEXTS, "hello world hello", "one two three four five six seven eight nine ten eleven"]
VOCABULARY = ["hello", "world", "word", "one", "two", "three", "café", "булок", "日本語のテキスト"]


def vectorizer(sequence_length: int = 8):
    from pipeline.text_layers import TextVectorizer

    return TextVectorizer(sequence_length, VOCABULARY)


def expected_ids(text: str, sequence_length: int) -> list[int]:
    """What the vectorizer must emit, computed with the Python twin: the first words' ids, right-aligned."""
    table = vocabulary_table(VOCABULARY)
    words = text_words(encode_texts([text], MAX_BYTES)[0])[:sequence_length]
    ids = [int(table[word_bucket(w)]) for w in words]
    return [PAD] * (sequence_length - len(ids)) + ids


@pytest.mark.parametrize("sequence_length", [1, 8, 64])
def test_the_vectorizer_emits_the_first_words_ids_right_aligned(sequence_length):
    ids = np.asarray(vectorizer(sequence_length)(encode_texts(TEXTS, MAX_BYTES)))
    assert ids.shape == (len(TEXTS), sequence_length)
    for row, text in zip(ids, TEXTS, strict=True):
        assert row.tolist() == expected_ids(text, sequence_length), text[:40]


def test_known_unknown_and_padding_ids():
    (row,) = np.asarray(vectorizer(4)(encode_texts(["Hello zebra WORLD"], MAX_BYTES)))
    assert row.tolist() == [PAD, 2, 1, 3]  # hello is the first word of the vocabulary, zebra unknown


def test_the_bag_of_embeddings_is_the_mean_of_the_words_and_zero_for_none():
    from pipeline.text_layers import EmbeddingBag

    bag = EmbeddingBag(5, 2, embeddings_initializer="ones")
    bag.build((None, 3))
    bag.embeddings.assign(np.arange(10, dtype="float32").reshape(5, 2))
    out = np.asarray(bag(np.array([[0, 1, 3], [0, 0, 0], [2, 2, 0]], dtype="int32")))
    np.testing.assert_allclose(out, [[4.0, 5.0], [0.0, 0.0], [4.0, 5.0]])


@pytest.fixture(scope="module")
def text_model():
    import keras

    from pipeline.model import build_model

    keras.utils.set_random_seed(3)
    return build_model("text_bag", (MAX_BYTES,), 3, [vectorizer(16)], kind="text", vocabulary_size=len(VOCABULARY) + 2)


def test_onnx_holds_standard_ops_only_and_computes_what_keras_does(text_model, tmp_path):
    import onnxruntime as ort

    from pipeline.export import serving_function
    from pipeline.onnx_export import tf2onnx_graph

    proto = tf2onnx_graph(serving_function(text_model), 17, tmp_path / "model.onnx")
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # no contrib or custom op
    assert not {"StringNormalizer", "StringSplit", "RegexFullMatch"} & {n.op_type for n in proto.graph.node}
    x = encode_texts(TEXTS, MAX_BYTES)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"text": x})
    np.testing.assert_allclose(probs, text_model.predict_on_batch(x), atol=1e-6)


def test_litert_holds_builtin_ops_only_and_computes_what_keras_does(text_model, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from pipeline.export import write_numeric_saved_model
    from pipeline.litert import convert, operator_names

    write_numeric_saved_model(text_model, tmp_path / "saved_model")
    flat, _ = convert(tmp_path / "saved_model", None, "text", text_model)
    ops = {name for name, _ in operator_names(flat)}
    assert "CUSTOM" not in ops and not any(name.startswith("FLEX") for name in ops), ops
    runner = Interpreter(model_content=flat).get_signature_runner("serving_default")
    x = encode_texts(TEXTS, MAX_BYTES)
    np.testing.assert_allclose(runner(text=x)["probabilities"], text_model.predict_on_batch(x), atol=1e-6)


def test_the_saved_model_takes_the_texts_themselves_and_cuts_them_itself(text_model, tmp_path):
    import tensorflow as tf

    from pipeline.export import export_saved_model, saved_model_function

    export_saved_model(text_model, saved_model_function(text_model, "text"), tmp_path / "saved_model")
    signature = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    assert signature.structured_input_signature[1]["text"].dtype == tf.string
    probs = signature(text=tf.constant([t.encode() for t in TEXTS]))["probabilities"].numpy()
    np.testing.assert_allclose(probs, text_model.predict_on_batch(encode_texts(TEXTS, MAX_BYTES)), atol=1e-6)


def test_a_saved_text_model_loads_back_in_safe_mode(text_model, tmp_path):
    from pipeline.model import load_keras_model

    text_model.save(tmp_path / "model.keras")
    loaded = load_keras_model(str(tmp_path / "model.keras"))
    x = encode_texts(TEXTS, MAX_BYTES)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), text_model.predict_on_batch(x))
    assert loaded.layers[0].vocabulary == VOCABULARY
