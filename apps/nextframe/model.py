"""Next-frame prediction, many-to-many: frames of a video in, the frames that follow out.

The objects of a sequence (Moving MNIST's digits) are followed by an `ObjectTracker`, which
learns nothing: it splits each frame into one layer per object and gives each object's center.
The Elman cell is stepped on each object apart (`ObjectwiseCell`: one state per object, the
same W, U, V for all) and reads where its object is and its last move; a dense layer turns each
output into the object's next move. A predicted frame is the last given frame's layers, each
moved by its object's moves added up:

    frames x_1 .. x_t                                                  # (batch, time, 64, 64, 1)
      -> ObjectTracker: each object's center and layer                  # (batch, time, objects, 2)
      -> per object: s_t = f(W s_{t-1} + U [center_t, move_t] + b),     # (batch, time, objects * V)
         o_t = relu(V s_t + c)
      -> MoveDecoder: move_{t+1} = move_t + max_step * tanh(dense(o_t, center_t, move_t))
      -> the layers of x_t moved by move_{t+1}: the prediction of x_{t+1}

Strictly causal: the prediction of frame t+1 depends on frames 1..t only. `rollout_centers` is
the one rollout, used for training, validation, evaluation and the SavedModel: the cell reads
the given frames' objects, then where it put them itself. Training needs no frame: the tracker
follows the training sequences once, and each step rolls the cell out on the centers against
the tracked ones (a Huber loss in pixels).

The app contract the shared core relies on: `NAME`, `Config`, `PRESETS`, `SMOKE`, `MONITOR`,
`EXAMPLES`, `load_data`, `build_model`, `search_space`, `export_signatures`,
`prediction_request`, `warmup_requests`, `describe_prediction`, `evaluation_report` and `headline`.
"""

import dataclasses
import functools
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from elman import distribute
from elman.apps.nextframe.tracker import ObjectTracker, tracked_moves, translate_layers
from elman.datasets import moving_mnist
from elman.layers import ElmanCell, ObjectwiseCell

NAME = "nextframe"
MONITOR = "val_loss"
FRAME_SIZE = moving_mnist.FRAME_SIZE
# What `elman demo` and `elman predict nextframe` show: test sequences by index.
EXAMPLES = ("test:0", "test:1")
MAX_PREDICTED_FRAMES = 100
# The seed of the fixed test set: test sequence i is the same for every config and machine.
TEST_SEED = 10_000
# Sequences per batch when the tracker follows the training sequences (6 ms a sequence).
TRACKING_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Config:
    # Where the MNIST digits are: empty means $ELMAN_DATA_DIR, and without it synthetic shapes.
    data_dir: str = ""
    # The standard protocol: 10 frames in, the next 10 predicted (sequences of 20 frames).
    input_frames: int = 10
    output_frames: int = 10
    # Digits drawn in each sequence; the tracker follows as many objects.
    digits_per_sequence: int = 2
    # Sequences per split: training sequences are drawn from the training digits and tracked
    # once (the first epoch: 13-15 minutes for 65,536 on 2 cores), the test set is fixed
    # (sequence i is a pure function of the seed and i).
    train_sequences: int = 65536
    validation_sequences: int = 256
    test_sequences: int = 10000
    # k-means rounds of the tracker's split of the first frame.
    track_iterations: int = 5
    # Size of each object's Elman state s_t, f its activation, and the size of o_t = V s_t + c.
    hidden_units: int = 256
    activation: str = "tanh"
    output_units: int = 256
    # The largest change of an object's move from one frame to the next, pixels per axis.
    max_step: float = 6.0
    # Adam's rate, decayed to 0 along a cosine over the epochs; gradient clipping by global
    # norm (0 disables it).
    learning_rate: float = 3e-3
    clipnorm: float = 1.0
    batch_size: int = 256
    # Each epoch is 256 steps of about 60 ms after the first; the best epoch is among the
    # last (the 90th of 100 on 2026-12-07), as the learning rate reaches 0. patience=epochs:
    # the cosine schedule, not early stopping, ends the run.
    epochs: int = 100
    patience: int = 100
    seed: int = 0


