"""The next-frame app on synthetic shapes: generator, splits, the rollout against NumPy,
training on the tracks, export, CLI."""

import gzip
import importlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import app_checks
from elman.apps import get_app
from elman.apps.nextframe import tracker
from elman.cli import main
from elman.datasets import moving_mnist
from elman.layers import ElmanCell, ObjectwiseCell
from test_nextframe_tracker import _bilinear_translation

app = get_app("nextframe")
INPUT_FRAMES = app.SMOKE.input_frames


@pytest.fixture(scope="module")
def data():
    return app.load_data(app.SMOKE)


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(0)
    model = app.build_model(app.SMOKE, data)
    model.fit(data.train.take(4), verbose=0)  # Trained a little: outputs are not all alike.
    return model


def _frames(data, count=4):
    inputs, _ = next(iter(data.validation))
    return inputs[:count, :INPUT_FRAMES].numpy()


# The generator.

def test_sequences_are_deterministic_bounded_and_moving():
    digits = moving_mnist.synthetic_shapes(10)
    first = moving_mnist.moving_sequence(digits, 3, seed=5)
    np.testing.assert_array_equal(first, moving_mnist.moving_sequence(digits, 3, seed=5))
    assert not np.array_equal(first, moving_mnist.moving_sequence(digits, 4, seed=5))
    assert first.shape == (20, 64, 64) and first.dtype == np.uint8
    # Two shapes, always whole inside the frame (they bounce), and they move.
    ink = (first > 0).sum(axis=(1, 2))
    assert ink.min() > 0 and ink.max() <= 2 * (first[0] > 0).sum()
    assert not np.array_equal(first[0], first[1])
    batch = moving_mnist.moving_sequences(digits, [3, 4], seed=5)
    np.testing.assert_array_equal(batch[0], first)
    # Where each shape was drawn: the frame is the shapes at those corners, by their maximum.
    same, corners = moving_mnist.moving_sequence(digits, 3, seed=5, return_positions=True)
    np.testing.assert_array_equal(same, first)
    assert corners.shape == (20, 2, 2) and corners.min() >= 0 and corners.max() <= 36
    generator = np.random.default_rng([5, 3])
    chosen = [generator.integers(len(digits))]
    generator.uniform(size=3)  # the first shape's position and angle
    chosen.append(generator.integers(len(digits)))
    images = [digits[index] for index in chosen]
    # Which images were drawn, after the corners.
    _, same_corners, drawn_digits = moving_mnist.moving_sequence(
        digits, 3, seed=5, return_positions=True, return_digits=True)
    np.testing.assert_array_equal(same_corners, corners)
    np.testing.assert_array_equal(drawn_digits, chosen)
    assert moving_mnist.moving_sequence(digits, 3, seed=5, return_digits=True)[1].shape == (2,)
    for frame in (0, 11):
        drawn = np.zeros((64, 64), np.uint8)
        for image, (row, column) in zip(images, corners[frame]):
            np.maximum(drawn[row:row + 28, column:column + 28], image,
                       out=drawn[row:row + 28, column:column + 28])
        np.testing.assert_array_equal(drawn, first[frame])


def test_a_digit_moves_at_constant_speed_and_bounces():
    digits = np.zeros((1, 28, 28), np.uint8)
    digits[0, 0, 0] = 255  # One pixel marks the digit's top-left corner.
    sequence = moving_mnist.moving_sequence(digits, 0, seed=0, frames=60, digits_per_sequence=1)
    corners = np.array([np.argwhere(frame)[0] for frame in sequence])
    assert corners.min() >= 0 and corners.max() <= 64 - 28
    steps = np.diff(corners, axis=0)
    assert np.all(np.abs(steps) <= np.ceil(moving_mnist.STEP) + 1)
    # Over 60 frames at 3.6 pixels per frame across a range of 36, the direction reverses.
    assert any(np.any(np.sign(steps[i]) * np.sign(steps[i + 1]) < 0)
               for i in range(len(steps) - 1))


def test_reads_mnist_idx_files_and_says_where_to_put_them(tmp_path, monkeypatch):
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    header = b"".join(value.to_bytes(4, "big") for value in (2051, 3, 28, 28))
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / moving_mnist.TEST_FILE, "wb") as file:
        file.write(header + images.tobytes())
    np.testing.assert_array_equal(
        moving_mnist.read_idx_images(tmp_path / "mnist" / moving_mnist.TEST_FILE), images)
    digits = moving_mnist.load_digits(tmp_path)
    assert "8000-9999" in digits["source"] and len(digits["train"]) == 3
    with gzip.open(tmp_path / "bad.gz", "wb") as file:
        file.write(b"\x00" * 20)
    with pytest.raises(ValueError, match="not an idx3 image file"):
        moving_mnist.read_idx_images(tmp_path / "bad.gz")
    monkeypatch.setattr(moving_mnist, "URL", (tmp_path / "nowhere").as_uri() + "/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\.gz.*downloading"):
        moving_mnist.load_digits(tmp_path / "empty")


