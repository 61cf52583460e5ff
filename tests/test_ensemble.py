"""Ensembles inside one model: the average, the per-member loss, and that each member trains
exactly as it would alone (with adversarial training, one perturbation per member)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman.layers import (AdversarialModel, ElmanCell, ElmanRNN, EmbeddingPerturbation,
                          EnsembleAverage, StatePooling,
                          ensemble_binary_crossentropy)

WORD_IDS = np.array([[3, 5, 7, 2, 0, 0], [4, 4, 9, 1, 8, 6], [2, 0, 0, 0, 0, 0]], "int32")
LABELS = np.array([1.0, 0.0, 1.0], "float32")


def test_average_is_the_mean_at_inference_and_every_member_in_training():
    members = [np.array([[0.2], [0.9]], "float32"), np.array([[0.6], [0.3]], "float32"),
               np.array([[0.1], [0.0]], "float32")]
    average = EnsembleAverage()
    np.testing.assert_allclose(average(members), [[0.3], [0.4]], rtol=1e-6)
    np.testing.assert_allclose(average(members, training=True),
                               np.concatenate(members, axis=-1))
    assert average.compute_output_shape([(None, 1)] * 3) == (None, 1)


def test_loss_is_the_mean_of_the_members_cross_entropies():
    probabilities = np.array([[0.2, 0.7], [0.9, 0.4], [0.5, 0.99]], "float32")
    expected = np.mean([-(LABELS * np.log(probabilities[:, member])
                          + (1 - LABELS) * np.log(1 - probabilities[:, member]))
                        for member in range(2)], axis=0)
    for labels in (LABELS, LABELS[:, None]):
        np.testing.assert_allclose(ensemble_binary_crossentropy(labels, probabilities),
                                   expected, rtol=1e-5)
    # One member: Keras's binary cross-entropy.
    np.testing.assert_allclose(
        ensemble_binary_crossentropy(LABELS, probabilities[:, :1]),
        keras.losses.binary_crossentropy(LABELS[:, None], probabilities[:, :1]), rtol=1e-6)


def _member(word_ids, suffix):
    embedded = keras.layers.Embedding(12, 4, mask_zero=True, name="embed" + suffix)(word_ids)
    embedded = EmbeddingPerturbation(name="perturb" + suffix)(embedded)
    states = ElmanRNN(ElmanCell(3), return_sequences=True, name="elman" + suffix)(embedded)
    return keras.layers.Dense(1, activation="sigmoid", name="probability" + suffix)(
        StatePooling(name="pool" + suffix)(states))


def _member_layers(model, suffix):
    return [model.get_layer(name + suffix) for name in ("embed", "elman", "probability")]


@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_each_member_trains_as_it_would_alone(epsilon):
    keras.utils.set_random_seed(0)
    word_ids = keras.Input((None,), dtype="int32")
    suffixes = ["_a", "_b"]
    ensemble = AdversarialModel(
        word_ids, EnsembleAverage()([_member(word_ids, suffix) for suffix in suffixes]),
        adversarial_epsilon=epsilon)
    # The ensemble's loss is the mean over its two members: SGD at 1.0 moves each member as
    # SGD at 0.5 moves it alone.
    ensemble.compile(keras.optimizers.SGD(1.0), loss=ensemble_binary_crossentropy)
    alone = []
    for suffix in suffixes:
        inputs = keras.Input((None,), dtype="int32")
        model = AdversarialModel(inputs, _member(inputs, suffix), adversarial_epsilon=epsilon)
        model.compile(keras.optimizers.SGD(0.5), loss="binary_crossentropy")
        for mine, theirs in zip(_member_layers(model, suffix),
                                _member_layers(ensemble, suffix)):
            mine.set_weights(theirs.get_weights())
        alone.append(model)
    before = [weight.numpy() for weight in ensemble.trainable_weights]

    ensemble.train_on_batch(WORD_IDS, LABELS)
    for model in alone:
        model.train_on_batch(WORD_IDS, LABELS)
    for suffix, model in zip(suffixes, alone):
        for mine, theirs in zip(_member_layers(model, suffix),
                                _member_layers(ensemble, suffix)):
            for trained_alone, trained_together in zip(mine.get_weights(),
                                                       theirs.get_weights()):
                np.testing.assert_allclose(trained_together, trained_alone,
                                           rtol=1e-4, atol=1e-6)
    assert all(not np.allclose(old, new.numpy())
               for old, new in zip(before, ensemble.trainable_weights))