# A tiny preset for tests and the demo: seconds, not minutes, on synthetic shapes (beats
# copying the last frame: MSE 250 against 461, SSIM 0.62 against 0.49).
SMOKE = Config(train_sequences=512, validation_sequences=32, test_sequences=64, hidden_units=32,
               output_units=32, batch_size=32, learning_rate=1e-2, epochs=5, patience=5)
# Named presets (`elman train nextframe --preset NAME`): "default" is the best recipe measured.
PRESETS = {"default": Config(), "demo": SMOKE, "smoke": SMOKE}


def search_space(hp, config):
    """The tuner's search space: returns `config` with the searched values set from `hp`."""
    return dataclasses.replace(
        config,
        hidden_units=hp.Choice("hidden_units", [128, 256, 512]),
        output_units=hp.Choice("output_units", [64, 128, 256]),
        learning_rate=hp.Float("learning_rate", 1e-3, 1e-2, sampling="log"),
    )


# Data.

@dataclasses.dataclass
class Data:
    """Splits as `tf.data` datasets: training batches are the tracker's centers of whole
    sequences `(batch, frames, objects, 2)`; validation and test batches are
    `(frames[:, :-1], frames[:, 1:])` float pairs in [0, 1]; and the generator of the fixed
    test sequences (for `evaluation_report`)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    test_sequences: callable  # indices -> (n, frames, 64, 64) uint8
    source: str


def _frame_pairs(config, digits, count, seed, batch_size=None):
    frames = config.input_frames + config.output_frames

    def generate(indices):
        return moving_mnist.moving_sequences(digits, indices, seed, frames,
                                             config.digits_per_sequence)

    def to_pairs(indices):
        sequences = tf.numpy_function(generate, [indices], tf.uint8)
        sequences = tf.reshape(sequences, [-1, frames, FRAME_SIZE, FRAME_SIZE, 1])
        sequences = tf.cast(sequences, tf.float32) / 255.0
        return sequences[:, :-1], sequences[:, 1:]

    data = tf.data.Dataset.range(count).batch(batch_size or config.batch_size).map(
        to_pairs, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE), generate


def _tracked_split(config, digits, count, seed):
    """The tracker's centers of a split's sequences, `(batch, frames, objects, 2)` batches:
    tracked once, while the first epoch reads them, then cached and reshuffled every epoch."""
    frames, _ = _frame_pairs(config, digits, count, seed, batch_size=TRACKING_BATCH)
    tracker = ObjectTracker(config.digits_per_sequence, config.track_iterations)
    centers = frames.map(lambda inputs, targets: tracker(whole_sequences(inputs, targets))[0])
    centers = centers.unbatch().cache().shuffle(count, seed=config.seed,
                                                reshuffle_each_iteration=True)
    return centers.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def load_data(config):
    """Moving MNIST from the data directory's digits (or synthetic shapes without one)."""
    if config.input_frames < 2 or config.output_frames < 1:
        raise ValueError("input_frames must be at least 2 (a move needs two frames) and "
                         "output_frames at least 1, received "
                         f"{config.input_frames} and {config.output_frames}")
    digits = moving_mnist.load_digits(config.data_dir or None)
    # Different seeds keep the three splits' sequences apart; validation and train share the
    # training digits, test has its own.
    train = _tracked_split(config, digits["train"], config.train_sequences, config.seed + 1)
    validation, _ = _frame_pairs(config, digits["train"], config.validation_sequences,
                                 config.seed + 2)
    test, generate_test = _frame_pairs(config, digits["test"], config.test_sequences, TEST_SEED)
    return Data(train=train, validation=validation, test=test, test_sequences=generate_test,
                source=digits["source"])


def whole_sequences(inputs, targets):
    """The sequences of a `(frames[:, :-1], frames[:, 1:])` pair: the first input frame, then
    the targets."""
    return ops.concatenate([inputs[:, :1], targets], axis=1)


# The model.

def track_features(centers, moves):
    """What the Elman cell reads of the tracked objects: `centers` `(..., objects, 2)` and their
    last `moves` `(..., objects, 2)` in pixels -> `(..., 4 * objects)`, object after object
    (object k's are `[..., 4 * k:4 * k + 4]`, what `ObjectwiseCell` splits): its center scaled
    to [-1, 1], then its move divided by 4 (about one step of Moving MNIST's digits)."""
    half = (FRAME_SIZE - 1) / 2
    features = ops.concatenate([(centers - half) / half, moves / 4.0], axis=-1)
    return ops.concatenate([features[..., k, :] for k in range(centers.shape[-2])], axis=-1)


