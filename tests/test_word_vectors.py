"""Word vectors from co-occurrence counts (`elman.text`), against plain loops and an exact SVD,
and the IMDB option that starts its embeddings from them."""

import collections
import dataclasses
import math

import numpy as np
import pytest

from elman import text
from elman.apps import get_app


def _random_texts(rng, count=40, vocabulary_size=30):
    # Ids 0 (padding) and 1 (out of vocabulary) among the words: neither must be counted.
    return [rng.integers(0, vocabulary_size, size=rng.integers(0, 12)) for _ in range(count)]


def _loop_counts(texts, vocabulary_size, window, context_words):
    counts = np.zeros((vocabulary_size, context_words))
    for ids in texts:
        for i, word in enumerate(ids):
            for j, context in enumerate(ids):
                if (0 < abs(i - j) <= window and word > 1
                        and 2 <= context < context_words + 2):
                    counts[word, context - 2] += 1
    return counts


@pytest.mark.parametrize("window,context_words", [(1, 28), (3, 10), (20, 5)])
def test_counts_match_plain_loops(window, context_words):
    texts = _random_texts(np.random.default_rng(window))
    counts = text.cooccurrence_counts(texts, 30, window=window, context_words=context_words)
    np.testing.assert_array_equal(counts, _loop_counts(texts, 30, window, context_words))


def test_vectors_factor_the_ppmi_matrix():
    texts = _random_texts(np.random.default_rng(0), count=300)
    counts = _loop_counts(texts, 30, 2, 12)
    # PPMI with smoothed context counts, written out entry by entry.
    total = counts.sum()
    context_mass = sum(counts[:, c].sum() ** 0.75 for c in range(12))
    ppmi = np.zeros_like(counts)
    for w, c in np.argwhere(counts > 0):
        p_word = counts[w].sum() / total
        p_context = counts[:, c].sum() ** 0.75 / context_mass
        ppmi[w, c] = max(0.0, math.log(counts[w, c] / total / (p_word * p_context)))
    left, singular_values, _ = np.linalg.svd(ppmi)
    expected = left[:, :4] * np.sqrt(singular_values[:4])
    vectors = text.word_vectors(counts, 4)
    assert vectors.shape == (30, 4) and vectors.dtype == np.float32
    # Columns are defined up to their sign: compare the Gram matrices.
    np.testing.assert_allclose(vectors @ vectors.T, expected @ expected.T, atol=2e-4)
    assert np.abs(vectors[:2]).max() == 0  # Padding and out-of-vocabulary ids: never counted.


def test_words_in_the_same_contexts_get_similar_vectors():
    # Words 2 and 3 are interchangeable (after "10", before "11"); word 4 lives elsewhere.
    rng = np.random.default_rng(0)
    texts = []
    for _ in range(400):
        texts.append([10, rng.choice([2, 3]), 11, rng.integers(12, 20)])
        texts.append([rng.integers(12, 20), 4, 13, 13])
    vectors = text.word_vectors(text.cooccurrence_counts(texts, 20, window=2), 3)

    def cosine(a, b):
        return vectors[a] @ vectors[b] / np.linalg.norm(vectors[a]) / np.linalg.norm(vectors[b])

    assert cosine(2, 3) > 0.95
    assert abs(cosine(2, 4)) < 0.5


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match=r"word ids must lie in \[0, 5\)"):
        text.cooccurrence_counts([[2, 7]], 5)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        text.cooccurrence_counts([[2, 3]], 5, window=0)
    with pytest.raises(ValueError, match=r"dimensions must be in \[1, 3\]"):
        text.word_vectors(np.ones((5, 3)), 4)
    with pytest.raises(ValueError, match="all zero"):
        text.word_vectors(np.zeros((5, 3)), 2)


def test_imdb_starts_its_embeddings_from_the_word_vectors():
    app = get_app("imdb")
    config = dataclasses.replace(app.SMOKE, cooccurrence_embeddings=True)
    data = app.load_data(config)
    assert data.word_vectors.shape == (len(data.vocabulary), config.embedding_dim)
    # Words that share contexts in the sample's reviews: rows are not noise.
    assert np.abs(data.word_vectors[2:]).sum(axis=1).min() > 0
    model = app.build_model(config, data)
    np.testing.assert_allclose(model.get_layer("embed").get_weights()[0], data.word_vectors)
    assert app.load_data(app.SMOKE).word_vectors is None
