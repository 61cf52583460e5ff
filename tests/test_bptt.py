"""elman.bptt: state gradients against finite differences, Jacobian products, W's spectrum, the
callback, truncated BPTT, the long-range tasks and the CLI."""

import json
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from elman import bptt
from elman.bptt import tasks
from elman.bptt.experiments import build_model, run_experiment
from elman.bptt.settings import SETTINGS, ExperimentConfig
from elman.cli import main
from elman.layers import ElmanCell, TruncatedBackprop
from reference import ACTIVATIONS


@pytest.fixture
def float64():
    # Keras fixes its global dtype policy from floatx the first time it is read: restore both,
    # or every model built afterwards in this process computes in float64.
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(policy)


def _weights(cell):
    return (cell.U.numpy(), cell.W.numpy(), cell.b.numpy(), cell.V.numpy(),
            cell.c.numpy())


def _numpy_loss(inputs, targets, weights, activation, perturb_step=None, perturbation=None,
                mask=None, go_backwards=False):
    """The model below in NumPy: an Elman layer with V, MSE loss; `perturbation` is added to
    s_t at `perturb_step` (counted in the order the layer reads the steps)."""
    U, W, b, V, c = weights
    f, _ = ACTIVATIONS[activation]
    if go_backwards:
        inputs = inputs[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    state = np.zeros((inputs.shape[0], W.shape[0]))
    outputs = []
    for t in range(inputs.shape[1]):
        new_state = f(inputs[:, t] @ U + state @ W + b)
        if t == perturb_step:
            new_state = new_state + perturbation
        if mask is not None:
            new_state = np.where(mask[:, t, None], new_state, state)
        state = new_state
        outputs.append(state @ V + c)
    prediction = outputs[-1] if targets.ndim == 2 else np.stack(outputs, 1)
    return np.mean((prediction - targets) ** 2)


def _finite_differences(inputs, targets, weights, activation, units, **kwargs):
    epsilon = 1e-6
    time_steps = inputs.shape[1]
    gradients = np.zeros((inputs.shape[0], time_steps, units))
    for t in range(time_steps):
        for i in range(inputs.shape[0]):
            for j in range(units):
                delta = np.zeros((inputs.shape[0], units))
                delta[i, j] = epsilon
                up = _numpy_loss(inputs, targets, weights, activation, t, delta, **kwargs)
                down = _numpy_loss(inputs, targets, weights, activation, t, -delta, **kwargs)
                gradients[i, t, j] = (up - down) / (2 * epsilon)
    return gradients


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_state_gradients_match_finite_differences(float64, activation):
    rng = np.random.default_rng(0)
    inputs, targets = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 2))
    cell = ElmanCell(4, output_units=2, activation=activation,
                     recurrent_initializer=keras.initializers.Orthogonal(gain=1.2, seed=1))
    model = keras.Sequential([keras.Input((6, 2)), keras.layers.RNN(cell, return_sequences=True)])
    model.compile(loss="mse")
    (result,) = bptt.state_gradients(model, inputs, targets)
    expected = _finite_differences(inputs, targets, _weights(cell), activation, 4)
    np.testing.assert_allclose(result.gradients, expected, rtol=1e-5, atol=1e-9)
    assert np.abs(expected).min(axis=(0, 2)).max() > 0  # every step has a gradient


def test_state_gradients_with_a_mask_and_go_backwards(float64):
    rng = np.random.default_rng(1)
    inputs, targets = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 2))
    inputs[1, 3:] = 0.0  # padding, masked below
    mask = np.abs(inputs).sum(-1) > 0
    cell = ElmanCell(3, output_units=2)
    model = keras.Sequential([keras.Input((5, 3)), keras.layers.Masking(),
                              keras.layers.RNN(cell, go_backwards=True)])
    model.compile(loss="mse")
    (result,) = bptt.state_gradients(model, inputs, targets)
    expected = _finite_differences(inputs, targets, _weights(cell), "tanh", 3, mask=mask,
                                   go_backwards=True)
    np.testing.assert_allclose(result.gradients, expected, rtol=1e-5, atol=1e-9)
    # Read backwards, the padded steps come first, and their gradient is zero.
    np.testing.assert_array_equal(result.mask, mask[:, ::-1])
    assert np.all(result.gradients[1, :2] == 0) and np.all(result.gradients[0] != 0)