@keras.saving.register_keras_serializable(package="elman")
class MoveDecoder(keras.layers.Layer):
    """Moves each object, and draws the frame: the recurrent output of each object, with its
    center and last move, chooses its next move, `last move + max_step * tanh(dense(o, center,
    move))` (the same speed unless the cell sees a reason to change it: a bounce, or a better
    estimate); a frame is the objects' layers moved, combined by their maximum, as the digits
    combine.

    Args:
        objects: int >= 1.
        max_step: float > 0, the largest change of a move, pixels per axis. Default: 6.

    Call arguments:
        inputs: `[outputs, features, moves, layers]`: the recurrent outputs `(batch, time,
            objects * output_size)`, what the cell read (`track_features`, `(batch, time, 4 *
            objects)`), the objects' last moves `(batch, time, objects, 2)` and their layers
            `(batch, time, 64, 64, objects)` in the frames read.

    Returns:
        `(batch, time, 64, 64, 1)`: output t, frame t's layers moved by the next move, predicts
        frame t + 1.
    """

    def __init__(self, objects, max_step=6.0, **kwargs):
        super().__init__(**kwargs)
        if int(objects) < 1 or max_step <= 0:
            raise ValueError("objects must be >= 1 and max_step > 0, received "
                             f"objects={objects}, max_step={max_step}")
        self.objects, self.max_step = int(objects), float(max_step)
        # Small random moves, a different one for each input: at whole-pixel offsets (zero) a
        # bilinear translation has no gradient with respect to the offset.
        self.steps = keras.layers.Dense(
            2, kernel_initializer=keras.initializers.RandomNormal(stddev=2e-2, seed=0))

    def build(self, input_shape):
        # One object's output, center and last move.
        self.steps.build((None, input_shape[0][-1] // self.objects + 4))

    def moves(self, output, features, last_moves):
        """One step: `output` `(n, objects * output_size)`, the features the cell read `(n, 4 *
        objects)` and `last_moves` `(n, objects, 2)` -> the next moves `(n, objects, 2)`,
        `(dy, dx)` in pixels."""
        inputs = ops.concatenate([
            ops.reshape(output, (-1, self.objects, output.shape[-1] // self.objects)),
            ops.reshape(features, (-1, self.objects, 4))], axis=-1)
        return last_moves + self.max_step * ops.tanh(self.steps(inputs))

    def draw(self, layers, offsets):
        """`layers` `(batch, time, 64, 64, objects)` moved by `offsets` `(batch, time, objects,
        2)` and combined -> frames `(batch, time, 64, 64, 1)`."""
        batch, time = ops.shape(offsets)[0], ops.shape(offsets)[1]
        moved = translate_layers(ops.reshape(layers, (-1, FRAME_SIZE, FRAME_SIZE, self.objects)),
                                 ops.reshape(offsets, (-1, self.objects, 2)))
        return ops.reshape(ops.max(moved, axis=-1), (batch, time, FRAME_SIZE, FRAME_SIZE, 1))

    def draw_rollout(self, layers, centers, predicted):
        """One frame's `layers` `(batch, 64, 64, objects)`, whose objects are at `centers`
        `(batch, objects, 2)`, moved to each of the `predicted` centers `(batch, time, objects,
        2)` -> frames `(batch, time, 64, 64, 1)`."""
        time = ops.shape(predicted)[1]
        return self.draw(ops.repeat(layers[:, None], time, axis=1), predicted - centers[:, None])

    def call(self, inputs):
        outputs, features, last_moves, layers = inputs
        batch, time = ops.shape(outputs)[0], ops.shape(outputs)[1]
        moves = self.moves(ops.reshape(outputs, (-1, outputs.shape[-1])),
                           ops.reshape(features, (-1, features.shape[-1])),
                           ops.reshape(last_moves, (-1, self.objects, 2)))
        return self.draw(layers, ops.reshape(moves, (batch, time, self.objects, 2)))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:2], FRAME_SIZE, FRAME_SIZE, 1)

    def get_config(self):
        return {**super().get_config(), "objects": self.objects, "max_step": self.max_step}


def build_model(config, data=None, recurrent_layer=None):
    """Builds and compiles the next-frame model.

    Input `frames` `(batch, time, 64, 64, 1)` float in [0, 1]; output the prediction of each
    next frame from the true frames before it, same shape (output t predicts input t + 1).
    `predict_frames` rolls it forward.

    Args:
        config: the `Config`.
        data: unused (the model needs no vocabulary); kept for the app contract.
        recurrent_layer: optional `keras.layers.RNN` whose cell is stepped on each object
            instead of `ElmanCell` (a reference, e.g. a gated cell).
    """
    objects = config.digits_per_sequence
    cell = recurrent_layer.cell if recurrent_layer is not None else ElmanCell(
        config.hidden_units, output_units=config.output_units, output_activation="relu",
        activation=config.activation)
    frames = keras.Input(shape=(None, FRAME_SIZE, FRAME_SIZE, 1), name="frames")
    centers, layers = ObjectTracker(objects, config.track_iterations, name="tracker")(frames)
    recurrent = keras.layers.RNN(ObjectwiseCell(cell, objects), return_sequences=True,
                                 name="recurrent")
    last_moves = tracked_moves(centers)
    features = track_features(centers, last_moves)  # (batch, time, 4 * objects)
    # (batch, time, objects * output_units): o_t = relu(V s_t + c) of each object.
    outputs = recurrent(features)
    predicted = MoveDecoder(objects, config.max_step, name="decoder")(
        [outputs, features, last_moves, layers])
    model = NextFrameModel(frames, predicted, input_frames=config.input_frames,
                           name="nextframe_elman")
    steps_per_epoch = -(-config.train_sequences // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                      config.epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(schedule, clipnorm=config.clipnorm or None),
                  metrics=["mse", "mae"])
    return model


def rollout_centers(model, centers, num_frames, training=False):
    """Where the model puts the objects: it reads the given frames' objects, then where it put
    them itself. The one rollout of the app (training, validation, evaluation, SavedModel).

    Args:
        model: a model from `build_model`.
        centers: `(batch, given, objects, 2)` the tracker's centers of the given frames, in
            pixels, given >= 1.
        num_frames: int or int32 scalar tensor >= 1, the frames predicted after them.
        training: bool.

    Returns:
        `(batch, given - 1 + num_frames, objects, 2)`: output t is where the model puts the
        objects in frame t + 1 (from the last given frame on, reading its own outputs).
    """
    cell = model.get_layer("recurrent").cell
    decoder = model.get_layer("decoder")
    centers = ops.convert_to_tensor(centers, "float32")
    moves = tracked_moves(centers)
    unrolled = centers.shape[1] is not None and isinstance(num_frames, int)
    given = centers.shape[1] if unrolled else ops.shape(centers)[1]

    def step(t, center, move, states):
        # A given frame's objects; afterwards, where the step before put them.
        if unrolled:
            center, move = (centers[:, t], moves[:, t]) if t < given else (center, move)
        else:
            index = ops.minimum(t, given - 1)
            center = ops.where(t < given, centers[:, index], center)
            move = ops.where(t < given, moves[:, index], move)
        features = track_features(center, move)
        output, states = cell(features, states, training=training)
        move = decoder.moves(output, features, move)
        return center + move, move, list(states)

    carry = (centers[:, 0], moves[:, 0], list(cell.get_initial_state(ops.shape(centers)[0])))
    if unrolled:
        # Known lengths (training, validation): a Python loop, which TensorFlow runs (and
        # differentiates) three times faster than a graph loop (36 against 102 ms a step).
        predicted = []
        for t in range(given - 1 + num_frames):
            carry = step(t, *carry)
            predicted.append(carry[0])
        return ops.stack(predicted, axis=1)

    def loop_step(t, center, move, states, predicted):
        center, move, states = step(t, center, move, states)
        return t + 1, center, move, states, predicted.write(t, center)

    steps = given - 1 + num_frames
    *_, predicted = tf.while_loop(lambda t, *_: t < steps, loop_step,
                                  (tf.constant(0), *carry, tf.TensorArray(tf.float32, steps)))
    return ops.transpose(predicted.stack(), (1, 0, 2, 3))


def track_loss(predicted, tracked):
    """The Huber loss (delta 1 pixel) between predicted and tracked centers, averaged over the
    batch, steps, objects and axes; no gradient flows into `tracked`."""
    return ops.mean(keras.losses.huber(ops.stop_gradient(tracked), predicted, delta=1.0))


@keras.saving.register_keras_serializable(package="elman")
class NextFrameModel(keras.Model):
    """A functional next-frame model that trains on tracked centers and validates on frames,
    both through `rollout_centers`.

    Built like `keras.Model(inputs, outputs)`. A training batch is the tracker's centers of
    whole sequences `(batch, frames, objects, 2)`: the cell reads the first `input_frames`,
    then its own, and the loss is `track_loss` against the tracked centers. A validation (or
    test) batch is a `(frames[:, :-1], frames[:, 1:])` pair: the loss is the same, against
    the tracker's centers of the true frames, and the metrics compare the frames drawn after
    the first `input_frames` with the true ones. Calling the model (and `predict`) reads the
    true frames at every step.

    Args:
        input_frames: int >= 2, the true frames read before the model reads its own.
        *args, **kwargs: those of `keras.Model` (inputs, outputs, name).
    """

    def __init__(self, *args, input_frames=10, **kwargs):
        super().__init__(*args, **kwargs)
        if int(input_frames) < 2:
            raise ValueError(f"input_frames must be >= 2, received input_frames={input_frames}")
        self.input_frames = int(input_frames)

    def get_config(self):
        return {**super().get_config(), "input_frames": self.input_frames}

    def _centers_loss(self, centers, training):
        predicted = rollout_centers(self, centers[:, :self.input_frames],
                                    centers.shape[1] - self.input_frames, training)
        return track_loss(predicted, centers[:, 1:]), predicted

    def train_step(self, data):
        centers = keras.utils.unpack_x_y_sample_weight(data)[0]
        if centers.shape.rank != 4 or centers.shape[-1] != 2:
            raise ValueError("the next-frame model trains on tracked centers (batch, time, "
                             f"objects, 2), received a batch of shape {centers.shape}: use "
                             "load_data's train split")
        with tf.GradientTape() as tape:
            loss, _ = self._centers_loss(centers, training=True)
            share = distribute.global_batch_share(loss, ops.shape(centers)[0])
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(share, weights), weights))
        self._loss_tracker.update_state(loss, sample_weight=ops.shape(centers)[0])
        return {"loss": self._loss_tracker.result()}

    def test_step(self, data):
        inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        centers, layers = self.get_layer("tracker")(whole_sequences(inputs, targets))
        loss, predicted = self._centers_loss(centers, training=False)
        last = self.input_frames - 1  # The last true frame: its layers are moved.
        frames = self.get_layer("decoder").draw_rollout(layers[:, last], centers[:, last],
                                                        predicted[:, last:])
        self._loss_tracker.update_state(loss, sample_weight=ops.shape(inputs)[0])
        return self.compute_metrics(inputs, targets[:, last:], frames)

    def get_metrics_result(self):
        # Training draws no frame: the frame metrics are built by the first validation, and
        # until then (the first training epoch) they have no result.
        results = {}
        for metric in self.metrics:
            if getattr(metric, "built", True):
                result = metric.result()
                results.update(result if isinstance(result, dict) else {metric.name: result})
        return results


