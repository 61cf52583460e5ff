"""BigramEmbedding: word vectors plus hashed (previous word, word) vectors, checked against NumPy."""

import keras
import numpy as np
import pytest

from elman.layers import BigramEmbedding, ElmanCell, ElmanRNN


def _numpy_bigram_ids(word_ids, buckets):
    ids = np.zeros_like(word_ids, dtype=np.int64)
    for row in range(word_ids.shape[0]):
        previous = 0
        for step, word in enumerate(word_ids[row]):
            if word != 0:
                ids[row, step] = (previous * 1_000_003 + word) % buckets + 1
            previous = word
    return ids


def test_sums_the_word_and_the_hashed_pair_vectors():
    word_ids = np.array([[5, 6, 7, 6, 7, 0], [6, 7, 2, 0, 0, 0]])
    layer = BigramEmbedding(vocabulary_size=10, bigram_buckets=13, output_dim=4)
    vectors = keras.ops.convert_to_numpy(layer(word_ids))
    expected_ids = _numpy_bigram_ids(word_ids, 13)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bigram_ids(word_ids)),
                                  expected_ids)
    words, bigrams = (keras.ops.convert_to_numpy(table.embeddings)
                      for table in (layer.words, layer.bigrams))
    np.testing.assert_allclose(vectors, words[word_ids] + bigrams[expected_ids], rtol=1e-6)
    # The same pair gets the same row wherever it is; padding gets row 0.
    assert expected_ids[0, 2] == expected_ids[0, 4] == expected_ids[1, 1]
    assert expected_ids[0, 1] != expected_ids[0, 3]  # (5, 6) and (7, 6)
    assert np.all(expected_ids[word_ids == 0] == 0)


def test_masks_padding_for_the_recurrent_layer_after_it():
    keras.utils.set_random_seed(0)
    word_ids = keras.Input((None,), dtype="int64")
    states = ElmanRNN(ElmanCell(3))(BigramEmbedding(10, 13, 4)(word_ids))
    model = keras.Model(word_ids, states)
    padded = model.predict(np.array([[5, 6, 7, 0, 0]]), verbose=0)
    unpadded = model.predict(np.array([[5, 6, 7]]), verbose=0)
    np.testing.assert_allclose(padded, unpadded, rtol=1e-6)


def test_keras_round_trip(tmp_path):
    word_ids = keras.Input((None,), dtype="int64")
    model = keras.Model(word_ids, BigramEmbedding(10, 13, 4, name="embed")(word_ids))
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    ids = np.array([[1, 2, 3, 9, 0]])
    np.testing.assert_array_equal(restored.predict(ids, verbose=0), model.predict(ids, verbose=0))
    assert restored.get_layer("embed").bigram_buckets == 13


def test_rejects_no_buckets():
    with pytest.raises(ValueError, match="bigram_buckets must be at least 1, received 0"):
        BigramEmbedding(10, 0, 4)
