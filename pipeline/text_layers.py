"""The Keras layers that make text models take raw text: TextVectorizer (UTF-8 bytes → standardised
words → vocabulary ids, inside the model, so no deployer re-implements a tokenizer) and
EmbeddingBag (the mean of a text's word embeddings: fastText's bag of words). Both are built from
ops every runtime has natively: integer arithmetic, comparisons, a cumulative count, top-k and
gathers, so tf2onnx and the LiteRT converter turn them into standard ONNX and built-in LiteRT ops
(no string op anywhere but the SavedModel's own signature, which takes tf.string).

Registered with Keras' serialization, so `keras.saving.load_model` (safe mode) rebuilds them once
this module is imported (pipeline/model.py: load_keras_model does).
"""

from __future__ import annotations

import keras
from keras import ops

from pipeline.text import BUCKETS, MULTIPLIER, PAD, SPACE, WORD_BYTES, shifted, standardize, vocabulary_table

POWERS = [pow(MULTIPLIER, k, BUCKETS) for k in range(WORD_BYTES)]  # each below 2^20


@keras.saving.register_keras_serializable(package="pipeline")
class TextVectorizer(keras.layers.Layer):
    """uint8 [batch, max_bytes] → int32 [batch, sequence_length]: each text's first `sequence_length`
    words as vocabulary ids, right-aligned (padding first, as Keras' pad_sequences does: a recurrent
    layer's last step is the text's last word). The vocabulary is the training split's words
    (pipeline/text.py: adapt_vocabulary), kept in the config; the hash table is built from it."""

    def __init__(self, sequence_length: int, vocabulary: list[str], **kwargs):
        super().__init__(**kwargs)
        self.sequence_length, self.vocabulary = int(sequence_length), list(vocabulary)
        self.table = self.add_weight(
            shape=(BUCKETS,), dtype="int32", initializer="zeros", trainable=False, name="vocabulary_table"
        )
        self.table.assign(vocabulary_table(self.vocabulary))

    @property
    def vocabulary_size(self) -> int:
        """Ids the vectorizer emits: padding, out-of-vocabulary, then one per word."""
        return len(self.vocabulary) + 2

    def word_buckets(self, b):
        """Each position's hash of the word ending there (its last WORD_BYTES bytes): the sum of each
        byte k places back times MULTIPLIER^k, modulo BUCKETS (text.word_bucket's Horner rule, term by
        term); positions outside the word add nothing. Each term is below 2^28, so seven of them and
        the carried remainder stay within int32 between reductions."""
        word = ops.cast(b != SPACE, "int32")
        inside, h = word, b * word
        for k in range(1, WORD_BYTES):
            inside = inside * shifted(ops, word, k)  # the word reaches k bytes back
            h = h + shifted(ops, b, k) * inside * POWERS[k]
            if k % 7 == 6:
                h = h % BUCKETS
        return h % BUCKETS, word

    def call(self, inputs):
        b = standardize(ops, ops.cast(inputs, "int32"))
        h, word = self.word_buckets(b)
        end = (word == 1) & (shifted(ops, word, -1) == 0)  # the last byte of each word
        ids = ops.where(end, ops.take(self.table, h), PAD)
        length = b.shape[1]
        count = min(self.sequence_length, length)
        # The word ends in order: top-k of a key that ranks every word end (earliest first) above
        # every other position.
        positions = ops.arange(length, dtype="int32")[None, :]
        key = ops.where(end, length - positions, -positions)
        _, first = ops.top_k(key, k=count, sorted=True)
        picked = ops.take_along_axis(ids, first, axis=1)
        words = ops.minimum(ops.sum(ops.cast(end, "int32"), axis=1, keepdims=True), count)
        source = ops.arange(count, dtype="int32")[None, :] - (count - words)  # right-aligned
        aligned = ops.where(source >= 0, ops.take_along_axis(picked, ops.maximum(source, 0), axis=1), PAD)
        if count < self.sequence_length:  # fewer bytes than words asked for: the rest is padding
            aligned = ops.pad(aligned, [[0, 0], [self.sequence_length - count, 0]])
        return aligned

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.sequence_length)

    def get_config(self):
        return {**super().get_config(), "sequence_length": self.sequence_length, "vocabulary": self.vocabulary}


@keras.saving.register_keras_serializable(package="pipeline")
class EmbeddingBag(keras.layers.Layer):
    """int ids [batch, n] → the mean of their embeddings [batch, output_dim], padding (id 0) left out
    (PyTorch's nn.EmbeddingBag with mode="mean"; an empty text gives zeros)."""

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim), initializer=self.embeddings_initializer, name="embeddings"
        )

    def call(self, ids):
        vectors = ops.take(self.embeddings, ops.cast(ids, "int32"), axis=0)
        present = ops.cast(ids != PAD, vectors.dtype)
        total = ops.sum(vectors * present[..., None], axis=1)
        return total / ops.maximum(ops.sum(present, axis=1, keepdims=True), 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        }


def vectorizer_of(model) -> TextVectorizer | None:
    return next((layer for layer in model.layers if isinstance(layer, TextVectorizer)), None)


def string_serving_function(model):
    """The SavedModel's signature for a text model: one tf.string per text (what TF Serving users
    send), cut or zero-padded to the model's max_bytes inside the graph."""
    import tensorflow as tf

    from pipeline.kinds import OUTPUT_NAME

    (tensor,) = model.inputs
    max_bytes = int(tensor.shape[1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=tensor.name)])
    def serve(texts):
        data = tf.io.decode_raw(texts, tf.uint8, fixed_length=max_bytes)
        return {OUTPUT_NAME: model(data, training=False)}

    return serve


def text_contract(model) -> dict:
    """What metadata.json says of a text model's input beyond the tensor: the encoding and what the
    model does to the bytes."""
    from pipeline.text import ENCODING, STANDARDIZATION

    vectorizer = vectorizer_of(model)
    return {
        "encoding": ENCODING,
        "max_bytes": int(model.inputs[0].shape[1]),
        "saved_model_input": {"name": model.inputs[0].name, "dtype": "string", "shape": ["batch"]},
        "standardization": STANDARDIZATION,
        "tokens": "words",
        "vocabulary_size": vectorizer.vocabulary_size,
        "sequence_length": vectorizer.sequence_length,
        "most_frequent_words": vectorizer.vocabulary[:20],
    }
