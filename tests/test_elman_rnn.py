"""ElmanRNN: the fast path gives keras.layers.RNN(ElmanCell)'s outputs and gradients in every mode
the apps use, compiles with XLA, round-trips, and falls back where it does not apply."""

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman import bptt
from elman.layers import ElmanCell, ElmanRNN

TIME, FEATURES = 7, 4


def _inputs(masked):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(3, TIME, FEATURES)).astype("float32")
    if masked:
        inputs[1, 5:] = 0.0  # padding at the end
        inputs[2, :2] = 0.0  # and at the start
    return inputs


def _twin_models(cell_kwargs, layer_kwargs, masked, wrap=None, fast_path=True):
    """The same network twice: with keras.layers.RNN and with ElmanRNN, sharing weights."""
    models = []
    for layer_class in (keras.layers.RNN, ElmanRNN):
        inputs = keras.Input((TIME, FEATURES))
        hidden = keras.layers.Masking()(inputs) if masked else inputs
        extra = {"fast_path": fast_path} if layer_class is ElmanRNN else {}
        layer = layer_class(ElmanCell(5, **cell_kwargs), **layer_kwargs, **extra)
        if wrap:
            layer = wrap(layer)
        models.append(keras.Model(inputs, layer(hidden)))
    models[1].set_weights(models[0].get_weights())
    return models


def _outputs_and_gradients(model, inputs, training=False):
    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = tf.nest.flatten(model(inputs, training=training))
        # A loss that weighs every output entry differently.
        loss = sum(tf.reduce_sum(tf.sin(output * 1.3 + 0.2)) for output in outputs)
    gradients = tape.gradient(loss, [inputs, *model.trainable_weights])
    return [o.numpy() for o in outputs], [g.numpy() for g in gradients]


def _assert_same(reference, candidate, inputs, training=False):
    expected_outputs, expected_gradients = _outputs_and_gradients(reference, inputs, training)
    outputs, gradients = _outputs_and_gradients(candidate, inputs, training)
    assert len(outputs) == len(expected_outputs)
    for output, expected in zip(outputs, expected_outputs):
        np.testing.assert_allclose(output, expected, rtol=1e-5, atol=1e-6)
    for gradient, expected in zip(gradients, expected_gradients):
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)


CELLS = {
    "tanh": {},
    "relu+V": {"activation": "relu", "output_units": 3},
    "sigmoid+softmax V": {"activation": "sigmoid", "output_units": 3,
                          "output_activation": "softmax"},
    "elu (f' recomputed)": {"activation": "elu", "output_units": 2},
    "no biases": {"use_bias": False, "output_units": 2, "use_output_bias": False},
}
LAYERS = {
    "last": {},
    "sequences": {"return_sequences": True},
    "state": {"return_sequences": True, "return_state": True},
    "backwards": {"go_backwards": True, "return_sequences": True},
    "backwards last+state": {"go_backwards": True, "return_state": True},
    "zero output for mask": {"return_sequences": True, "zero_output_for_mask": True},
}


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("layer_kwargs", LAYERS.values(), ids=LAYERS.keys())
@pytest.mark.parametrize("cell_kwargs", CELLS.values(), ids=CELLS.keys())
def test_same_outputs_and_gradients_as_keras_rnn(cell_kwargs, layer_kwargs, masked):
    reference, fast = _twin_models(cell_kwargs, layer_kwargs, masked)
    _assert_same(reference, fast, _inputs(masked))


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_bidirectional(masked):
    wrap = lambda layer: keras.layers.Bidirectional(layer)  # noqa: E731
    reference, fast = _twin_models({"output_units": 2}, {"return_sequences": True}, masked,
                                   wrap=wrap)
    _assert_same(reference, fast, _inputs(masked))