def test_splits_have_the_configured_sizes_and_train_on_the_tracked_centers(data):
    sizes = [sum(int(batch[0].shape[0]) for batch in split) for split in (data.validation,
                                                                          data.test)]
    assert sizes == [app.SMOKE.validation_sequences, app.SMOKE.test_sequences]
    inputs, targets = next(iter(data.validation))
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # targets: the next frames
    # The training split: the tracker's centers of whole training sequences, reshuffled.
    digits = moving_mnist.load_digits(None)["train"]
    sequences = moving_mnist.moving_sequences(digits, range(app.SMOKE.train_sequences),
                                              app.SMOKE.seed + 1)
    every = tracker.ObjectTracker(2)(sequences[..., None].astype("float32") / 255)[0].numpy()
    batches = [batch.numpy() for batch in data.train]
    assert batches[0].shape == (app.SMOKE.batch_size, 20, 2, 2)
    epoch = np.concatenate(batches)
    order = np.lexsort(epoch.reshape(len(epoch), -1).T)
    np.testing.assert_allclose(epoch[order],
                               every[np.lexsort(every.reshape(len(every), -1).T)], atol=1e-4)
    assert not np.allclose(epoch, every, atol=1e-4)  # Shuffled.
    with pytest.raises(ValueError, match="input_frames must be at least 2"):
        app.load_data(app.Config(input_frames=1))


# The model.

def test_prediction_is_causal(model, data):
    frames = next(iter(data.validation))[0][:2].numpy()
    changed = frames.copy()
    changed[:, 7:] = np.random.default_rng(0).uniform(size=changed[:, 7:].shape)
    before, after = model(frames).numpy(), model(changed).numpy()
    # Outputs 0..6 predict frames 1..7 from frames 0..6, which did not change.
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not np.allclose(before[:, 7:], after[:, 7:])


def _numpy_rollout(model, centers, num_frames):
    """The reference: the Elman equations stepped on each object apart in NumPy, each output
    turned into the object's next move, reading the given centers and then its own."""
    cell, decoder = model.get_layer("recurrent").cell.cell, model.get_layer("decoder")
    W, U, V = (weight.numpy() for weight in (cell.W, cell.U, cell.V))
    b, c = cell.b.numpy(), cell.c.numpy()
    kernel, bias = (weight.numpy() for weight in decoder.steps.weights)
    batch, given, objects, _ = centers.shape
    state = np.zeros((batch, objects, W.shape[0]), "float32")
    center, move, predicted = centers[:, 0], np.zeros_like(centers[:, 0]), []
    for t in range(given - 1 + num_frames):
        if t < given:
            center = centers[:, t]
            move = centers[:, t] - centers[:, t - 1] if t else np.zeros_like(center)
        features = np.concatenate([(center - 31.5) / 31.5, move / 4.0], -1)  # (batch, objects, 4)
        state = np.tanh(features @ U + state @ W + b)
        output = np.maximum(state @ V + c, 0)
        move = move + decoder.max_step * np.tanh(np.concatenate([output, features], -1) @ kernel
                                                 + bias)
        center = center + move
        predicted.append(center)
    return np.stack(predicted, 1)


