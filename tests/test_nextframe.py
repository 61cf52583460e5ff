"""The next-frame app on synthetic shapes: generator, causality, rollout, export, CLI."""

import dataclasses
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
from elman.cli import main
from elman.datasets import moving_mnist
from elman.layers import ElmanCell

app = get_app("nextframe")


@pytest.fixture(scope="module")
def data():
    return app.load_data(app.SMOKE)


# Every decoder: drawing frames from scratch, moving the current frame's pixels, and moving
# layers of the last true frame, split by the decoder CNN or by tracking the objects.
DECODERS = app.DECODERS
TRACKED = dict(decoder="reference", reference_split="tracks", reference_layers=2)
VARIANTS = {**{decoder: dict(decoder=decoder) for decoder in DECODERS}, "tracked": TRACKED,
            "tracks only": dict(TRACKED, tracks_only=True),
            "objects apart": dict(TRACKED, tracks_only=True, objects_apart=True)}


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(data, request):
    keras.utils.set_random_seed(0)
    model = app.build_model(dataclasses.replace(app.SMOKE, **VARIANTS[request.param]), data)
    model.fit(data.train.take(4), verbose=0)  # Trained a little: outputs are not all alike.
    return model


def _frames(data, count=4):
    inputs, _ = next(iter(data.validation))
    return inputs[:count, :app.SMOKE.input_frames].numpy()


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


def test_splits_have_the_configured_sizes(data):
    sizes = [sum(int(x.shape[0]) for x, _ in split)
             for split in (data.train, data.validation, data.test)]
    assert sizes == [app.SMOKE.train_sequences, app.SMOKE.validation_sequences,
                     app.SMOKE.test_sequences]
    inputs, targets = next(iter(data.validation))
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # targets: the next frames


# The model.

def test_prediction_is_causal(model, data):
    frames = next(iter(data.validation))[0][:2].numpy()
    changed = frames.copy()
    changed[:, 7:] = np.random.default_rng(0).uniform(size=changed[:, 7:].shape)
    before, after = model(frames).numpy(), model(changed).numpy()
    # Outputs 0..6 predict frames 1..7 from frames 0..6, which did not change.
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert not np.allclose(before[:, 7:], after[:, 7:])


def _check_rollout_feeds_back_its_own_predictions(model, frames, count):
    predicted = app.predict_frames(model, frames, count).numpy()
    assert predicted.shape == (len(frames), count, 64, 64, 1)
    decoder = model.get_layer("decoder")
    if decoder.layers:
        _check_reference_rollout(model, frames, predicted)
        return
    # Each predicted frame is the teacher-forced model's last output after reading the
    # frames given and the frames predicted before it.
    seen = frames
    for k in range(count):
        np.testing.assert_allclose(predicted[:, k], model(seen).numpy()[:, -1], atol=1e-5)
        seen = np.concatenate([seen, predicted[:, k:k + 1]], axis=1)


def _check_reference_rollout(model, frames, predicted):
    """A reference decoder's rollout: predicted frame k is the last given frame's layers (split
    as the teacher-forced model splits it) moved by the moves the cell chose after reading
    the given frames and predicted frames 0..k-1, added up. The predictions have no floor;
    what the model reads back and its teacher-forced frames are `floored`."""
    decoder = model.get_layer("decoder")
    assert predicted.min() == 0.0  # The background is black, not REFERENCE_FLOOR.
    if decoder.tracked:
        _check_tracked_rollout(model, frames, predicted)
        return
    encoder = model.get_layer("encoder")
    recurrent = [layer for layer in model.layers if hasattr(layer, "cell")][0]
    seen = np.concatenate([frames, app.floored(predicted[:, :-1])], axis=1)
    latent, features = encoder(seen)
    outputs = recurrent(latent)  # the cell over every frame read, in one teacher-forced pass
    given = frames.shape[1]
    shares = decoder.reference_parts(outputs[:, :given], features[:, :given], frames)[0][:, -1]
    offsets = np.zeros((len(frames), decoder.layers, 2), "float32")
    for k in range(predicted.shape[1]):
        offsets += decoder.moves(outputs[:, given - 1 + k]).numpy()
        expected = decoder.compose(frames[:, -1], shares, offsets).numpy()
        np.testing.assert_allclose(app.floored(predicted[:, k]), expected, atol=1e-5)
    # The first predicted frame is the teacher-forced prediction of the frame after the last.
    np.testing.assert_allclose(app.floored(predicted[:, 0]), model(frames).numpy()[:, -1],
                               atol=1e-5)


def _check_tracked_rollout(model, frames, predicted):
    """With the tracked split the cell reads where the objects are: after the given frames
    (their tracked centers and moves), the reference's centers moved by the moves added up,
    and the last move; stepped here one cell call at a time."""
    encoder, recurrent, decoder = app._parts(model)
    tracker, cell = model.get_layer("tracker"), recurrent.cell
    by_object = decoder.objects_apart  # The features object after object, for ObjectwiseCell.

    def latent_of(frames):  # (batch, time, latent_dim), or nothing with tracks_only
        return encoder(frames)[0] if encoder is not None else frames[:, :, :0, 0, 0]

    latent = latent_of(frames)
    centers, layers = (part.numpy() for part in tracker(frames))
    last_moves = np.concatenate([np.zeros_like(centers[:, :1]), np.diff(centers, axis=1)], 1)
    states = app._initial_states(recurrent, len(frames))
    for t in range(frames.shape[1]):
        features_t = app.track_features(centers[:, t], last_moves[:, t], by_object)
        output, states = cell(tf.concat([latent[:, t], features_t], -1), states)
    outputs = recurrent(tf.concat([latent, app.track_features(centers, last_moves, by_object)],
                                  -1))
    np.testing.assert_allclose(outputs[:, -1], output, atol=1e-5)
    move = decoder.moves(output, centers[:, -1], last_moves[:, -1]).numpy()
    offsets = move.copy()
    for k in range(predicted.shape[1]):
        # The last given frame's layers moved, combined by their maximum.
        moved = np.max([[_bilinear_translation(layers[example, -1, ..., index],
                                               *offsets[example, index])
                         for index in range(decoder.layers)] for example in range(len(frames))],
                       axis=1)
        np.testing.assert_allclose(predicted[:, k, ..., 0], moved, atol=1e-5)
        positions = centers[:, -1] + offsets
        read = tf.concat([latent_of(app.floored(predicted[:, k:k + 1]))[:, 0],
                          app.track_features(positions, move, by_object)], -1)
        output, states = cell(read, states)
        move = decoder.moves(output, positions, move).numpy()
        offsets = offsets + move
    np.testing.assert_allclose(app.floored(predicted[:, 0]), model(frames).numpy()[:, -1],
                               atol=1e-5)


