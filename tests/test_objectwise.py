"""ObjectwiseCell: one recurrent cell stepped on each object apart, against a NumPy loop."""

import keras
import numpy as np
import pytest

from elman.layers import ElmanCell, ObjectwiseCell


def test_steps_the_elman_equations_on_each_object_with_the_same_weights(tmp_path):
    keras.utils.set_random_seed(0)
    cell = ObjectwiseCell(ElmanCell(8, output_units=3, output_activation="relu"), objects=2)
    layer = keras.layers.RNN(cell, return_sequences=True)
    features = np.random.default_rng(0).normal(size=(3, 5, 2 * 4)).astype("float32")
    outputs = layer(features).numpy()
    assert outputs.shape == (3, 5, 2 * 3) and cell.cell.U.shape == (4, 8)
    # The reference: a NumPy loop of s_t = tanh(U x_t + W s_{t-1} + b), o_t = relu(V s_t + c)
    # on each object's features alone.
    W, U, V = (weight.numpy() for weight in (cell.cell.W, cell.cell.U, cell.cell.V))
    b, c = cell.cell.b.numpy(), cell.cell.c.numpy()
    for k in range(2):
        state = np.zeros((3, 8), "float32")
        for t in range(5):
            state = np.tanh(features[:, t, 4 * k:4 * k + 4] @ U + state @ W + b)
            np.testing.assert_allclose(outputs[:, t, 3 * k:3 * k + 3],
                                       np.maximum(state @ V + c, 0), atol=1e-5)
    # Swapping the objects swaps the outputs: neither reads the other.
    swapped = np.concatenate([features[..., 4:], features[..., :4]], -1)
    np.testing.assert_allclose(layer(swapped).numpy(),
                               np.concatenate([outputs[..., 3:], outputs[..., :3]], -1),
                               atol=1e-5)
    # A multi-state cell (an LSTM) has one state of each kind per object.
    lstm = ObjectwiseCell(keras.layers.LSTMCell(6), objects=2)
    assert lstm.state_size == [(2, 6), (2, 6)] and lstm.output_size == 12
    assert keras.layers.RNN(lstm)(features).shape == (3, 12)
    # The config round trip keeps the inner cell.
    restored = ObjectwiseCell.from_config(cell.get_config())
    assert restored.objects == 2 and isinstance(restored.cell, ElmanCell)


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="needs a multiple of 2 input features"):
        ObjectwiseCell(ElmanCell(4), 2).build((None, 5))
    with pytest.raises(ValueError, match="objects must be >= 1"):
        ObjectwiseCell(ElmanCell(4), 0)
