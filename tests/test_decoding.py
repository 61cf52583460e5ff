"""elman.decoding against exhaustive search in NumPy, on a toy model with known probabilities."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman import decoding
from elman import text

PAD, START, END, A, B = range(5)
WORDS = (END, A, B)


def _tables(seed, batch=4):
    """Per example, log P(next word | the two words before), `(batch, 5, 5, 5)`; pad and start
    never written."""
    generator = np.random.default_rng(seed)
    logits = generator.normal(size=(batch, 5, 5, 5)) * 2
    logits[..., [PAD, START]] = -np.inf
    return (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype("float32")


def _step_for(tables):
    tables = tf.constant(np.maximum(tables, decoding.NEVER))

    def step(tokens, before, example):
        # The state is the word before the current one: a beam search that reorders the states
        # wrongly reads the wrong probabilities. The context says which example's table to use.
        rows = tf.gather(tables, example)  # (batch, 5, 5, 5)
        rows = tf.gather(rows, before, batch_dims=1)  # (batch, 5, 5)
        return tf.gather(rows, tokens, batch_dims=1), tf.cast(tokens, tf.int32)

    return step


def _score(table, sequence):
    before, previous, total = START, START, 0.0
    for word in sequence:
        total, before, previous = total + table[before, previous, word], previous, word
    return total


def _exhaustive_best(table, max_length, alpha):
    candidates = []
    for length in range(1, max_length + 1):
        for sequence in itertools.product(WORDS, repeat=length):
            ends = [i for i, word in enumerate(sequence) if word == END]
            if ends and ends != [length - 1]:
                continue  # Nothing is written after the end.
            if not ends and length < max_length:
                continue  # Without an end, a sequence runs to max_length.
            candidates.append((_score(table, sequence) / length ** alpha, sequence))
    return max(candidates)[1]


def _run(function, *args):
    batch = 4
    return function(args[0], tf.fill([batch], START), tf.range(batch), START, END, *args[1:])


@pytest.mark.parametrize("seed", range(5))
def test_wide_beam_search_is_exhaustive_search(seed):
    tables, max_length, alpha = _tables(seed), 3, 0.6
    ids, scores = _run(decoding.beam_search, _step_for(tables), max_length, 27, alpha)
    for example, table in enumerate(tables):
        expected = _exhaustive_best(table, max_length, alpha)
        written = [word for word in ids[example].numpy() if word != PAD]
        assert tuple(written) == expected
        assert scores[example].numpy() == pytest.approx(_score(table, expected), abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_follows_the_most_probable_word_and_equals_width_one(seed):
    tables, max_length = _tables(seed), 6
    ids = _run(decoding.greedy_search, _step_for(tables), max_length).numpy()
    for example, table in enumerate(tables):
        before, previous, expected = START, START, []
        while len(expected) < max_length and previous != END:
            before, previous = previous, int(np.argmax(table[before, previous]))
            expected.append(previous)
        assert [word for word in ids[example] if word != PAD] == expected
    beam, _ = _run(decoding.beam_search, _step_for(tables), max_length, 1)
    np.testing.assert_array_equal(beam.numpy(), ids)


def test_ids_to_words_leaves_out_the_special_ids():
    vocabulary = ["", "[start]", "[end]", "a", "b"]
    ids = tf.constant([[3, 4, 2, 0], [1, 4, 0, 0]], tf.int64)
    assert decoding.ids_to_words(vocabulary, ids, (PAD, START, END)).numpy().tolist() == \
        [b"a b", b"b"]


def test_text_decoder_never_writes_padding_start_or_unknown_words():
    vectorizer = keras.layers.TextVectorization(vocabulary=[text.START, text.END, "yes", "no"])
    decoder = decoding.TextDecoder(vectorizer, text.SequenceLength(5))
    vocabulary = vectorizer.get_vocabulary()
    assert vocabulary[:2] == ["", text.UNKNOWN]
    # Padding, "[UNK]" and "[start]" get the highest logits; "no" is the best word allowed.
    logits = tf.constant([[9.0, 8.0, 7.0, 1.0, 2.0, 3.0]])
    log_probabilities = decoder.next_word(logits).numpy()[0]
    assert vocabulary[int(np.argmax(log_probabilities))] == "no"
    for word in ("", text.UNKNOWN, text.START):
        assert log_probabilities[vocabulary.index(word)] <= decoding.NEVER
    # The words allowed keep their log-probabilities under the full softmax.
    expected = logits.numpy()[0] - np.log(np.exp(logits.numpy()[0]).sum())
    np.testing.assert_allclose(log_probabilities[3:], expected[3:], rtol=1e-5)


def test_headline_shows_the_beam_search_beside_the_baseline():
    report = {"beam_width": 4, "greedy": {"bleu": 1.0, "chrf": 2.0},
              "beam4": {"bleu": 31.26, "chrf": 55.04}, "copy_source": {"bleu": 0.44, "chrf": 15.5}}
    assert decoding.headline(report, (("bleu", "BLEU {:.1f}"), ("chrf", "chrF {:.1f}")),
                             "copy_source", "copying the source sentence") == (
        "BLEU 31.3, chrF 55.0 (beam4)", "copying the source sentence: BLEU 0.4, chrF 15.5")