def test_rollout_steps_the_elman_equations_on_each_object(model, data):
    frames = _frames(data, 3)
    centers, layers = (part.numpy() for part in model.get_layer("tracker")(frames))
    expected = _numpy_rollout(model, centers, 4)
    rolled = app.rollout_centers(model, centers, 4).numpy()
    assert rolled.shape == (3, INPUT_FRAMES - 1 + 4, 2, 2)
    np.testing.assert_allclose(rolled, expected, atol=1e-4)
    # The graph loop (unknown lengths, as in the SavedModel) gives the same.
    graph = tf.function(lambda centers, count: app.rollout_centers(model, centers, count),
                        input_signature=[tf.TensorSpec([None, None, 2, 2]),
                                         tf.TensorSpec([], tf.int32)])
    np.testing.assert_allclose(graph(centers, 4).numpy(), expected, atol=1e-4)
    # The predicted frames: the last given frame's layers moved by the moves added up,
    # combined by their maximum (in NumPy); the first is the model's own last output.
    predicted = app.predict_frames(model, frames, 4).numpy()
    for k in (0, 3):
        offsets = expected[:, INPUT_FRAMES - 1 + k] - centers[:, -1]
        moved = np.max([[_bilinear_translation(layers[example, -1, ..., index],
                                               *offsets[example, index])
                         for index in range(2)] for example in range(3)], axis=1)
        np.testing.assert_allclose(predicted[:, k, ..., 0], moved, atol=1e-5)
    np.testing.assert_allclose(predicted[:, 0], model(frames).numpy()[:, -1], atol=1e-5)
    # Swapping the objects swaps the moves: one object's cell never reads the other.
    swapped = app.rollout_centers(model, centers[:, :, ::-1], 4).numpy()
    np.testing.assert_allclose(swapped, rolled[:, :, ::-1], atol=1e-4)


def test_trains_on_the_tracks_and_validates_on_frames(data, tmp_path):
    keras.utils.set_random_seed(0)
    model = app.build_model(app.SMOKE, data)
    cell = model.get_layer("recurrent").cell
    assert isinstance(cell, ObjectwiseCell) and isinstance(cell.cell, ElmanCell)
    assert cell.cell.U.shape == (4, app.SMOKE.hidden_units)  # One object's center and move.
    # Validation: the Huber loss (in NumPy) between the rollout's centers and the tracked ones
    # of the true frames; the metrics compare the frames drawn after the given ones.
    inputs, targets = (part[:8] for part in next(iter(data.validation)))
    true_centers = model.get_layer("tracker")(
        np.concatenate([inputs[:, :1], targets], axis=1))[0].numpy()
    centers = _numpy_rollout(model, true_centers[:, :INPUT_FRAMES], 20 - INPUT_FRAMES)
    error = np.abs(centers - true_centers[:, 1:])
    huber = np.mean(np.where(error <= 1, 0.5 * error ** 2, error - 0.5))
    metrics = model.evaluate(inputs, targets, batch_size=8, verbose=0, return_dict=True)
    assert metrics["loss"] == pytest.approx(huber, rel=1e-4)
    predicted = app.predict_frames(model, inputs[:, :INPUT_FRAMES], 20 - INPUT_FRAMES).numpy()
    truth = targets[:, INPUT_FRAMES - 1:].numpy()
    assert metrics["mse"] == pytest.approx(np.mean((predicted - truth) ** 2), rel=1e-4)
    # Training steps read centers, move every weight and lower the loss; the learning rate
    # decays to 0 along a cosine over the epochs.
    app_checks.check_training_step_changes_every_weight(model, (next(iter(data.train)),))
    history = model.fit(data.train, validation_data=data.validation, epochs=3,
                        verbose=0).history
    assert set(history) == {"loss", "val_loss", "val_mse", "val_mae"}
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    steps = app.SMOKE.epochs * app.SMOKE.train_sequences // app.SMOKE.batch_size
    assert float(model.optimizer.learning_rate) < app.SMOKE.learning_rate
    assert model.optimizer._learning_rate.decay_steps == steps
    app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    with pytest.raises(ValueError, match=r"trains on tracked centers \(batch, time, objects"):
        model.train_on_batch(inputs, targets)
    with pytest.raises(ValueError, match="input_frames must be >= 2"):
        app.NextFrameModel(model.inputs, model.outputs, input_frames=1)
    with pytest.raises(ValueError, match="objects must be >= 1 and max_step > 0"):
        app.MoveDecoder(2, max_step=0)


