"""Adversarial training on embeddings: the step against an explicit computation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman.layers import (AdversarialModel, ElmanCell, ElmanRNN, EmbeddingPerturbation,
                          StatePooling)

WORD_IDS = np.array([[3, 5, 7, 2, 0, 0], [4, 4, 9, 1, 8, 6], [2, 0, 0, 0, 0, 0]], "int32")
LABELS = np.array([[1.0], [0.0], [1.0]], "float32")


class _NewDrawEachCall(keras.layers.Layer):
    """Stands in for a dropout layer, known draws: in training it adds `shift`, then raises it by
    one, so each forward pass sees different 'noise'."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        self.shift = self.add_weight(shape=(), initializer="zeros", trainable=False, name="shift")

    def call(self, inputs, training=False):
        if not training:
            return inputs
        outputs = inputs + self.shift
        self.shift.assign_add(1.0)
        return outputs


def _model(epsilon, noise=False):
    keras.utils.set_random_seed(0)
    word_ids = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(12, 4, mask_zero=True)(word_ids)
    if noise:
        embedded = _NewDrawEachCall(name="noise")(embedded)
    embedded = EmbeddingPerturbation(name="perturb")(embedded)
    states = ElmanRNN(ElmanCell(3), return_sequences=True)(embedded)
    probability = keras.layers.Dense(1, activation="sigmoid")(StatePooling()(states))
    model = AdversarialModel(word_ids, probability, adversarial_epsilon=epsilon)
    model.compile(keras.optimizers.SGD(1.0), loss="binary_crossentropy")
    return model


def _weights(model):
    return [weight.numpy() for weight in model.trainable_weights]


def test_step_trains_on_the_clean_and_the_perturbed_embeddings():
    # With noise before the perturbation point, the perturbed pass draws new noise. The
    # reference below computes the step from known draws: 0 in the clean pass, 1 in a second.
    epsilon = 0.3
    reference = _model(epsilon, noise=True)
    point, noise = reference.get_layer("perturb"), reference.get_layer("noise")
    loss_function = keras.losses.BinaryCrossentropy()
    embedded = keras.Model(reference.input, point.input)(WORD_IDS).numpy()  # the clean draw, 0

    # The gradient with respect to the embedded words, through a zero perturbation.
    zero = tf.Variable(np.zeros_like(embedded))
    point.perturbation = zero
    with tf.GradientTape(persistent=True) as tape:
        clean_loss = loss_function(LABELS, reference(WORD_IDS, training=True))
    direction = tape.gradient(clean_loss, zero).numpy()
    clean_gradients = tape.gradient(clean_loss, reference.trainable_weights)
    norm = lambda array: np.sqrt((array ** 2).sum(axis=(1, 2), keepdims=True))  # noqa: E731
    perturbation = epsilon * norm(embedded) * direction / norm(direction)
    assert np.abs(perturbation[0, 4:]).max() == 0  # Padding is not perturbed.

    point.perturbation = tf.constant(perturbation)
    noise.shift.assign(1.0)
    with tf.GradientTape() as tape:
        adversarial_loss = loss_function(LABELS, reference(WORD_IDS, training=True))
    adversarial_gradients = tape.gradient(adversarial_loss, reference.trainable_weights)
    point.perturbation = None

    expected = [weight - tf.convert_to_tensor(clean) - tf.convert_to_tensor(adversarial)
                for weight, clean, adversarial in zip(_weights(reference), clean_gradients,
                                                      adversarial_gradients)]
    model = _model(epsilon, noise=True)
    logs = model.train_on_batch(WORD_IDS, LABELS, return_dict=True)
    assert logs["loss"] == pytest.approx(float(clean_loss), rel=1e-5)
    assert float(model.get_layer("noise").shift) == 2.0  # Two forward passes, two draws.
    for trained, wanted in zip(_weights(model), expected):
        np.testing.assert_allclose(trained, wanted, rtol=1e-4, atol=1e-6)


def test_without_epsilon_it_trains_as_a_plain_model():
    model = _model(0.0)
    plain = keras.Model(model.input, model.output)
    plain.compile(keras.optimizers.SGD(1.0), loss="binary_crossentropy")
    plain.set_weights(model.get_weights())
    model.train_on_batch(WORD_IDS, LABELS)
    before = _weights(plain)
    plain.train_on_batch(WORD_IDS, LABELS)
    for trained, wanted in zip(_weights(model), _weights(plain)):
        np.testing.assert_allclose(trained, wanted, rtol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(before, _weights(plain)))


def test_round_trip_keeps_epsilon_and_predictions(tmp_path):
    model = _model(0.25)
    model.fit(WORD_IDS, LABELS, epochs=2, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, AdversarialModel) and loaded.adversarial_epsilon == 0.25
    np.testing.assert_allclose(loaded.predict(WORD_IDS, verbose=0),
                               model.predict(WORD_IDS, verbose=0), rtol=1e-6)


def test_bad_settings_are_clear():
    word_ids = keras.Input((None,), dtype="int32")
    output = keras.layers.Dense(1)(keras.layers.Embedding(5, 2)(word_ids))
    with pytest.raises(ValueError, match="needs an EmbeddingPerturbation layer"):
        AdversarialModel(word_ids, output, adversarial_epsilon=0.1)
    with pytest.raises(ValueError, match="adversarial_epsilon must be >= 0"):
        AdversarialModel(word_ids, output, adversarial_epsilon=-1.0)