def test_rollout_feeds_back_its_own_predictions(model, data):
    _check_rollout_feeds_back_its_own_predictions(model, _frames(data, 3), 3)


def test_rollout_objective_reads_true_frames_then_its_own_predictions(model, data):
    frames = next(iter(data.validation))[0][:3].numpy()  # 19 frames
    given = 4
    rolled = app.rollout_predictions(model, tf.constant(frames), given).numpy()
    assert rolled.shape == frames.shape
    # While it reads true frames, it is the teacher-forced model; from the last true frame on,
    # it is what the graph-loop rollout of `predict_frames` predicts (a separate implementation;
    # a reference decoder's predictions are not floored).
    np.testing.assert_allclose(rolled[:, :given], model(frames).numpy()[:, :given], atol=1e-5)
    predicted = app.predict_frames(model, frames[:, :given], frames.shape[1] - given + 1).numpy()
    if model.get_layer("decoder").layers:
        predicted = app.floored(predicted)
    np.testing.assert_allclose(rolled[:, given - 1:], predicted, atol=1e-5)
    changed = frames.copy()
    changed[:, given:] = 1.0 - changed[:, given:]
    np.testing.assert_allclose(
        app.rollout_predictions(model, tf.constant(changed), given).numpy(), rolled, atol=1e-6)
    if model.get_layer("decoder").layers:
        with pytest.raises(ValueError, match="own_probability must be 1"):
            app.rollout_predictions(model, tf.constant(frames), given, own_probability=0.0)
        return
    # Scheduled sampling at probability 0 reads only true frames: it is teacher forcing.
    np.testing.assert_allclose(
        app.rollout_predictions(model, tf.constant(frames), given, own_probability=0.0,
                                seed=1).numpy(), model(frames).numpy(), atol=1e-5)


@pytest.mark.parametrize("decoder", ["pixels", "reference"])
def test_training_on_rollouts_trains_and_validates_on_the_rollout(data, tmp_path, decoder):
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, train_on_rollouts=True, decoder=decoder)
    model = app.build_model(config, data)
    assert model.rollout_from == config.input_frames
    inputs, targets = next(iter(data.validation))
    # Evaluation's loss is the binary cross-entropy of the rollout, computed here in NumPy.
    rolled = np.clip(app.rollout_predictions(model, inputs, config.input_frames).numpy(),
                     1e-7, 1 - 1e-7)
    truth = targets.numpy()
    expected = -np.mean(truth * np.log(rolled) + (1 - truth) * np.log(1 - rolled))
    loss = model.evaluate(inputs, targets, batch_size=len(truth), verbose=0,
                          return_dict=True)["loss"]
    assert loss == pytest.approx(expected, rel=1e-4)
    assert loss != pytest.approx(model.compute_loss(y=targets, y_pred=model(inputs)).numpy(),
                                 rel=1e-3)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))
    reloaded = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert reloaded.rollout_from == config.input_frames


def test_track_loss_teaches_the_moves_with_the_tracked_true_centers(data, tmp_path):
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, train_on_rollouts=True, track_loss_weight=0.5,
                                 **TRACKED)
    model = app.build_model(config, data)
    inputs, targets = next(iter(data.validation))
    rolled, centers = app.rollout_predictions(model, inputs, config.input_frames,
                                              return_centers=True)
    np.testing.assert_allclose(rolled, app.rollout_predictions(model, inputs,
                                                               config.input_frames), atol=1e-6)
    # The loss: the rollout's cross-entropy plus the weight times the Huber loss between the
    # centers it moved the objects to and the tracker's centers in the true frames, in NumPy.
    rolled, truth = np.clip(rolled.numpy(), 1e-7, 1 - 1e-7), targets.numpy()
    cross_entropy = -np.mean(truth * np.log(rolled) + (1 - truth) * np.log(1 - rolled))
    true_centers = model.get_layer("tracker")(
        np.concatenate([inputs[:, :1], truth], axis=1))[0].numpy()[:, 1:]
    error = np.abs(centers.numpy() - true_centers)
    huber = np.mean(np.where(error <= 1, 0.5 * error ** 2, error - 0.5))
    loss = model.evaluate(inputs, targets, batch_size=len(truth), verbose=0,
                          return_dict=True)["loss"]
    assert loss == pytest.approx(cross_entropy + 0.5 * huber, rel=1e-4)
    # The centers: the tracked ones moved by each step's move while the model reads true
    # frames, then the last true frame's moved by the moves added up.
    decoder, tracker = model.get_layer("decoder"), model.get_layer("tracker")
    given = tracker(inputs[:, :config.input_frames])[0].numpy()
    assert np.abs(centers[:, :config.input_frames] - given).max() > 1e-3
    steps = np.diff(centers[:, config.input_frames - 1:], axis=1)
    np.testing.assert_allclose(steps.shape, (len(truth), 9, 2, 2))
    # Each move is the move before plus a correction of at most max_step per axis, from the
    # last tracked move on (the tracker's moves need not be whole pixels: a fresh split of a
    # frame moves the centers too).
    last = config.input_frames - 1
    moves = np.concatenate([given[:, last:] - given[:, last - 1:last],
                            centers[:, last:last + 1] - given[:, last:], steps], axis=1)
    assert np.abs(np.diff(moves, axis=1)).max() <= decoder.max_step + 1e-4
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))
    reloaded = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert reloaded.track_loss_weight == 0.5
    with pytest.raises(ValueError, match="needs rollouts without start_steps"):
        app.RolloutModel(model.inputs, model.outputs, rollout_from=2, start_steps=1,
                         track_loss_weight=0.5)
    pixels = app.build_model(app.SMOKE, data)
    with pytest.raises(ValueError, match="a model with the tracked split"):
        app.RolloutModel(pixels.inputs, pixels.outputs, rollout_from=2, track_loss_weight=0.5)
    with pytest.raises(ValueError, match="return_centers needs a model with the tracked"):
        app.rollout_predictions(pixels, inputs, 2, return_centers=True)