def test_jacobian_norms_match_finite_differences(float64):
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(2, 5, 3))
    cell = ElmanCell(4, recurrent_initializer=keras.initializers.Orthogonal(gain=1.5, seed=3))
    layer = keras.layers.RNN(cell, return_sequences=True)
    model = keras.Sequential([keras.Input((5, 3)), layer])
    model.compile(loss="mse")
    (result,) = bptt.state_gradients(model, inputs, np.zeros((2, 5, 4)))
    norms = bptt.jacobian_norms(cell, result.inputs, result.previous_states)
    U, W, b = cell.U.numpy(), cell.W.numpy(), cell.b.numpy()

    def last_state(start, state):
        for t in range(start + 1, 5):
            state = np.tanh(inputs[:, t] @ U + state @ W + b)
        return state

    epsilon = 1e-6
    for t in range(5):
        jacobian = np.zeros((2, 4, 4))  # d s_T / d s_t for each sequence
        for j in range(4):
            delta = np.zeros(4)
            delta[j] = epsilon
            up = last_state(t, result.states[:, t] + delta)
            down = last_state(t, result.states[:, t] - delta)
            jacobian[:, j] = (up - down) / (2 * epsilon)
        np.testing.assert_allclose(norms[:, t], np.linalg.norm(jacobian, ord=2, axis=(1, 2)),
                                   rtol=1e-6)


def test_spectrum_of_W():
    non_normal = np.array([[0.5, 10.0], [0.0, 0.5]])
    assert bptt.spectral_radius(non_normal) == pytest.approx(0.5)
    assert bptt.largest_singular_value(non_normal) == pytest.approx(
        np.sqrt(np.linalg.eigvalsh(non_normal.T @ non_normal).max()))
    rotation = 0.9 * np.array([[0.0, -1.0], [1.0, 0.0]])
    assert bptt.spectral_radius(rotation) == pytest.approx(0.9)


def test_inspect_reports_every_elman_layer_of_a_bidirectional_model():
    inputs = keras.Input((7, 3))
    states = keras.layers.Bidirectional(keras.layers.RNN(ElmanCell(5, name="elman"),
                                                         return_sequences=True))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(
        states)))
    model.compile(loss="mse")
    reports = bptt.inspect(model, np.random.rand(4, 7, 3), np.zeros((4, 1)))
    assert sorted(r.go_backwards for r in reports) == [False, True]
    for report, layer in zip(reports, bptt.elman_layers(model)):
        assert report.gradient_norms.shape == report.jacobian_norms.shape == (7,)
        assert report.jacobian_norms[-1] == pytest.approx(1.0)
        assert report.spectral_radius == pytest.approx(
            np.abs(np.linalg.eigvals(layer.cell.W.numpy())).max(), rel=1e-5)
        assert "spectral radius" in report.summary()