def test_initial_state():
    models = []
    for layer_class in (keras.layers.RNN, ElmanRNN):
        sequences, state = keras.Input((TIME, FEATURES)), keras.Input((5,))
        masked = keras.layers.Masking()(sequences)
        outputs = layer_class(ElmanCell(5, output_units=2), return_sequences=True)(
            masked, initial_state=state)
        models.append(keras.Model([sequences, state], outputs))
    models[1].set_weights(models[0].get_weights())
    inputs = [_inputs(True), np.random.default_rng(1).normal(size=(3, 5)).astype("float32")]
    expected = models[0](inputs).numpy()
    np.testing.assert_allclose(models[1](inputs).numpy(), expected, rtol=1e-6, atol=1e-6)
    with tf.GradientTape(persistent=True) as tape:
        losses = [tf.reduce_sum(tf.sin(model(inputs))) for model in models]
    for a, b in zip(tape.gradient(losses[0], models[0].trainable_weights),
                    tape.gradient(losses[1], models[1].trainable_weights)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_input_dropout_in_training_uses_the_cells_mask():
    reference, fast = _twin_models({"dropout": 0.4, "seed": 7}, {"return_sequences": True},
                                   masked=True)
    _assert_same(reference, fast, _inputs(True), training=True)
    # Dropout is active: training and inference differ.
    assert not np.allclose(fast(_inputs(True), training=True), fast(_inputs(True)))


@pytest.mark.parametrize("case", ["recurrent dropout", "unroll", "softmax state", "switched off"])
def test_falls_back_to_the_plain_loop(case, monkeypatch):
    cell_kwargs, layer_kwargs, fast_path = {}, {"return_sequences": True}, True
    if case == "recurrent dropout":
        cell_kwargs = {"recurrent_dropout": 0.3, "seed": 3}
    elif case == "unroll":
        layer_kwargs["unroll"] = True
    elif case == "softmax state":
        cell_kwargs = {"activation": "softmax"}
    else:
        fast_path = False
    reference, fast = _twin_models(cell_kwargs, layer_kwargs, masked=True, fast_path=fast_path)
    import elman.layers.elman_rnn as module

    calls = []
    original = module._recurrence
    monkeypatch.setattr(module, "_recurrence", lambda *args: calls.append(1) or original(*args))
    _assert_same(reference, fast, _inputs(True), training=True)
    assert not calls  # the plain loop ran


def test_dynamic_time_dimension():
    layer = ElmanRNN(ElmanCell(4, output_units=2), return_sequences=True)
    reference = keras.layers.RNN(ElmanCell(4, output_units=2), return_sequences=True)
    inputs = keras.Input((None, FEATURES))
    models = [keras.Model(inputs, reference(inputs)), keras.Model(inputs, layer(inputs))]
    models[1].set_weights(models[0].get_weights())
    for time_steps in (1, 9, 16):
        sequences = np.random.default_rng(time_steps).normal(
            size=(2, time_steps, FEATURES)).astype("float32")
        _assert_same(*models, sequences)


@pytest.mark.parametrize("time_steps", [None, 12])
def test_static_shapes_in_a_graph(time_steps):
    # Layers after the recurrence (Dense on the final state, as the translation encoder has)
    # need the static shapes of outputs and states in a graph traced with unknown sizes.
    layer = ElmanRNN(ElmanCell(4, output_units=2), return_sequences=True, return_state=True)
    layer.build((None, None, FEATURES))

    @tf.function(input_signature=[tf.TensorSpec([None, time_steps, FEATURES])])
    def shapes(sequences):
        outputs, state = layer(sequences)
        assert outputs.shape.as_list() == [None, time_steps, 2]
        assert state.shape.as_list() == [None, 4]
        return state

    assert shapes(tf.zeros((3, 12, FEATURES))).shape == (3, 4)


def test_the_fast_path_is_taken(monkeypatch):
    import elman.layers.elman_rnn as module

    calls = []
    original = module._recurrence
    monkeypatch.setattr(module, "_recurrence", lambda *args: calls.append(1) or original(*args))
    ElmanRNN(ElmanCell(3))(_inputs(False))
    assert calls == [1]


def test_other_cells_run_in_keras_loop(monkeypatch):
    import elman.layers.elman_rnn as module

    calls = []
    monkeypatch.setattr(module, "_recurrence", lambda *args: calls.append(1))
    # A cell without an activation attribute (a GRU cell has one, a wrapper may not).
    cell = keras.layers.StackedRNNCells([keras.layers.SimpleRNNCell(3)])
    outputs = ElmanRNN(cell, return_sequences=True)(_inputs(False))
    reference = keras.layers.RNN(cell, return_sequences=True)(_inputs(False))
    assert calls == []
    np.testing.assert_allclose(outputs, reference, rtol=1e-6)


def test_xla_training_step_matches():
    reference, fast = _twin_models({"output_units": 2}, {"return_sequences": True}, True)
    targets = np.random.default_rng(2).normal(size=(3, TIME, 2)).astype("float32")
    for model in (reference, fast):
        model.compile(keras.optimizers.SGD(0.1), "mse", jit_compile=True)
        model.train_on_batch(_inputs(True), targets)
    for a, b in zip(reference.get_weights(), fast.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_keras_file_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((TIME, FEATURES)),
                              ElmanRNN(ElmanCell(4, output_units=2), return_sequences=True,
                                       fast_path=False)])
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    layer = loaded.layers[0]
    assert isinstance(layer, ElmanRNN) and isinstance(layer.cell, ElmanCell)
    assert layer.fast_path is False and layer.cell.V is not None
    np.testing.assert_array_equal(loaded(_inputs(False)), model(_inputs(False)))