def test_tracks_only_reads_no_pixels_and_the_learning_rate_decays(data):
    config = dataclasses.replace(app.SMOKE, tracks_only=True, learning_rate_decay_epochs=3,
                                 **TRACKED)
    model = app.build_model(config, data)
    assert app._parts(model)[0] is None and app._tracker(model) is not None
    # The cell reads the two objects' centers and moves: 8 numbers a step.
    assert model.get_layer("elman").cell.U.shape == (8, config.hidden_units)
    schedule = model.optimizer._learning_rate
    steps_per_epoch = -(-config.train_sequences // config.batch_size)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.decay_steps == 3 * steps_per_epoch
    assert float(schedule(0)) == pytest.approx(config.learning_rate)
    assert float(schedule(3 * steps_per_epoch)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match='tracks_only needs decoder="reference"'):
        app.build_model(dataclasses.replace(app.SMOKE, tracks_only=True), data)


def test_training_on_tracks_rolls_out_the_tracked_centers_alone(data, tmp_path):
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, tracks_only=True, train_on_tracks=True, **TRACKED)
    tracked_data = app.load_data(config)
    model = app.build_model(config, tracked_data)
    tracker = model.get_layer("tracker")
    # The training split: the tracker's centers of whole training sequences, reshuffled.
    digits = moving_mnist.load_digits(None)["train"]
    sequences = moving_mnist.moving_sequences(digits, range(config.train_sequences),
                                              config.seed + 1)
    every = tracker(sequences[..., None].astype("float32") / 255)[0].numpy()
    batches = [batch.numpy() for batch in tracked_data.train]
    assert batches[0].shape == (config.batch_size, 20, 2, 2)
    epoch = np.concatenate(batches)
    order = np.lexsort(epoch.reshape(len(epoch), -1).T)
    np.testing.assert_allclose(epoch[order],
                               every[np.lexsort(every.reshape(len(every), -1).T)], atol=1e-4)
    assert not np.allclose(epoch, every, atol=1e-4)  # Shuffled.
    # The rollout on the centers alone puts the objects where the rollout on frames does, and
    # reads only the first input_frames centers.
    inputs, targets = next(iter(data.validation))
    true_centers = tracker(np.concatenate([inputs[:, :1], targets], axis=1))
    rolled = app.rollout_predictions(model, inputs, config.input_frames, return_centers=True,
                                     centers=true_centers)[1].numpy()
    centers = app.rollout_centers(model, true_centers[0], config.input_frames).numpy()
    np.testing.assert_allclose(centers, rolled, atol=1e-4)
    changed = true_centers[0].numpy().copy()
    changed[:, config.input_frames:] += 5.0
    np.testing.assert_allclose(app.rollout_centers(model, changed, config.input_frames), centers,
                               atol=1e-6)
    # Validation rolls out on frames: its loss is the Huber loss (in NumPy) between those
    # centers and the tracked true ones.
    error = np.abs(centers - true_centers[0].numpy()[:, 1:])
    huber = np.mean(np.where(error <= 1, 0.5 * error ** 2, error - 0.5))
    metrics = model.evaluate(inputs, targets, batch_size=len(inputs), verbose=0,
                             return_dict=True)
    assert metrics["loss"] == pytest.approx(huber, rel=1e-4)
    # Training steps read centers, move every weight and lower the loss.
    app_checks.check_training_step_changes_every_weight(model, (batches[0],))
    history = model.fit(tracked_data.train, validation_data=tracked_data.validation, epochs=3,
                        verbose=0).history
    assert set(history) == {"loss", "val_loss", "val_mse", "val_mae"}
    assert history["loss"][-1] < history["loss"][0]
    assert app_checks.check_keras_round_trip(model, _frames(data), tmp_path).train_on_tracks
    with pytest.raises(ValueError, match=r"trains on tracked centers \(batch, time, objects"):
        model.train_on_batch(inputs, targets)
    with pytest.raises(ValueError, match="train_on_tracks needs tracks_only=true"):
        app.build_model(dataclasses.replace(config, tracks_only=False), data)
    with pytest.raises(ValueError, match="train_on_tracks needs rollouts without start_steps"):
        app.RolloutModel(model.inputs, model.outputs, rollout_from=2, start_steps=1,
                         train_on_tracks=True)
    with pytest.raises(ValueError, match="rollout_centers needs a model with tracks_only"):
        app.rollout_centers(app.build_model(dataclasses.replace(app.SMOKE, **TRACKED), data),
                            true_centers[0], config.input_frames)