def test_clear_errors():
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no keras.layers.RNN layer with an ElmanCell"):
        bptt.inspect(dense, np.zeros((1, 3)), np.zeros((1, 1)))
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.RNN(ElmanCell(3))])
    with pytest.raises(ValueError, match="not compiled"):
        bptt.inspect(model, np.zeros((1, 4, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="every_n_epochs"):
        bptt.BPTTMonitor(None, None, "logs", every_n_epochs=0)


def test_the_callback_writes_its_scalars_and_image(tmp_path):
    inputs, targets = tasks.adding_problem(64, 8)
    model = keras.Sequential([keras.Input((8, 2)),
                              keras.layers.RNN(ElmanCell(6, output_units=1), name="elman")])
    model.compile("adam", "mse")
    monitor = bptt.BPTTMonitor(inputs[:16], targets[:16], tmp_path)
    model.fit(inputs, targets, epochs=2, verbose=0, callbacks=[monitor])
    values = {}
    for path in (tmp_path / "bptt").glob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                values.setdefault(value.tag, []).append(
                    float(tf.make_ndarray(value.tensor)) if value.metadata.plugin_data.plugin_name
                    == "scalars" else value.tag)
    for name in ("spectral_radius", "largest_singular_value", "gradient_norm_last_step",
                 "gradient_norm_first_step", "gradient_ratio_first_to_last",
                 "jacobian_norm_first_step"):
        assert len(values[f"bptt/elman/{name}"]) == 2, name
    assert "bptt/gradient_norms" in values
    # The last value logged is the trained W's.
    assert values["bptt/elman/spectral_radius"][-1] == pytest.approx(
        bptt.spectral_radius(model.layers[0].cell.W.numpy()), rel=1e-5)


def test_truncated_backprop_cuts_the_gradient_every_k_steps():
    inputs, targets = tasks.adding_problem(4, 12)
    cell = TruncatedBackprop(ElmanCell(5, output_units=1), steps=4)
    model = keras.Sequential([keras.Input((12, 2)), keras.layers.RNN(cell)])
    model.compile(loss="mse")
    (result,) = bptt.state_gradients(model, inputs, targets)
    norms = np.linalg.norm(result.gradients, axis=-1).max(0)
    # Cuts before steps 1, 5, 9 (0-based 0, 4, 8): the loss at step 12 reaches steps 9-12 only.
    assert np.all(norms[:8] == 0) and np.all(norms[8:] > 0)
    # The forward pass is the wrapped cell's, unchanged.
    plain = keras.Sequential([keras.Input((12, 2)), keras.layers.RNN(cell.cell)])
    np.testing.assert_allclose(model(inputs), plain(inputs), rtol=1e-6)
    clone = keras.Sequential.from_config(model.get_config())
    assert clone.layers[0].cell.steps == 4
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        TruncatedBackprop(ElmanCell(2), steps=0)


def test_tasks_follow_their_definitions():
    inputs, targets = tasks.adding_problem(500, 20, seed=3)
    assert inputs.shape == (500, 20, 2) and targets.shape == (500, 1)
    markers = inputs[..., 1]
    assert np.all(markers.sum(1) == 2)
    assert np.all(markers[:, :10].sum(1) == 1) and np.all(markers[:, 10:].sum(1) == 1)
    np.testing.assert_allclose(targets[:, 0], (inputs[..., 0] * markers).sum(1), rtol=1e-6)
    # Always answering 1 scores about 1/6.
    assert np.mean((targets - 1.0) ** 2) == pytest.approx(tasks.ADDING_BASELINE_MSE, abs=0.03)
    np.testing.assert_array_equal(tasks.adding_problem(500, 20, seed=3)[0], inputs)
    assert not np.array_equal(tasks.adding_problem(500, 20, seed=4)[0], inputs)

    inputs, targets = tasks.copy_memory(50, delay=7, seed=1)
    assert inputs.shape == (50, 27, 10) and targets.shape == (50, 27)
    ids = inputs.argmax(-1)
    np.testing.assert_array_equal(targets[:, -10:], ids[:, :10])
    assert np.all(ids[:, 16] == tasks.GO) and np.all(targets[:, :17] == tasks.BLANK)
    assert tasks.copy_accuracy(targets, np.eye(10)[targets]) == 1.0
    with pytest.raises(ValueError, match="sequence_length >= 2"):
        tasks.adding_problem(3, 1)


def test_adding_problem_of_length_10_is_solved_in_seconds(tmp_path):
    config = ExperimentConfig(lengths=(10,), settings=("tanh",))
    started = time.perf_counter()
    results = run_experiment("adding", config, tmp_path, log=lambda line: None)
    seconds = time.perf_counter() - started
    mse = results["tanh@10"]["score"]
    assert mse < tasks.ADDING_BASELINE_MSE / 10, mse
    assert seconds < 60, seconds
    for name in ("results.json", "results.csv", "score_vs_length.png", "gradient_norms.png"):
        assert (tmp_path / name).is_file(), name


def test_experiments_resume_and_refuse_another_recipe(tmp_path, monkeypatch):
    config = ExperimentConfig(lengths=(4,), settings=("irnn", "irnn-noclip"), steps=20)
    run_experiment("copy", config, tmp_path, log=lambda line: None)
    first = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert set(first) == {"irnn@4", "irnn-noclip@4"}
    assert (tmp_path / "loss_curves.png").is_file()

    import elman.bptt.experiments as experiments

    calls = []
    original = experiments.run_one
    monkeypatch.setattr(experiments, "run_one",
                        lambda *args: calls.append(args[:3]) or original(*args))
    more = ExperimentConfig(lengths=(4, 6), settings=("irnn", "irnn-noclip"), steps=20)
    run_experiment("copy", more, tmp_path, log=lambda line: None)
    assert sorted(call[1:] for call in calls) == [("irnn", 6), ("irnn-noclip", 6)]
    with pytest.raises(ValueError, match="another config"):
        run_experiment("copy", ExperimentConfig(lengths=(4,), steps=30), tmp_path)


def test_every_setting_builds_the_model_it_describes():
    config = ExperimentConfig()
    for name, setting in SETTINGS.items():
        model = build_model("adding", setting, 10, config)
        layer = model.layers[0]
        cell = bptt.elman_cell(layer)
        assert cell.activation.__name__ == setting.activation, name
        assert (model.optimizer.clipnorm is not None) == (setting.clipnorm is not None), name
        assert isinstance(layer.cell, TruncatedBackprop) == bool(setting.truncate), name
        if setting.identity_init:
            np.testing.assert_array_equal(cell.W.numpy(), np.eye(config.units))


def test_cli_experiment_and_inspect(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bptt", "experiment", "adding", "--lengths", "6", "--settings", "irnn",
                 "--steps", "20"]) == 0
    output = capsys.readouterr().out
    assert "irnn" in output and "T=6" in output
    assert (tmp_path / "runs/bptt-adding/results.csv").is_file()
    assert main(["bptt", "experiment", "adding", "--lengths", "1"]) == 2
    assert "lengths must be integers >= 2" in capsys.readouterr().err

    assert main(["train", "imdb", "--preset", "smoke", "--set", "epochs=1", "--set", "hidden_units=4",
                 "--bptt"]) == 0
    assert list((tmp_path / "runs/imdb/tensorboard/bptt").glob("events.out.tfevents*"))
    capsys.readouterr()
    assert main(["bptt", "inspect", "runs/imdb", "--batch-size", "8"]) == 0
    output = capsys.readouterr().out
    assert "forward_elman" in output and "backward_elman" in output
    assert (tmp_path / "runs/imdb/bptt.png").stat().st_size > 10000
    assert main(["bptt", "inspect", "nowhere"]) == 2
    assert "not a run directory" in capsys.readouterr().err