# predict_frames builds its own graph loop, so AutoGraph has nothing to convert.
@tf.autograph.experimental.do_not_convert
def predict_frames(model, frames, num_frames):
    """Rolls the model forward: reads `frames`, then predicts `num_frames` more.

    Args:
        model: a model from `build_model`.
        frames: `(batch, time, 64, 64, 1)` float in [0, 1], time >= 1.
        num_frames: int (or int32 scalar tensor) >= 1.

    Returns:
        `(batch, num_frames, 64, 64, 1)` float in [0, 1]: the last given frame's layers, each
        moved to where the model puts its object.
    """
    frames = tf.convert_to_tensor(frames, tf.float32)
    centers, layers = model.get_layer("tracker")(frames)
    predicted = rollout_centers(model, centers, num_frames)[:, -num_frames:]
    return model.get_layer("decoder").draw_rollout(layers[:, -1], centers[:, -1], predicted)


def export_signatures(model):
    """Serving signatures: `frames` `[batch, time, 64, 64, 1]` and `num_frames` (int32 scalar,
    1 to 100) -> `predicted_frames` `[batch, num_frames, 64, 64, 1]` and `valid` `[batch]`.

    `serving_default` takes and returns float32 in [0, 1]; `serving_uint8` takes and returns
    uint8 pixels (0-255), as frames are stored. A sequence with a value outside [0, 1] (NaN
    included) gets `valid` false and black frames, and costs the others nothing; a request in
    which no sequence is valid is an error that says why (most often 0-255 pixels sent as
    floats).
    """
    frames_shape = [None, None, FRAME_SIZE, FRAME_SIZE, 1]

    def checked(frames, num_frames):
        return [
            tf.debugging.assert_greater_equal(tf.shape(frames)[1], 1,
                                              message="frames must hold at least one frame"),
            tf.debugging.assert_greater_equal(num_frames, 1,
                                              message="num_frames must be at least 1"),
            tf.debugging.assert_less_equal(num_frames, MAX_PREDICTED_FRAMES,
                                           message=f"num_frames must be at most "
                                           f"{MAX_PREDICTED_FRAMES}"),
        ]

    @tf.function(input_signature=[tf.TensorSpec(frames_shape, tf.float32, name="frames"),
                                  tf.TensorSpec([], tf.int32, name="num_frames")])
    def serving_default(frames, num_frames):
        # Signatures loaded from a SavedModel do not enforce the declared shape: checked here,
        # before the first reshape would fail with a message about tensor sizes.
        frames = tf.ensure_shape(frames, frames_shape)
        # (batch,): every value in [0, 1]; a comparison with NaN is false.
        valid = tf.reduce_all((frames >= 0.0) & (frames <= 1.0), axis=[1, 2, 3, 4])
        checks = checked(frames, num_frames) + [tf.debugging.Assert(
            tf.reduce_any(valid) | (tf.size(valid) == 0),
            ["frames must be in [0, 1] (for 0-255 pixels use the serving_uint8 signature); "
             "no sequence of the request is"])]
        with tf.control_dependencies(checks):
            mask = tf.cast(valid, tf.float32)[:, None, None, None, None]
            predicted = predict_frames(model, tf.where(mask > 0, frames, 0.0), num_frames)
        return {"predicted_frames": predicted * mask, "valid": valid}

    @tf.function(input_signature=[tf.TensorSpec(frames_shape, tf.uint8, name="frames"),
                                  tf.TensorSpec([], tf.int32, name="num_frames")])
    def serving_uint8(frames, num_frames):
        frames = tf.ensure_shape(frames, frames_shape)
        with tf.control_dependencies(checked(frames, num_frames)):
            predicted = predict_frames(model, tf.cast(frames, tf.float32) / 255.0, num_frames)
        # Every uint8 sequence is a valid one; the output says so, as serving_default's does.
        return {"predicted_frames": tf.cast(tf.round(predicted * 255.0), tf.uint8),
                "valid": tf.ones([tf.shape(frames)[0]], tf.bool)}

    return {"serving_default": serving_default, "serving_uint8": serving_uint8}


