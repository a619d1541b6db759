"""pipeline/text.py: texts as UTF-8 bytes, the standardisation the model applies (its NumPy twin),
the word hash and the vocabulary adapted on the training split."""

import numpy as np
import pytest

from pipeline.text import (
    AWKWARD_TEXTS,
    BUCKETS,
    OOV,
    adapt_vocabulary,
    decode_text,
    encode_texts,
    standardized_words,
    text_words,
    vocabulary_table,
    word_bucket,
)


def words_of(text: str, max_bytes: int = 256) -> list[str]:
    return [w.decode() for w in text_words(encode_texts([text], max_bytes)[0])]


def test_texts_are_their_utf8_bytes_cut_and_zero_padded():
    rows = encode_texts(["abc", "é", "x" * 10], max_bytes=4)
    assert rows.dtype == np.uint8 and rows.shape == (3, 4)
    assert rows[0].tolist() == [97, 98, 99, 0]
    assert rows[1].tolist() == [0xC3, 0xA9, 0, 0]  # two bytes of UTF-8
    assert rows[2].tolist() == [120] * 4
    assert decode_text(rows[1]) == "é"
    assert decode_text(encode_texts(["éé"], 3)[0]) == "é\ufffd"  # a character cut at max_bytes


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hello, World! hello   world", ["hello", "world", "hello", "world"]),
        ("", []),
        ("  \t\n\r\n ", []),
        ("!!!???...,,,", []),
        ("tab\tsep\nnew—dash “quoted” … end", ["tab", "sep", "new", "dash", "quoted", "end"]),
        ("ÀÉÎ Ünïcödé ÄÖÜ straße «Über» ¿qué?", ["àéî", "ünïcödé", "äöü", "straße", "über", "qué"]),
        ("Привет МИР Ёлка ЇЖАК", ["привет", "мир", "ёлка", "їжак"]),
        ("ŁÓDŹ żółć Čeština ŘEŘICHA Ŀl", ["łódź", "żółć", "čeština", "řeřicha", "ŀl"]),
        ("日本語のテキスト、テスト。 😀 emoji!!!", ["日本語のテキスト", "テスト", "😀", "emoji"]),
        ("\ufeffBOM text", ["bom", "text"]),
        ("R2-D2 3.14 e-mail", ["r2", "d2", "3", "14", "e", "mail"]),
    ],
)
def test_standardisation_lower_cases_and_splits_on_punctuation_in_every_script(text, words):
    assert words_of(text) == words


def test_the_leakage_check_sees_texts_as_the_model_reads_them():
    a, b = encode_texts(["Hello, world!", "hello   WORLD"], 64)
    assert standardized_words(a) == standardized_words(b) == b"hello world"


def test_a_word_bucket_is_a_polynomial_hash_of_its_last_bytes():
    assert word_bucket(b"") == 0
    assert word_bucket(b"a") == 97
    assert word_bucket(b"ab") == (97 * 257 + 98) % BUCKETS
    long = b"x" * 100
    assert word_bucket(long) == word_bucket(long[-24:])  # only the last 24 bytes count


def test_the_vocabulary_is_the_training_texts_commonest_words():
    rows = encode_texts(["b a b", "c b", "a b"], 32)
    assert adapt_vocabulary([rows[:2], rows[2:]], vocabulary_size=4) == ["b", "a"]  # 2 ids are reserved
    table = vocabulary_table(["b", "a"])
    assert table.shape == (BUCKETS,) and table.dtype == np.int32
    assert table[word_bucket(b"b")] == 2 and table[word_bucket(b"a")] == 3
    assert table[word_bucket(b"c")] == OOV


def test_the_awkward_texts_cover_what_tokenizers_get_wrong():
    assert "" in AWKWARD_TEXTS and any(len(t.encode()) > 4096 for t in AWKWARD_TEXTS)
    scripts = "".join(AWKWARD_TEXTS)
    for sample in ("é", "ё", "ż", "日", "😀", "\t", "—"):
        assert sample in scripts
