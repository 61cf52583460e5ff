"""AveragingAdam: the equal-weight average of sampled weights, against a NumPy mean of the
weights Adam trained, which it leaves as plain Adam trains them."""

import keras
import numpy as np
import pytest

from elman.layers import AveragingAdam

FEATURES = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
TARGETS = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")


def _model(optimizer):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))
    model.compile(optimizer, loss="mse")
    return model


def _averages(model):
    return [average.numpy() for average in model.optimizer._model_variables_moving_average]


def test_average_is_the_mean_of_the_sampled_weights_and_training_is_plain_adam():
    averaging = _model(AveragingAdam(0.05, average_start_step=3, average_every=2))
    plain = _model(keras.optimizers.Adam(0.05))
    trained = []  # The weights after each step, 1-based.
    for step in range(1, 10):
        averaging.train_on_batch(FEATURES, TARGETS)
        plain.train_on_batch(FEATURES, TARGETS)
        trained.append([weight.numpy() for weight in averaging.trainable_weights])
        for mine, theirs in zip(averaging.trainable_weights, plain.trainable_weights):
            np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-7)
        if step < 3:  # Before the start the average follows the weights.
            for average, weight in zip(_averages(averaging), trained[-1]):
                np.testing.assert_array_equal(average, weight)
    sampled = [trained[step - 1] for step in (3, 5, 7, 9)]
    for index, average in enumerate(_averages(averaging)):
        np.testing.assert_allclose(average, np.mean([weights[index] for weights in sampled],
                                                    axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(_averages(averaging)[0], trained[-1][0])


def test_fit_ends_with_the_average_and_validates_it():
    model = _model(AveragingAdam(0.05, average_start_step=4, average_every=1))
    raw = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: raw.append(
        [weight.numpy() for weight in model.trainable_weights]))
    history = model.fit(FEATURES, TARGETS, batch_size=4, epochs=3, verbose=0,
                        validation_data=(FEATURES, TARGETS),
                        callbacks=[record, keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    expected = [np.mean([weights[index] for weights in raw[3:]], axis=0)
                for index in range(len(raw[0]))]
    for weight, average in zip(model.trainable_weights, expected):
        np.testing.assert_allclose(weight.numpy(), average, rtol=1e-5, atol=1e-7)
    # The last validation scored the average, the model fit() leaves.
    assert model.evaluate(FEATURES, TARGETS, verbose=0) == pytest.approx(
        history.history["val_loss"][-1], rel=1e-5)


def test_config_round_trip_and_clear_errors():
    optimizer = AveragingAdam(0.01, average_start_step=7, average_every=3, clipnorm=1.0)
    restored = AveragingAdam.from_config(optimizer.get_config())
    assert (restored.average_start_step, restored.average_every, restored.use_ema,
            restored.clipnorm) == (7, 3, True, 1.0)
    with pytest.raises(ValueError, match="average_every must be a positive integer"):
        AveragingAdam(average_every=0)
    with pytest.raises(ValueError, match="average_start_step must be a non-negative integer"):
        AveragingAdam(average_start_step=-1)