def _as_frames(array, origin):
    """A `(batch, time, 64, 64, 1)` float32 array in [0, 1] from `.npy` contents, or a clear
    error."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[None]
    if array.ndim == 4:
        array = array[..., None]
    if array.ndim != 5 or array.shape[2:] != (FRAME_SIZE, FRAME_SIZE, 1):
        raise ValueError(f"{origin}: frames must have shape (time, 64, 64), (batch, time, 64, "
                         f"64) or (batch, time, 64, 64, 1), received {array.shape}")
    if array.dtype == np.uint8:
        return array.astype("float32") / 255.0
    if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
        raise ValueError(f"{origin}: frames must be uint8 (0-255) or float in [0, 1], received "
                         f"{array.dtype} in [{array.min()}, {array.max()}]")
    return array.astype("float32")


@functools.lru_cache(maxsize=2)
def _test_digits(data_dir):
    """The test digits, read once per process (`prediction_request` and `describe_prediction`
    both need them)."""
    return moving_mnist.load_digits(data_dir or None)["test"]


def example_sequence(index, config=None):
    """Test sequence `index` -> `(input frames, true next frames)`, `(1, time, 64, 64, 1)`
    float32 in [0, 1] each (`elman predict nextframe test:N` and the page's examples)."""
    config = config or Config()
    sequence = moving_mnist.moving_sequence(
        _test_digits(config.data_dir), index, TEST_SEED,
        config.input_frames + config.output_frames,
        config.digits_per_sequence)[None, ..., None].astype("float32") / 255.0
    return sequence[:, :config.input_frames], sequence[:, config.input_frames:]


def _example(name, config=None):
    """`test:N` -> `(input frames, true next frames)` of test sequence N, or `.npy` frames."""
    if name.startswith("test:"):
        return example_sequence(int(name.split(":", 1)[1]), config)
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"expected a .npy file of frames or test:N, received {name!r}")
    return _as_frames(np.load(path), name), None