def test_objects_apart_steps_one_cell_on_each_object_with_the_same_weights(data):
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, tracks_only=True, objects_apart=True, **TRACKED)
    model = app.build_model(config, data)
    recurrent, decoder = model.get_layer("elman"), model.get_layer("decoder")
    cell = recurrent.cell
    assert isinstance(cell, app.ObjectwiseCell) and isinstance(cell.cell, ElmanCell)
    # One object's center and move in, per object: the same U, W, V for both.
    assert cell.cell.U.shape == (4, config.hidden_units)
    assert cell.output_size == 2 * config.latent_dim
    rng = np.random.default_rng(0)
    centers = rng.uniform(10, 50, (3, 5, 2, 2)).astype("float32")
    features = app.track_features(centers, app.tracked_moves(centers), by_object=True).numpy()
    np.testing.assert_allclose(features[..., 4:6], (centers[..., 1, :] - 31.5) / 31.5,
                               rtol=1e-6)  # (3, 5, 8): object 1's center, then its move
    every = app.track_features(centers, app.tracked_moves(centers)).numpy()
    np.testing.assert_allclose(every[..., 2:4], features[..., 4:6], rtol=1e-6)
    # The reference: a NumPy loop stepping the Elman equations on each object alone.
    W, U, V = (weight.numpy() for weight in (cell.cell.W, cell.cell.U, cell.cell.V))
    b, c = cell.cell.b.numpy(), cell.cell.c.numpy()
    expected = np.zeros((3, 5, 2, config.latent_dim), "float32")
    for k in range(2):
        state = np.zeros((3, config.hidden_units), "float32")
        for t in range(5):
            state = np.tanh(features[:, t, 4 * k:4 * k + 4] @ U + state @ W + b)
            expected[:, t, k] = np.maximum(state @ V + c, 0)
    outputs = recurrent(features).numpy()
    np.testing.assert_allclose(outputs.reshape(expected.shape), expected, atol=1e-5)
    # Swapping the objects swaps the outputs and the moves: neither reads the other object.
    swapped = centers[:, :, ::-1]
    swapped_outputs = recurrent(app.track_features(swapped, app.tracked_moves(swapped),
                                                   by_object=True))
    np.testing.assert_allclose(swapped_outputs.numpy().reshape(expected.shape),
                               expected[:, :, ::-1], atol=1e-5)
    moves = decoder.object_moves(outputs, centers).numpy()
    np.testing.assert_allclose(decoder.object_moves(swapped_outputs, swapped).numpy(),
                               moves[:, :, ::-1], atol=1e-5)
    assert decoder.steps.kernel.shape == (config.latent_dim + 4, 2)
    # Errors that say what is wrong.
    with pytest.raises(ValueError, match="objects_apart needs tracks_only=true"):
        app.build_model(dataclasses.replace(config, tracks_only=False), data)
    with pytest.raises(ValueError, match='objects_apart needs layers and split="tracks"'):
        app.FrameDecoder(8, layers=2, objects_apart=True)
    with pytest.raises(ValueError, match="needs a multiple of 2 input features"):
        app.ObjectwiseCell(ElmanCell(4), 2).build((None, 5))
    with pytest.raises(ValueError, match="objects must be >= 1"):
        app.ObjectwiseCell(ElmanCell(4), 0)


def test_scheduled_sampling_ramps_from_teacher_forcing_to_rollouts(data, tmp_path):
    config = dataclasses.replace(app.SMOKE, train_on_rollouts=True, rollout_ramp_epochs=2)
    model = app.build_model(config, data)
    steps_per_epoch = sum(1 for _ in data.train)
    assert model.ramp_steps == 2 * steps_per_epoch
    for step, probability in ((0, 0.0), (steps_per_epoch, 0.5), (5 * steps_per_epoch, 1.0)):
        model.optimizer.iterations.assign(step)
        assert float(model.own_probability()) == pytest.approx(probability)
    model.optimizer.iterations.assign(0)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))
    reloaded = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert reloaded.ramp_steps == model.ramp_steps


def test_rollouts_can_start_after_teacher_forced_epochs(data, tmp_path):
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, train_on_rollouts=True, rollout_start_epoch=1,
                                 decoder="transform")
    model = app.build_model(config, data)
    steps_per_epoch = sum(1 for _ in data.train)
    assert model.start_steps == steps_per_epoch
    inputs, targets = next(iter(data.train))
    bce = keras.losses.BinaryCrossentropy()
    for step, probability in ((0, 0.0), (steps_per_epoch - 1, 0.0), (steps_per_epoch, 1.0)):
        model.optimizer.iterations.assign(step)
        assert float(model.own_probability()) == probability
        # The loss of a training step (computed before its update) is the teacher-forced
        # loss before the start, and the rollout's loss from then on.
        teacher_forced = float(bce(targets, model(inputs)))
        rolled = float(bce(targets, app.rollout_predictions(model, inputs, config.input_frames)))
        assert abs(teacher_forced - rolled) > 1e-4
        loss = model.train_on_batch(inputs, targets, return_dict=True)["loss"]
        assert loss == pytest.approx(rolled if probability else teacher_forced, rel=1e-4)
    reloaded = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert reloaded.start_steps == model.start_steps
    with pytest.raises(ValueError, match="start_steps must be >= 0"):
        app.RolloutModel(model.inputs, model.outputs, rollout_from=2, start_steps=-1)


