"""WordDropout: whole words replaced by the unknown-word id, in training only."""

import keras
import numpy as np
import pytest

from elman.layers import WordDropout


def test_replaces_about_rate_of_the_words_and_never_padding():
    ids = np.tile(np.arange(2, 102), (50, 1))  # (50, 100), no padding, no unknown word
    ids[:, 80:] = 0  # padding
    dropped = keras.ops.convert_to_numpy(WordDropout(0.3, seed=1)(ids, training=True))
    words = ids != 0
    replaced = (dropped != ids) & words
    assert np.all(dropped[replaced] == 1)
    assert np.all(dropped[~words] == 0)
    assert replaced.sum() / words.sum() == pytest.approx(0.3, abs=0.02)


def test_identity_at_inference_and_at_rate_zero():
    ids = np.array([[5, 6, 7, 0]])
    np.testing.assert_array_equal(WordDropout(0.9)(ids), ids)
    np.testing.assert_array_equal(WordDropout(0.0)(ids, training=True), ids)


def test_config_round_trip_and_bad_rate():
    layer = WordDropout(0.25, replacement_id=3, seed=7)
    restored = WordDropout.from_config(layer.get_config())
    assert (restored.rate, restored.replacement_id, restored.seed) == (0.25, 3, 7)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), received rate=1.0"):
        WordDropout(1.0)