def prediction_request(inputs):
    """The command line's inputs (`.npy` files of frames, or `test:N` for test sequence N) ->
    the signature's keyword arguments (all inputs must have the same number of frames)."""
    if not inputs:
        raise ValueError("elman predict nextframe expects .npy files of frames or test:N, "
                         "received none")
    frames = [_example(name)[0] for name in inputs]
    if len({array.shape[1] for array in frames}) > 1:
        raise ValueError("all inputs must have the same number of frames, received "
                         f"{[array.shape[1] for array in frames]}")
    return {"frames": tf.constant(np.concatenate(frames)),
            "num_frames": tf.constant(Config().output_frames, tf.int32)}


def warmup_requests():
    """`{signature: inputs}` that TF Serving replays when it loads the model: the examples."""
    request = prediction_request(EXAMPLES)
    pixels = tf.cast(tf.round(request["frames"] * 255.0), tf.uint8)
    return {"serving_default": request,
            "serving_uint8": {"frames": pixels, "num_frames": request["num_frames"]}}


def describe_prediction(inputs, outputs):
    """One line per input: frames predicted and, for test sequences, the per-frame MSE against
    the truth beside copying the last frame."""
    predicted = outputs["predicted_frames"].numpy()
    lines = []
    offset = 0
    for name in inputs:
        given, truth = _example(name)
        ours = predicted[offset:offset + len(given)]
        offset += len(given)
        line = f"{name}: {ours.shape[1]} frames predicted after {given.shape[1]}"
        if truth is not None:
            copy_last = np.repeat(given[:, -1:], truth.shape[1], axis=1)
            line += (f"; MSE per frame {frame_errors(ours, truth)['mse'].mean():.1f} "
                     f"(copying the last frame: "
                     f"{frame_errors(copy_last, truth)['mse'].mean():.1f})")
        lines.append(line)
    return lines


