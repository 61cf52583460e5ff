"""ElmanCell against NumPy references and against Keras's own SimpleRNN."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman.layers import ElmanCell
from reference import elman_backward, elman_forward

BATCH, TIME, INPUT_DIM, UNITS, OUTPUT_UNITS = 3, 7, 5, 4, 2


def _random_inputs(seed=0, dtype="float32"):
    return np.random.default_rng(seed).normal(size=(BATCH, TIME, INPUT_DIM)).astype(dtype)


def _weights(cell):
    """The cell's weights as NumPy arrays, by their Elman names."""
    return {
        "U": cell.U.numpy(), "W": cell.W.numpy(), "b": cell.b.numpy(),
        "V": None if cell.V is None else cell.V.numpy(),
        "c": None if cell.c is None else cell.c.numpy(),
    }


# The forward pass.

@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("output_units,output_activation", [(None, "linear"),
                                                            (OUTPUT_UNITS, "linear"),
                                                            (OUTPUT_UNITS, "sigmoid")])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_numpy_loop(activation, output_units, output_activation, masked):
    inputs = _random_inputs()
    mask = None
    if masked:
        mask = np.ones((BATCH, TIME), bool)
        mask[0, 4:] = False  # padding at the end
        mask[1, :2] = False  # padding at the start: the output stays zero until step 2
    cell = ElmanCell(UNITS, output_units=output_units, activation=activation,
                     output_activation=output_activation, bias_initializer="random_normal",
                     output_bias_initializer="random_normal")
    layer = keras.layers.RNN(cell, return_sequences=True, return_state=True)
    outputs, final_state = layer(inputs, mask=mask)
    expected = elman_forward(inputs, activation=activation,
                             output_activation=output_activation, mask=mask, **_weights(cell))
    np.testing.assert_allclose(outputs, expected["outputs"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final_state, expected["states"][:, -1], rtol=1e-5, atol=1e-6)
    assert outputs.shape == (BATCH, TIME, output_units or UNITS)


def test_initial_state_is_zero_unless_given():
    inputs = _random_inputs()
    cell = ElmanCell(UNITS, output_units=OUTPUT_UNITS)
    layer = keras.layers.RNN(cell, return_sequences=True)
    layer(inputs)
    initial_state = np.random.default_rng(1).normal(size=(BATCH, UNITS)).astype("float32")
    outputs = layer(inputs, initial_state=[initial_state])
    expected = elman_forward(inputs, initial_state=initial_state, **_weights(cell))
    np.testing.assert_allclose(outputs, expected["outputs"], rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer(inputs), outputs)


# Backpropagation through time.

@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("output_activation", ["linear", "sigmoid"])
def test_gradients_match_numpy_bptt(activation, output_activation):
    inputs = tf.Variable(_random_inputs(dtype="float64"))
    targets = np.random.default_rng(2).normal(size=(BATCH, TIME, OUTPUT_UNITS))
    cell = ElmanCell(UNITS, output_units=OUTPUT_UNITS, activation=activation,
                     output_activation=output_activation, dtype="float64",
                     bias_initializer="random_normal", output_bias_initializer="random_normal")
    layer = keras.layers.RNN(cell, return_sequences=True, dtype="float64")
    layer.build(inputs.shape)
    with tf.GradientTape() as tape:
        outputs = layer(inputs)
        # A loss summed over all steps: L = sum_t 0.5 * ||o_t - y_t||^2.
        loss = 0.5 * tf.reduce_sum((outputs - targets) ** 2)
    sources = {"U": cell.U, "W": cell.W, "b": cell.b, "V": cell.V, "c": cell.c, "inputs": inputs}
    keras_grads = dict(zip(sources, tape.gradient(loss, list(sources.values()))))

    weights = _weights(cell)
    forward = elman_forward(inputs.numpy(), activation=activation,
                            output_activation=output_activation, **weights)
    numpy_grads = elman_backward(inputs.numpy(), forward=forward,
                                 output_gradients=forward["outputs"] - targets,
                                 activation=activation, output_activation=output_activation,
                                 **weights)
    for name in sources:
        np.testing.assert_allclose(keras_grads[name], numpy_grads[name], rtol=1e-5, atol=1e-12,
                                   err_msg=f"dL/d{name}")


# A drop-in replacement for SimpleRNNCell.

def _copy_weights(source_cell, target_cell):
    for target, source in zip(target_cell.weights, source_cell.weights):
        target.assign(source)


PARITY_MODES = {
    "return_sequences": dict(return_sequences=True),
    "return_state": dict(return_sequences=True, return_state=True),
    "go_backwards": dict(return_sequences=True, go_backwards=True),
    "unroll": dict(return_sequences=True, unroll=True),
    "relu_no_bias": dict(activation="relu", use_bias=False),
    "sigmoid": dict(activation="sigmoid", return_sequences=True),
}


@pytest.mark.parametrize("mode", sorted(PARITY_MODES))
@pytest.mark.parametrize("masked", [False, True])
def test_parity_with_simple_rnn(mode, masked):
    kwargs = dict(PARITY_MODES[mode])
    cell_kwargs = {k: kwargs.pop(k) for k in ("activation", "use_bias") if k in kwargs}
    inputs = _random_inputs()
    mask = None
    if masked:
        mask = np.ones((BATCH, TIME), bool)
        mask[0, 5:] = False
    ours = keras.layers.RNN(ElmanCell(UNITS, **cell_kwargs), **kwargs)
    theirs = keras.layers.SimpleRNN(UNITS, **cell_kwargs, **kwargs)
    ours.build(inputs.shape)
    theirs.build(inputs.shape)
    _copy_weights(theirs.cell, ours.cell)
    assert ours.cell.V is None
    for a, b in zip(tf.nest.flatten(ours(inputs, mask=mask)),
                    tf.nest.flatten(theirs(inputs, mask=mask))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_parity_with_simple_rnn_initial_state():
    inputs = _random_inputs()
    initial_state = np.random.default_rng(3).normal(size=(BATCH, UNITS)).astype("float32")
    ours = keras.layers.RNN(ElmanCell(UNITS), return_sequences=True)
    theirs = keras.layers.SimpleRNN(UNITS, return_sequences=True)
    ours.build(inputs.shape)
    theirs.build(inputs.shape)
    _copy_weights(theirs.cell, ours.cell)
    np.testing.assert_allclose(ours(inputs, initial_state=[initial_state]),
                               theirs(inputs, initial_state=[initial_state]), rtol=1e-6, atol=1e-6)


def test_parity_with_simple_rnn_stateful():
    inputs = _random_inputs()
    ours = keras.layers.RNN(ElmanCell(UNITS), stateful=True, return_sequences=True)
    theirs = keras.layers.SimpleRNN(UNITS, stateful=True, return_sequences=True)
    ours.build(inputs.shape)
    theirs.build(inputs.shape)
    _copy_weights(theirs.cell, ours.cell)
    first = ours(inputs)
    second = ours(inputs)  # continues from the state the first call left
    np.testing.assert_allclose(first, theirs(inputs), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(second, theirs(inputs), rtol=1e-6, atol=1e-6)
    assert not np.allclose(first, second)
    ours.reset_states()
    np.testing.assert_allclose(ours(inputs), first, rtol=1e-6, atol=1e-6)


def test_parity_with_simple_rnn_dropout_in_training():
    inputs = _random_inputs()
    kwargs = dict(dropout=0.3, recurrent_dropout=0.4, seed=7)
    ours = keras.layers.RNN(ElmanCell(UNITS, **kwargs), return_sequences=True)
    theirs = keras.layers.SimpleRNN(UNITS, return_sequences=True, **kwargs)
    ours.build(inputs.shape)
    theirs.build(inputs.shape)
    _copy_weights(theirs.cell, ours.cell)
    trained = ours(inputs, training=True)
    np.testing.assert_allclose(trained, theirs(inputs, training=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours(inputs), theirs(inputs), rtol=1e-6, atol=1e-6)
    assert not np.allclose(trained, ours(inputs))  # dropout did act


def test_parity_with_simple_rnn_bidirectional():
    inputs = _random_inputs()
    ours = keras.layers.Bidirectional(keras.layers.RNN(ElmanCell(UNITS), return_sequences=True))
    theirs = keras.layers.Bidirectional(keras.layers.SimpleRNN(UNITS, return_sequences=True))
    ours.build(inputs.shape)
    theirs.build(inputs.shape)
    _copy_weights(theirs.forward_layer.cell, ours.forward_layer.cell)
    _copy_weights(theirs.backward_layer.cell, ours.backward_layer.cell)
    np.testing.assert_allclose(ours(inputs), theirs(inputs), rtol=1e-6, atol=1e-6)


# Weights, initializers and validation.

def test_W_U_V_are_the_keras_variables():
    cell = ElmanCell(UNITS, output_units=OUTPUT_UNITS)
    cell.build((None, INPUT_DIM))
    assert cell.W is cell.recurrent_kernel and tuple(cell.W.shape) == (UNITS, UNITS)
    assert cell.U is cell.kernel and tuple(cell.U.shape) == (INPUT_DIM, UNITS)
    assert cell.V is cell.output_kernel and tuple(cell.V.shape) == (UNITS, OUTPUT_UNITS)
    assert tuple(cell.c.shape) == (OUTPUT_UNITS,)
    assert {id(v) for v in cell.trainable_weights} == {id(cell.U), id(cell.W), id(cell.b),
                                                       id(cell.V), id(cell.c)}
    plain = ElmanCell(UNITS)
    plain.build((None, INPUT_DIM))
    assert plain.V is None and plain.c is None and len(plain.weights) == 3


def test_recurrent_initializers_orthogonal_and_scaled_identity():
    orthogonal = ElmanCell(8)
    orthogonal.build((None, 3))
    W = orthogonal.W.numpy()
    np.testing.assert_allclose(W.T @ W, np.eye(8), atol=1e-5)
    irnn = ElmanCell(8, activation="relu",
                     recurrent_initializer=keras.initializers.Identity(gain=0.5))
    irnn.build((None, 3))
    np.testing.assert_array_equal(irnn.W.numpy(), 0.5 * np.eye(8))


@pytest.mark.parametrize("kwargs,argument", [
    (dict(units=0), "units"),
    (dict(units=-3), "units"),
    (dict(units=2.5), "units"),
    (dict(units=4, activation="no_such_activation"), "activation"),
    (dict(units=4, output_activation="no_such_activation"), "output_activation"),
    (dict(units=4, output_units=0), "output_units"),
    (dict(units=4, output_units="3"), "output_units"),
])
def test_bad_arguments_name_the_argument_and_value(kwargs, argument):
    with pytest.raises(ValueError, match=rf"\b{argument} must be .* received {argument}="):
        ElmanCell(**kwargs)


# Serialization, export, mixed precision and XLA.

def _model(output_units=OUTPUT_UNITS):
    inputs = keras.Input((TIME, INPUT_DIM))
    outputs = keras.layers.RNN(
        ElmanCell(UNITS, output_units=output_units, activation="relu",
                  output_activation="softmax", recurrent_initializer=keras.initializers.Identity(0.9)),
        return_sequences=True)(inputs)
    return keras.Model(inputs, outputs)


def test_config_round_trip():
    cell = ElmanCell(UNITS, output_units=OUTPUT_UNITS, activation="relu",
                     output_activation="softmax", use_output_bias=False, dropout=0.2)
    config = cell.get_config()
    restored = ElmanCell.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    assert restored.output_units == OUTPUT_UNITS and restored.use_output_bias is False
    layer_config = keras.layers.serialize(keras.layers.RNN(cell))
    assert layer_config["config"]["cell"]["registered_name"] == "elman>ElmanCell"
    assert isinstance(keras.layers.deserialize(layer_config).cell, ElmanCell)


def test_keras_file_round_trip_is_identical(tmp_path):
    model = _model()
    inputs = _random_inputs()
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.layers[1].cell, ElmanCell)
    np.testing.assert_array_equal(restored.predict(inputs, verbose=0),
                                  model.predict(inputs, verbose=0))


def test_export_reloads_without_elman(tmp_path):
    model = _model()
    inputs = _random_inputs()
    np.save(tmp_path / "inputs.npy", inputs)
    model.export(str(tmp_path / "saved_model"), verbose=False)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(tmp_path / "saved_model")!r})
        outputs = loaded.serve(np.load({str(tmp_path / "inputs.npy")!r}))
        np.save({str(tmp_path / "outputs.npy")!r}, outputs.numpy())
        assert not any(name.startswith("elman") for name in sys.modules), "elman was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    np.testing.assert_allclose(np.load(tmp_path / "outputs.npy"),
                               model.predict(inputs, verbose=0), rtol=1e-6, atol=1e-6)


def test_mixed_precision_trains():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _model()
        cell = model.layers[1].cell
        assert cell.compute_dtype == "float16" and cell.W.dtype == "float32"
        assert model(_random_inputs()).dtype == "float16"
        model.compile("adam", "categorical_crossentropy")
        targets = np.eye(OUTPUT_UNITS)[np.zeros((BATCH, TIME), int)]
        history = model.fit(_random_inputs(), targets, epochs=2, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_xla_compiled_matches_eager():
    model = _model()
    inputs = _random_inputs()
    eager = model.predict(inputs, verbose=0)
    model.compile("sgd", "mse", jit_compile=True)
    np.testing.assert_allclose(model.predict(inputs, verbose=0), eager, rtol=1e-5, atol=1e-6)
    before = [w.numpy() for w in model.weights]
    model.fit(inputs, np.ones((BATCH, TIME, OUTPUT_UNITS)) / OUTPUT_UNITS, verbose=0)
    assert all(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))