@pytest.mark.parametrize("variant", ["pixels", "tracked", "tracks only", "objects apart"])
def test_conv_lstm_reference_rolls_out_like_the_elman_model(data, monkeypatch, variant):
    """The benchmark's ConvLSTM2D reference is an RNN cell, so that rollouts step it; it reads
    the tracked objects beside the latent vector (or alone) as the Elman cell does, and
    trains on the tracks alone the same way."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    benchmark = importlib.import_module("nextframe")
    config = dataclasses.replace(app.SMOKE, latent_dim=64, **VARIANTS[variant])
    keras.utils.set_random_seed(0)
    model = app.build_model(config, data, recurrent_layer=benchmark.conv_lstm(config))
    _check_rollout_feeds_back_its_own_predictions(model, _frames(data, 2)[:, :5], 2)
    if config.tracks_only:
        inputs, targets = next(iter(data.validation))
        tracked = model.get_layer("tracker")(np.concatenate([inputs[:, :1], targets], axis=1))
        _, rolled = app.rollout_predictions(model, inputs, config.input_frames,
                                            return_centers=True, centers=tracked)
        np.testing.assert_allclose(app.rollout_centers(model, tracked[0], config.input_frames),
                                   rolled, atol=1e-4)


def test_move_frames_convolves_each_frame_with_its_own_kernels():
    rng = np.random.default_rng(0)
    frames = rng.random((3, 64, 64, 1)).astype("float32")
    kernels = rng.random((3, 5, 5, 2)).astype("float32")
    moved = app.move_frames(tf.constant(frames), tf.constant(kernels)).numpy()
    # The reference: a NumPy loop over examples, kernels and kernel taps, zeros outside.
    padded = np.pad(frames[..., 0], [(0, 0), (2, 2), (2, 2)])
    expected = np.zeros((3, 64, 64, 2))
    for example in range(3):
        for k in range(2):
            for a in range(5):
                for b in range(5):
                    expected[example, :, :, k] += (padded[example, a:a + 64, b:b + 64]
                                                   * kernels[example, a, b, k])
    np.testing.assert_allclose(moved, expected, rtol=1e-5, atol=1e-5)
    # A one-hot kernel shifts the frame: a 1 at row 2 - 1, column 2 + 2 moves it 1 pixel down
    # and 2 pixels left.
    shift = np.zeros((3, 5, 5, 1), "float32")
    shift[:, 1, 4] = 1.0
    moved = app.move_frames(tf.constant(frames), tf.constant(shift)).numpy()[..., 0]
    np.testing.assert_allclose(moved[:, 1:, :-2], frames[:, :-1, 2:, 0], atol=1e-6)
    np.testing.assert_array_equal(moved[:, 0], 0.0)
    np.testing.assert_array_equal(moved[:, :, -2:], 0.0)


def _model_with_decoder(data, **overrides):
    """`(config, model, decoder)` of a fresh SMOKE model with these config values."""
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, **overrides)
    model = app.build_model(config, data)
    return config, model, model.get_layer("decoder")


def test_transform_decoder_mixes_moved_frames_and_checks_its_arguments(data):
    config, model, decoder = _model_with_decoder(data, decoder="transform",
                                                 transform_kernels=3, transform_kernel_size=7)
    assert (decoder.kernels, decoder.kernel_size) == (3, 7)
    assert decoder.kernel_logits.units == 3 * 7 * 7
    frames = _frames(data, 2)
    predicted = model(frames).numpy()
    # A convex mix of moved frames (kernels >= 0 that sum to 1) and a sigmoid frame: in [0, 1].
    assert predicted.min() >= 0.0 and predicted.max() <= 1.0
    # The moved frames are frames the decoder read: black input frames give a prediction
    # darker than the drawn frame alone wherever the masks give the moved frames weight.
    latent, features = model.get_layer("encoder")(frames)
    outputs = model.get_layer("elman")(latent)
    black = decoder([outputs, features, np.zeros_like(frames)]).numpy()
    white = decoder([outputs, features, np.ones_like(frames)]).numpy()
    assert np.all(black <= white + 1e-6) and np.mean(white - black) > 0.05
    with pytest.raises(ValueError, match="decoder must be one of 'pixels', 'transform'"):
        app.build_model(dataclasses.replace(app.SMOKE, decoder="flow"), data)
    with pytest.raises(ValueError, match="kernel_size a positive odd number"):
        app.FrameDecoder(8, kernels=2, kernel_size=4)
    with pytest.raises(ValueError, match="needs the current frames"):
        decoder([outputs, features])


def _bilinear_translation(frame, dy, dx):
    """NumPy loop: frame sampled at (i - dy, j - dx), bilinearly, zeros outside."""
    height, width = frame.shape
    moved = np.zeros_like(frame, dtype="float64")
    for i in range(height):
        for j in range(width):
            y, x = i - dy, j - dx
            top, left = int(np.floor(y)), int(np.floor(x))
            for row, row_weight in ((top, 1 - (y - top)), (top + 1, y - top)):
                for column, column_weight in ((left, 1 - (x - left)), (left + 1, x - left)):
                    if 0 <= row < height and 0 <= column < width:
                        moved[i, j] += row_weight * column_weight * frame[row, column]
    return moved


def test_translate_frames_moves_each_frame_bilinearly_and_differentiably():
    rng = np.random.default_rng(0)
    frames = rng.random((3, 64, 64, 1)).astype("float32")
    offsets = np.array([[2.0, -3.0], [0.5, 1.25], [-10.3, 7.7]], "float32")
    moved = app.translate_frames(tf.constant(frames), tf.constant(offsets)).numpy()
    for example in range(3):
        np.testing.assert_allclose(moved[example, ..., 0],
                                   _bilinear_translation(frames[example, ..., 0],
                                                         *offsets[example]), atol=1e-5)
    # Whole pixels: a shift, 2 down and 3 left, zeros entering.
    np.testing.assert_allclose(moved[0, 2:, :-3, 0], frames[0, :-2, 3:, 0], atol=1e-6)
    np.testing.assert_array_equal(moved[0, :2], 0.0)
    # The gradient with respect to the offsets is the derivative of the moved frame: against
    # central differences, at offsets off whole pixels.
    offsets = tf.Variable([[1.3, -0.6]])
    weights = tf.constant(rng.random((1, 64, 64, 1)).astype("float32"))

    def objective(offset):
        return tf.reduce_sum(weights * app.translate_frames(tf.constant(frames[:1]), offset))

    with tf.GradientTape() as tape:
        value = objective(offsets)
    gradient = tape.gradient(value, offsets).numpy()
    step = 1e-2
    for axis in range(2):
        delta = np.zeros((1, 2), "float32")
        delta[0, axis] = step
        numeric = (objective(offsets + delta) - objective(offsets - delta)).numpy() / (2 * step)
        assert gradient[0, axis] == pytest.approx(numeric, rel=1e-2)


def test_reference_decoder_moves_layers_of_the_reference_and_checks_its_arguments(data):
    config, model, decoder = _model_with_decoder(data, decoder="reference", reference_layers=3,
                                                 reference_max_step=4.0)
    assert (decoder.layers, decoder.max_step, decoder.kernels) == (3, 4.0, 0)
    frames = _frames(data, 2)
    latent, features = model.get_layer("encoder")(frames)
    outputs = model.get_layer("elman")(latent)
    shares, moves = decoder.reference_parts(outputs, features, frames)
    assert shares.shape == (2, config.input_frames, 64, 64, 3)
    assert moves.shape == (2, config.input_frames, 3, 2)
    np.testing.assert_allclose(tf.reduce_sum(shares, -1).numpy(), 1.0, atol=1e-5)
    assert np.abs(moves.numpy()).max() <= 4.0
    # The shares see which pixels each layer's previous move explains: moving the previous
    # frame changes them, and the first step has no previous frame.
    changed = frames.copy()
    changed[:, 3] = np.roll(changed[:, 3], 5, axis=-2)
    changed_shares = decoder.reference_parts(outputs, features, changed)[0].numpy()
    np.testing.assert_allclose(changed_shares[:, :3], shares[:, :3].numpy(), atol=1e-6)
    assert not np.allclose(changed_shares[:, 4], shares[:, 4].numpy())
    shares = tf.reshape(shares, (-1, 64, 64, 3))
    moves = tf.reshape(moves, (-1, 3, 2))
    # Each step's prediction is its own frame's layers moved one step: in NumPy, the shares
    # times the frame, each moved by its offset (the loop above), added up and capped at 1.
    predicted = model(frames).numpy()
    flat_frames = frames.reshape(-1, 64, 64)
    for index in (0, 7, 13):
        layers = flat_frames[index][None] * np.moveaxis(shares[index].numpy(), -1, 0)
        moved = sum(_bilinear_translation(layer, *offset)
                    for layer, offset in zip(layers, moves[index].numpy()))
        expected = app.REFERENCE_FLOOR + (1 - 2 * app.REFERENCE_FLOOR) * np.minimum(moved, 1.0)
        np.testing.assert_allclose(predicted.reshape(-1, 64, 64)[index], expected, atol=1e-5)
    # Still layers: the prediction is the reference itself, between the floor and 1 - floor.
    still = decoder.compose(frames[:, 0], shares[:2], tf.zeros((2, 3, 2))).numpy()
    np.testing.assert_allclose(
        still, app.REFERENCE_FLOOR + (1 - 2 * app.REFERENCE_FLOOR) * frames[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="not both layers and kernels"):
        app.FrameDecoder(8, kernels=2, layers=2)
    with pytest.raises(ValueError, match="max_step"):
        app.FrameDecoder(8, layers=2, max_step=0)
    with pytest.raises(ValueError, match="set rollout_ramp_epochs=0"):
        app.build_model(dataclasses.replace(config, train_on_rollouts=True,
                                            rollout_ramp_epochs=1), data)
    with pytest.raises(ValueError, match="needs the current frames"):
        decoder([outputs, features])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_training_step_changes_every_weight(data, variant):
    model = app.build_model(dataclasses.replace(app.SMOKE, **VARIANTS[variant]), data)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))


def _numpy_k_means(frame, count, iterations):
    """The tracker's first frame in NumPy: k-means on brightness-weighted positions from points
    along the principal axis (numpy.linalg.eigh) -> `(count, 2)` centers."""
    rows, columns = np.mgrid[:64, :64]
    positions = np.stack([rows.ravel(), columns.ravel()], 1).astype("float64")
    weights = frame.ravel().astype("float64")
    mean = weights @ positions / weights.sum()
    centered = positions - mean
    values, vectors = np.linalg.eigh((weights[:, None] * centered).T @ centered / weights.sum())
    centers = mean + np.linspace(-1, 1, count)[:, None] * np.sqrt(values[-1]) * vectors[:, -1]
    for _ in range(iterations):
        nearest = ((positions[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
        for k in range(count):
            if weights[nearest == k].sum() > 1e-3:
                centers[k] = weights[nearest == k] @ positions[nearest == k] / weights[
                    nearest == k].sum()
    return centers


def _shapes_passing(steps=10):
    """Two 9x9 shapes that move in whole pixels, cross and overlap (combined by their
    maximum): `(steps, 64, 64)` frames, each shape alone `(2, steps, 64, 64)`, and their
    top-left corners `(steps, 2, 2)`."""
    rng = np.random.default_rng(3)
    shapes = (rng.uniform(0.3, 1.0, (2, 9, 9)) * (rng.uniform(size=(2, 9, 9)) > 0.3))
    corners = np.array([[[20 + t, 8 + 4 * t], [24 - t, 47 - 4 * t]] for t in range(steps)])
    alone = np.zeros((2, steps, 64, 64), "float32")
    for k in range(2):
        for t, (row, column) in enumerate(corners[:, k]):
            alone[k, t, row:row + 9, column:column + 9] = shapes[k]
    return alone.max(axis=0), alone, corners


def test_object_tracker_follows_objects_through_overlaps(data):
    frames = next(iter(data.validation))[0][:4].numpy()
    tracker = app.ObjectTracker(2, iterations=6)
    centers, layers = (part.numpy() for part in tracker(frames))
    assert centers.shape == (4, frames.shape[1], 2, 2)
    assert layers.shape == (4, frames.shape[1], 64, 64, 2)
    for example in range(4):
        # The first frame: k-means as in NumPy (the principal axis's sign is arbitrary, so
        # the two centers may come in either order); its layers are the frame, split.
        expected = _numpy_k_means(frames[example, 0, ..., 0], 2, 6)
        assert min(np.abs(centers[example, 0] - expected).max(),
                   np.abs(centers[example, 0] - expected[::-1]).max()) < 1e-3
        np.testing.assert_allclose(layers[example, 0].sum(-1), frames[example, 0, ..., 0],
                                   atol=1e-6)
    # Two shapes that cross and overlap: each layer keeps its whole shape through the
    # overlap and after it, and each center moves by its shape's move, exactly.
    passing, alone, corners = _shapes_passing()
    centers, layers = (part.numpy()[0] for part in tracker(passing[None, ..., None]))
    if centers[0, 0, 1] > centers[0, 1, 1]:
        centers, layers = centers[:, ::-1], layers[..., ::-1]
    np.testing.assert_allclose(np.diff(centers, axis=0), np.diff(corners, axis=0), atol=1e-4)
    for k in range(2):
        np.testing.assert_allclose(layers[-1, ..., k], alone[k, -1], atol=1e-5)
    # A blank frame after one object: it stays where it was, with nothing in its layer.
    blank_after = np.stack([alone[0, 0], np.zeros((64, 64), "float32")])[None, ..., None]
    centers, layers = app.ObjectTracker(1)(blank_after)
    np.testing.assert_array_equal(centers[0, 1], centers[0, 0])
    np.testing.assert_array_equal(layers[0, 1], 0.0)
    with pytest.raises(ValueError, match="count, iterations and search must be >= 1"):
        app.ObjectTracker(2, search=0)


def _shapes_parting(seed, steps=8):
    """Two random 9x9 shapes that start on top of each other (within 3 pixels) and part at
    whole-pixel velocities of up to 3 pixels per axis: `(steps, 64, 64)` frames, and each
    shape alone `(2, steps, 64, 64)`."""
    rng = np.random.default_rng(seed)
    shapes = (rng.uniform(0.3, 1.0, (2, 9, 9)) * (rng.uniform(size=(2, 9, 9)) > 0.3))
    start, velocities = rng.integers(26, 30, (2, 2)), rng.integers(-3, 4, (2, 2))
    alone = np.zeros((2, steps, 64, 64), "float32")
    for k in range(2):
        for t in range(steps):
            row, column = start[k] + t * velocities[k]
            alone[k, t, row:row + 9, column:column + 9] = shapes[k]
    return alone.max(axis=0), alone


def test_object_tracker_mends_a_wrong_first_split_as_the_objects_part():
    """Shapes on top of each other in the first frame: k-means splits the pile wrongly, each
    layer holding parts of both. With `resplit` (build_model's default), the pixels no moved
    layer explains go to the object whose move explains them, and a frame whose objects
    stand apart is split afresh: after a few frames each layer is one whole shape, centered
    on it. Without it (the layer's default, for models saved before it), the two layers of
    these sequences end up following one shape."""
    for seed in (6, 16):
        frames, alone = _shapes_parting(seed)
        mended, stuck = (
            [part.numpy()[0] for part in app.ObjectTracker(2, resplit=resplit)(
                frames[None, ..., None])] for resplit in (True, False))

        def layer_error(layers, t):  # the two layers against the two shapes, either order
            return min(sum(np.abs(layers[t, ..., k] - alone[order[k], t]).max()
                           for k in range(2)) for order in ((0, 1), (1, 0)))

        assert layer_error(mended[1], 0) > 0.5  # The first split is wrong for both.
        assert layer_error(stuck[1], -1) > 0.5
        assert layer_error(mended[1], -1) < 1e-5
        # Each center is then its shape's center of mass.
        order = (0, 1) if np.abs(mended[1][-1, ..., 0] - alone[0, -1]).max() < 1e-5 else (1, 0)
        positions = np.indices((64, 64)).reshape(2, -1).T
        for k in range(2):
            shape = alone[order[k], -1].reshape(-1)
            np.testing.assert_allclose(mended[0][-1, k], shape @ positions / shape.sum(),
                                       atol=1e-3)


def test_object_tracker_tells_layers_apart_only_where_no_stroke_touches():
    layers = np.zeros((4, 64, 64, 2), "float32")
    layers[:, 10:20, 10:20, 0] = 1.0
    layers[:, 10:20, 22:32, 1] = 1.0  # Two pixels of background between them.
    layers[1, 15, 20, 1] = 1.0  # A side neighbor touches.
    layers[2, 20, 20, 1] = 0.5  # So does a diagonal one.
    layers[3, ..., 1] = 0.0
    layers[3, 40, 40, 1] = 1.0  # A layer with almost nothing.
    apart = app.ObjectTracker(2).apart(tf.constant(layers)).numpy()
    np.testing.assert_array_equal(apart, [True, False, False, False])
    mending = app.ObjectTracker.from_config(app.ObjectTracker(2, resplit=True).get_config())
    assert mending.resplit is True and app.ObjectTracker(2).resplit is False
    config = dataclasses.replace(app.SMOKE, **TRACKED)
    assert app.build_model(config).get_layer("tracker").resplit is True
    assert app.build_model(dataclasses.replace(config, track_resplit=False)).get_layer(
        "tracker").resplit is False


def test_object_tracker_matches_each_layer_at_its_best_whole_pixel_move():
    """`match` against a NumPy search over every move of up to 3 pixels: the least squared
    difference between the frame and the layer moved, zeros entering."""
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(3, 64, 64, 1)).astype("float32")
    layers = rng.uniform(size=(3, 64, 64, 2)).astype("float32")
    moves = app.ObjectTracker(2, search=3).match(tf.constant(frames), tf.constant(layers))
    for example in range(3):
        for k in range(2):
            best, best_move = np.inf, None
            for dy in range(-3, 4):
                for dx in range(-3, 4):
                    moved = np.zeros((64, 64), "float32")
                    source = layers[example, ..., k]
                    moved[max(dy, 0):64 + min(dy, 0), max(dx, 0):64 + min(dx, 0)] = source[
                        max(-dy, 0):64 + min(-dy, 0), max(-dx, 0):64 + min(-dx, 0)]
                    error = np.sum((frames[example, ..., 0] - moved) ** 2)
                    if error < best:
                        best, best_move = error, (dy, dx)
            np.testing.assert_array_equal(moves[example, k], best_move)


def test_loss_falls(data):
    keras.utils.set_random_seed(0)
    model = app.build_model(dataclasses.replace(app.SMOKE, learning_rate=3e-3), data)
    history = model.fit(data.train, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[2] < losses[0] and losses[2] < 0.9 * losses[0]


def test_keras_round_trip(model, data, tmp_path):
    app_checks.check_keras_round_trip(model, _frames(data), tmp_path)


def test_frame_loss_adds_the_ssim_term_that_blur_raises(data, tmp_path):
    _, truth = next(iter(data.validation))
    truth = truth[:4].numpy()
    # A blurred copy: each pixel the mean of its 5x5 neighbourhood.
    padded = np.pad(truth, [(0, 0), (0, 0), (2, 2), (2, 2), (0, 0)], mode="edge")
    blurred = np.mean([padded[:, :, i:i + 64, j:j + 64] for i in range(5) for j in range(5)],
                      axis=0)
    plain = keras.losses.BinaryCrossentropy()
    for prediction in (truth, blurred):
        ssim = tf.image.ssim(tf.constant(truth), tf.constant(prediction), max_val=1.0).numpy()
        assert ssim.shape == truth.shape[:2]
        expected = float(plain(truth, prediction)) + 0.5 * np.mean(1.0 - ssim)
        assert float(app.FrameLoss(0.5)(truth, prediction)) == pytest.approx(expected, rel=1e-5)
        assert float(app.FrameLoss(0.0)(truth, prediction)) == pytest.approx(
            float(plain(truth, prediction)), rel=1e-5)
    # The structural term is 0 for the truth itself and grows with blur.
    assert (float(app.FrameLoss(1.0)(truth, truth)) - float(plain(truth, truth))
            == pytest.approx(0.0, abs=1e-5))
    assert (float(app.FrameLoss(1.0)(truth, blurred)) - float(plain(truth, blurred))) > 0.05
    with pytest.raises(ValueError, match="ssim_weight and blur_weight must be >= 0"):
        app.FrameLoss(-1.0)
    with pytest.raises(ValueError, match="blur_sigma > 0"):
        app.FrameLoss(blur_weight=1.0, blur_sigma=0.0)
    # A model trained with it: the loss falls, and it survives saving.
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, ssim_loss_weight=0.5)
    model = app.build_model(config, data)
    # Epochs of 4 batches of 4 frames: with all 16 batches of 19 frames this was the slowest
    # test of the suite (3 minutes; a step with the SSIM term took 4 s on 2 cores).
    short = data.train.take(4).map(lambda inputs, targets: (inputs[:, :4], targets[:, :4]))
    losses = model.fit(short, epochs=2, verbose=0).history["loss"]
    assert losses[1] < losses[0]
    restored = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert restored.loss.ssim_weight == 0.5


def test_frame_loss_blurred_term_leads_a_move_all_the_way(data, tmp_path):
    truth = next(iter(data.validation))[1][:2, :3].numpy()  # (2, 3, 64, 64, 1)
    prediction = np.clip(truth + 0.1, 0, 1)
    # Against NumPy: zero-padded separable convolution with normalized Gaussian taps.
    sigma = 2.0
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()

    def blur(frames):
        along_rows = np.apply_along_axis(np.convolve, -3, frames, taps, mode="same")
        return np.apply_along_axis(np.convolve, -2, along_rows, taps, mode="same")

    plain = keras.losses.BinaryCrossentropy()
    expected = float(plain(truth, prediction)) + 0.3 * np.mean(
        np.sum((blur(truth) - blur(prediction)) ** 2, axis=(-3, -2, -1)))
    loss = app.FrameLoss(blur_weight=0.3, blur_sigma=sigma)
    assert float(loss(truth, prediction)) == pytest.approx(expected, rel=1e-4)
    # Why it is there: thin strokes (a cross of 1-pixel lines, as in MNIST digits) moved 3
    # pixels. As the move of the prediction goes from 0 to 3 pixels, the blurred term falls at
    # every step, while the cross-entropy of sharp frames has a minimum between whole pixels on
    # the way.
    frame = np.zeros((1, 64, 64, 1), "float32")
    frame[0, 20:40, 30] = frame[0, 30, 20:40] = 1.0
    target = app.translate_frames(tf.constant(frame), tf.constant([[0.0, 3.0]])).numpy()
    floor = app.REFERENCE_FLOOR
    blurred_terms, crossentropies = [], []
    for move in np.arange(0.0, 3.01, 0.25):
        moved = app.translate_frames(tf.constant(frame), tf.constant([[0.0, move]])).numpy()
        moved = floor + (1 - 2 * floor) * moved
        blurred_terms.append(np.sum((blur(target) - blur(moved)) ** 2))
        crossentropies.append(float(plain(target, moved)))
    assert np.all(np.diff(blurred_terms) < 0)
    assert np.any(np.diff(crossentropies) > 0)
    # A model trained with it survives saving.
    model = app.build_model(dataclasses.replace(app.SMOKE, blur_loss_weight=0.1,
                                                blur_loss_sigma=sigma), data)
    model.fit(data.train.take(2), verbose=0)
    restored = app_checks.check_keras_round_trip(model, _frames(data), tmp_path)
    assert (restored.loss.blur_weight, restored.loss.blur_sigma) == (0.1, sigma)


# Export and serving.

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
    assert main(["train", "nextframe", "--smoke", "--set", "epochs=1"]) == 0
    assert main(["evaluate", "nextframe"]) == 0
    run_dir = tmp_path / "runs" / "nextframe"
    report = json.loads((run_dir / "evaluation.json").read_text())["report"]
    for name in ("model", "copy_last_frame"):
        assert report[name]["mse"] > 0 and -1 <= report[name]["ssim"] <= 1
        assert len(report[name]["mse_by_frame"]) == app.SMOKE.output_frames
    assert (run_dir / "predictions.png").stat().st_size > 1000
    assert main(["export", "nextframe"]) == 0
    capsys.readouterr()
    assert main(["predict", "nextframe", "test:0", "test:1"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("frames predicted after") == 2 and "copying the last frame" in printed