# Evaluation: per-frame MSE, MAE and SSIM on the fixed test set, beside copy-last-frame.

def frame_errors(predicted, truth):
    """Per sequence and frame `(batch, time)`: squared and absolute errors summed over the
    pixels (OpenSTL's MSE and MAE), and SSIM; arrays `(batch, time, 64, 64, 1)` in [0, 1]."""
    error = predicted - truth
    return {"mse": np.sum(error ** 2, axis=(2, 3, 4)),
            "mae": np.sum(np.abs(error), axis=(2, 3, 4)),
            "ssim": tf.image.ssim(tf.constant(predicted), tf.constant(truth), max_val=1.0).numpy()}


def headline(metrics):
    """`elman demo`'s summary of an evaluation: `(result, baseline)`."""
    model, copy = metrics["report"]["model"], metrics["report"]["copy_last_frame"]
    return (f"MSE {model['mse']:.1f}, SSIM {model['ssim']:.3f} per predicted frame",
            f"copying the last frame: MSE {copy['mse']:.1f}, SSIM {copy['ssim']:.3f}")


def evaluation_report(model, data, run_dir=None, config=None, log=print, batch_size=100):
    """10 -> 10 on the fixed test set: MSE, MAE, SSIM for the model and copy-last-frame, and a
    PNG of input / truth / prediction for three sequences (`RUN_DIR/predictions.png`) and the
    same sequences as a moving picture (`RUN_DIR/predictions.gif`)."""
    config = config or Config()
    rollout = tf.function(lambda frames: predict_frames(model, frames, config.output_frames))
    errors = {"model": [], "copy_last_frame": []}
    log(f"[elman] nextframe: predicting {config.test_sequences} test sequences "
        f"({config.input_frames} -> {config.output_frames})")
    examples = None
    progress = keras.utils.Progbar(config.test_sequences, unit_name="sequence")
    for start in range(0, config.test_sequences, batch_size):
        indices = np.arange(start, min(start + batch_size, config.test_sequences))
        sequences = data.test_sequences(indices)[..., None].astype("float32") / 255.0
        given, truth = sequences[:, :config.input_frames], sequences[:, config.input_frames:]
        predicted = rollout(tf.constant(given)).numpy()
        copy_last = np.repeat(given[:, -1:], config.output_frames, axis=1)
        for name, guess in (("model", predicted), ("copy_last_frame", copy_last)):
            errors[name].append(frame_errors(guess, truth))
        if examples is None:
            examples = (given[:3], truth[:3], predicted[:3])
        progress.add(len(indices))
    report = {}
    for name, parts in errors.items():
        # (sequences, time) per metric: the means over both, and MSE by frame index.
        joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        report[name] = {key: float(values.mean()) for key, values in joined.items()}
        report[name]["mse_by_frame"] = joined["mse"].mean(axis=0).tolist()
        log(f"[elman] nextframe: {name}: MSE {report[name]['mse']:.1f}, "
            f"MAE {report[name]['mae']:.1f}, SSIM {report[name]['ssim']:.3f}")
    if run_dir is not None:
        Path(run_dir, "frames.json").write_text(json.dumps(report, indent=2) + "\n")
        path = plot_predictions(*examples, Path(run_dir) / "predictions.png")
        animation = animate_predictions(*examples, Path(run_dir) / "predictions.gif")
        log(f"[elman] nextframe: pictures in {path} and {animation}")
    return report