def test_conv_lstm_reference_is_stepped_like_the_elman_cell(data, monkeypatch):
    """The benchmark's ConvLSTM2D reference is an RNN cell, so that the rollout steps it on each
    object as it steps the Elman cell, and it trains on the tracks the same way."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    benchmark = importlib.import_module("nextframe")
    config = app.Config(**{**app.SMOKE.__dict__, "output_units": 64})
    keras.utils.set_random_seed(0)
    model = app.build_model(config, data, recurrent_layer=benchmark.conv_lstm(config))
    frames = _frames(data, 2)
    centers = model.get_layer("tracker")(frames)[0]
    rolled = app.rollout_centers(model, centers, 3).numpy()
    # Reading the given frames one step at a time, as the RNN layer does, then its own.
    features = app.track_features(centers, tracker.tracked_moves(centers))
    outputs = model.get_layer("recurrent")(features)
    moves = model.get_layer("decoder").moves(outputs[:, -1], features[:, -1],
                                             centers[:, -1] - centers[:, -2])
    np.testing.assert_allclose(rolled[:, INPUT_FRAMES - 1], centers[:, -1] + moves, atol=1e-4)
    app_checks.check_training_step_changes_every_weight(model, (next(iter(data.train)),))


def test_export_serves_without_elman_and_checks_its_inputs(model, data, tmp_path):
    frames = _frames(data)
    request = {"frames": tf.constant(frames), "num_frames": tf.constant(4)}
    version_dir = app_checks.check_export_without_elman(app, model, request, tmp_path)
    loaded = tf.saved_model.load(str(version_dir))
    assert sorted(loaded.signatures) == ["serving_default", "serving_uint8"]
    default = loaded.signatures["serving_default"]
    assert sorted(default.structured_input_signature[1]) == ["frames", "num_frames"]
    predicted = default(**request)["predicted_frames"].numpy()
    assert predicted.shape == (4, 4, 64, 64, 1)
    pixels = tf.constant(np.round(frames * 255).astype(np.uint8))
    as_uint8 = loaded.signatures["serving_uint8"](frames=pixels, num_frames=tf.constant(4))
    assert as_uint8["predicted_frames"].dtype == tf.uint8
    np.testing.assert_allclose(as_uint8["predicted_frames"].numpy() / 255.0, predicted,
                               atol=2 / 255)
    # One sequence out of range (NaN, or a pixel above 1) costs the others nothing.
    spoiled = frames.copy()
    spoiled[1, 0, 5, 5, 0] = np.nan
    spoiled[3, 2, 0, 0, 0] = 1.5
    mixed = default(frames=tf.constant(spoiled), num_frames=tf.constant(4))
    assert mixed["valid"].numpy().tolist() == [True, False, True, False]
    np.testing.assert_allclose(mixed["predicted_frames"].numpy()[[0, 2]], predicted[[0, 2]],
                               atol=1e-5)
    assert not mixed["predicted_frames"].numpy()[[1, 3]].any()
    assert default(**request)["valid"].numpy().all() and as_uint8["valid"].numpy().all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_frames must be at least 1"):
        default(frames=request["frames"], num_frames=tf.constant(0))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"frames must be in \[0, 1\]"):
        default(frames=request["frames"] * 255.0, num_frames=tf.constant(2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one frame"):
        default(frames=request["frames"][:, :0], num_frames=tf.constant(2))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"tensor frames \[1,3,32,32,1\] is not compatible with expected "
                       r"shape \[\?,\?,64,64,1\]"):
        default(frames=tf.zeros([1, 3, 32, 32, 1]), num_frames=tf.constant(2))


def test_command_line_inputs_are_checked(tmp_path):
    np.save(tmp_path / "frames.npy", np.zeros((5, 64, 64), np.uint8))
    request = app.prediction_request([str(tmp_path / "frames.npy"), "test:1"][:1])
    assert request["frames"].shape == (1, 5, 64, 64, 1)
    np.save(tmp_path / "small.npy", np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"frames must have shape \(time, 64, 64\)"):
        app.prediction_request([str(tmp_path / "small.npy")])
    np.save(tmp_path / "bright.npy", np.full((5, 64, 64), 7.0))
    with pytest.raises(ValueError, match=r"uint8 \(0-255\) or float in \[0, 1\]"):
        app.prediction_request([str(tmp_path / "bright.npy")])
    with pytest.raises(ValueError, match="expected a .npy file of frames or test:N"):
        app.prediction_request(["missing.npy"])


def test_cli_verbs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "nextframe", "--preset", "smoke", "--set", "epochs=1"]) == 0
    assert main(["evaluate", "nextframe"]) == 0
    run_dir = tmp_path / "runs" / "nextframe"
    report = json.loads((run_dir / "evaluation.json").read_text())["report"]
    for name in ("model", "copy_last_frame"):
        assert report[name]["mse"] > 0 and -1 <= report[name]["ssim"] <= 1
        assert len(report[name]["mse_by_frame"]) == app.SMOKE.output_frames
    assert (run_dir / "predictions.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(run_dir / "predictions.gif") as animation:
        # One picture per frame in time: the given ones, then truth against prediction.
        assert animation.n_frames == app.SMOKE.input_frames + app.SMOKE.output_frames
    assert main(["export", "nextframe"]) == 0
    capsys.readouterr()
    assert main(["predict", "nextframe", "test:0", "test:1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("frames predicted after") == 2 and "copying the last frame" in printed