def test_bptt_sees_every_step_of_the_fast_layer():
    reference, fast = _twin_models({"output_units": 1}, {}, masked=True)
    targets = np.ones((3, 1), "float32")
    for model in (reference, fast):
        model.compile(loss="mse")
    (expected,), (report,) = bptt.inspect(reference, _inputs(True), targets), bptt.inspect(
        fast, _inputs(True), targets)
    np.testing.assert_allclose(report.gradient_norms, expected.gradient_norms, rtol=1e-5)
    assert fast.layers[-1].fast_path is True  # switched back on after the inspection


# 16, 12, 10: blocks of 8, 6 and 5 steps per loop iteration (a dynamic length is padded).
@pytest.mark.parametrize("time_steps", [16, 12, 10])
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_several_steps_per_loop_iteration(time_steps, masked):
    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(2, time_steps, FEATURES)).astype("float32")
    if masked:
        inputs[0, time_steps - 5:] = 0.0
    models = []
    for layer_class in (keras.layers.RNN, ElmanRNN):
        sequences = keras.Input((time_steps, FEATURES))
        hidden = keras.layers.Masking()(sequences) if masked else sequences
        layer = keras.layers.Bidirectional(layer_class(ElmanCell(5, output_units=3),
                                                       return_sequences=True))
        models.append(keras.Model(sequences, layer(hidden)))
    models[1].set_weights(models[0].get_weights())
    _assert_same(*models, inputs)


def test_speed_benchmark_reports_the_median_of_process_runs(tmp_path):
    """`recurrence_speed.py --processes 2`: two fresh processes, each one's rows kept, and a
    summary whose medians are those of the runs' own figures."""
    script = Path(__file__).parent.parent / "benchmarks" / "recurrence_speed.py"
    output = tmp_path / "rows.json"
    finished = subprocess.run(
        [sys.executable, str(script), "--batch", "2", "--time", "8", "--units", "4",
         "--repeats", "1", "--layers", "elman_rnn", "keras_simple_rnn", "--processes", "2",
         "--output", str(output)],
        capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads(output.read_text())["process_runs"]
    assert len(runs) == 2 and all(len(rows) == 1 for rows in runs)
    assert finished.stdout.count("--- process run") == 2
    ratios = [rows[0]["elman_rnn"]["train_speedup"] for rows in runs]
    summary = next(line for line in finished.stdout.splitlines()
                   if line.strip().startswith("elman_rnn") and "median" in line)
    assert f"x {ratios[0]:.2f} / {ratios[1]:.2f}: median {np.median(ratios):.2f} train" in summary