def plot_predictions(given, truth, predicted, path):
    """Writes a PNG: for each sequence, rows of input, true and predicted frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sequences, frames = len(given), max(given.shape[1], truth.shape[1])
    figure, axes = plt.subplots(3 * sequences, frames, figsize=(frames, 3 * sequences),
                                squeeze=False)
    for index in range(sequences):
        for row, (label, images) in enumerate((("input", given), ("truth", truth),
                                               ("predicted", predicted))):
            for column in range(frames):
                axis = axes[3 * index + row, column]
                axis.axis("off")
                if column < images.shape[1]:
                    axis.imshow(images[index, column, ..., 0], cmap="gray", vmin=0, vmax=1)
            axes[3 * index + row, 0].set_title(f"{label} {index}", fontsize=7, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def animate_predictions(given, truth, predicted, path, seconds_per_frame=0.25):
    """Writes an animated GIF: each sequence's frames in time, the truth above the prediction.

    Args:
        given: `(sequences, input_frames, height, width, 1)` frames in [0, 1].
        truth: `(sequences, output_frames, height, width, 1)`, the frames that followed.
        predicted: the model's frames, shaped like `truth`.
        path: where the GIF goes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import ArtistAnimation, PillowWriter

    sequences = len(given)
    figure, axes = plt.subplots(2, sequences, figsize=(1.6 * sequences, 3.4), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    pictures = []
    for step in range(given.shape[1] + truth.shape[1]):
        artists = []
        future = step - given.shape[1]  # The frame's index among the predicted ones.
        for index in range(sequences):
            rows = ((given[index, step],) * 2 if future < 0
                    else (truth[index, future], predicted[index, future]))
            for row, image in enumerate(rows):
                artists.append(axes[row, index].imshow(image[..., 0], cmap="gray", vmin=0,
                                                       vmax=1, animated=True))
        label = (f"given frame {step + 1}" if future < 0
                 else f"frame {step + 1}: truth (top), predicted (bottom)")
        artists.append(figure.text(0.5, 0.02, label, ha="center", fontsize=8))
        pictures.append(artists)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    ArtistAnimation(figure, pictures).save(
        path, writer=PillowWriter(fps=1 / seconds_per_frame), dpi=80)
    plt.close(figure)
    return path
