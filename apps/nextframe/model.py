"""Next-frame prediction, many-to-many: frames of a video in, the frames that follow out.

Each frame is encoded by a small CNN, an Elman cell carries what it has seen from frame to
frame in a latent space, and its output weight V maps the state to the input of a per-frame
decoder, which draws the next frame:

    frames x_1 .. x_t                                                  # (batch, time, 64, 64, 1)
      -> FrameEncoder, each frame alone: a latent vector, and 32x32     # (batch, time, latent_dim)
         feature maps passed to the decoder (a skip connection)
      -> ElmanRNN(ElmanCell): s_t = f(W s_{t-1} + U z_t + b),           # (batch, time, latent_dim)
         o_t = relu(V s_t + c)
      -> FrameDecoder, each step alone: the prediction of x_{t+1}      # (batch, time, 64, 64, 1)
         (drawn from scratch; or with `decoder="transform"` by moving x_t's own pixels
         with kernels chosen from o_t and mixing them with per-pixel masks; or with
         `decoder="reference"` by moving layers of the last true frame by displacements
         that o_t chooses and a rollout adds up; with `reference_split="tracks"` the layers
         are objects that an `ObjectTracker` follows through the frames, and the cell
         reads where they are beside the latent vector)

Strictly causal: the prediction of frame t+1 depends on frames 1..t only (the encoder and
decoder see one frame each; the recurrence runs forward). `predict_frames` feeds the model its
own predictions to roll k frames forward, in a graph loop, so the exported SavedModel predicts
by itself. Training can do the same (`train_on_rollouts`, `RolloutModel`): it reads the
`input_frames` true frames, then its own predictions, as at test time; without it, each next
frame is predicted from the true frames (teacher forcing).

The app contract the shared core relies on: `NAME`, `Config`, `SMOKE`, `MONITOR`, `EXAMPLES`,
`load_data`, `build_model`, `search_space`, `export_signatures`, `prediction_request`,
`describe_prediction` and `evaluation_report`.
"""

import dataclasses
import functools
import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers as keras_layers
from keras import ops

from elman.datasets import moving_mnist
from elman.layers import ElmanCell, ElmanRNN

NAME = "nextframe"
MONITOR = "val_loss"
FRAME_SIZE = moving_mnist.FRAME_SIZE
# What `elman demo` and `elman predict nextframe` show: test sequences by index.
EXAMPLES = ("test:0", "test:1")
MAX_PREDICTED_FRAMES = 100
DECODERS = ("pixels", "transform", "reference")
REFERENCE_SPLITS = ("learned", "tracks")
# The darkest and brightest pixel of a reference decoder's frames in training: REFERENCE_FLOOR
# and 1 minus it (`floored`). Its predictions (`predict_frames`, the SavedModel) have no floor:
# a background of 0.005 instead of 0 cost 0.14 of SSIM (0.872 -> 0.730 on 200 test sequences,
# the same model), whose luminance term is severe on dark regions.
REFERENCE_FLOOR = 0.005
# The faintest pixel that `ObjectTracker.apart` counts as part of an object.
VISIBLE = 0.05
# The seed of the fixed test set: test sequence i is the same for every config and machine.
TEST_SEED = 10_000


@dataclasses.dataclass(frozen=True)
class Config:
    # Where the MNIST digits are: empty means $ELMAN_DATA_DIR, and without it synthetic shapes.
    data_dir: str = ""
    # The standard protocol: 10 frames in, the next 10 predicted (sequences of 20 frames).
    input_frames: int = 10
    output_frames: int = 10
    digits_per_sequence: int = 2
    # Sequences per split: training sequences are drawn afresh from the training digits, the
    # test set is fixed (sequence i is a pure function of the seed and i).
    train_sequences: int = 10000
    validation_sequences: int = 1000
    test_sequences: int = 10000
    # The per-frame CNN: filters of its first layer (doubled twice), and the latent size.
    filters: int = 16
    latent_dim: int = 256
    # Size of the Elman state s_t and f, its activation.
    hidden_units: int = 512
    activation: str = "tanh"
    learning_rate: float = 1e-3
    # Gradient clipping by global norm (0 disables it).
    clipnorm: float = 1.0
    # Train (and validate) on the model's own rollouts: after the first `input_frames` true
    # frames, each step reads the frame the model predicted, as in 10 -> 10 prediction, and
    # the gradient flows back through those predictions. Off: every step reads the true frame
    # (teacher forcing). Measured (README): rollouts lower the MSE of later frames by blurring
    # the digits, and MAE and SSIM get worse, so teacher forcing is the default.
    train_on_rollouts: bool = False
    # With train_on_rollouts: the epochs over which training moves from teacher forcing to
    # rollouts (scheduled sampling, Bengio et al. 2015): each step after the true frames reads
    # its own prediction with a probability that rises linearly from 0 to 1, else the true
    # frame. 0: rollouts from the first step. Validation always rolls out.
    rollout_ramp_epochs: int = 0
    # With train_on_rollouts: the epochs trained with teacher forcing (each step reads the
    # true frame, at the cost of one batched pass) before rollouts (or their ramp) begin; a
    # curriculum: learn one step first, then learn to read one's own predictions. Validation
    # rolls out from the first epoch, so checkpoints and early stopping follow the rollout.
    rollout_start_epoch: int = 0
    # The weight of a structural term beside the per-pixel cross-entropy: the loss becomes
    # `cross-entropy + ssim_loss_weight * (1 - SSIM)`, SSIM averaged over the predicted frames
    # (`FrameLoss`). Pixel losses reward the blurred mean of the futures the model cannot tell
    # apart; SSIM compares local structure and contrast, which blur destroys. 0: cross-entropy
    # alone. 0.5 (teacher forcing, 10 epochs) gave MSE 167.8 / SSIM 0.703 against 145.1 /
    # 0.711 without it, at twice the time per step (README).
    ssim_loss_weight: float = 0.0
    # The weight of a coarse term: `+ blur_loss_weight * sum of squared differences of the
    # frames blurred by a Gaussian of `blur_loss_sigma` pixels` (per frame, `FrameLoss`). A
    # decoder that moves pixels (decoder="reference") needs it: against sharp frames, the
    # per-pixel loss of a moved digit has a minimum in every pixel cell (a half-pixel blur),
    # and gradient descent on the move stops there; blurred, the loss falls all the way to the
    # true move, several pixels away. 0: no such term.
    blur_loss_weight: float = 0.0
    blur_loss_sigma: float = 3.0
    # How the decoder draws the next frame. "pixels": from scratch, a transposed CNN over the
    # recurrent output and the current frame's feature maps. "transform": by moving the
    # current frame's own pixels (Finn et al. 2016, CDNA): the recurrent output chooses
    # `transform_kernels` normalized kernels of `transform_kernel_size`^2 pixels, each
    # convolved with the current frame (a shift, or a blend of shifts), and per-pixel masks
    # from the decoder CNN mix the moved frames with a drawn one. Digits keep their shape
    # when the model reads its own predictions. Measured (README, 10k test sequences):
    # MSE 109.1 / MAE 224.2 / SSIM 0.702 with teacher forcing (7 epochs), 100.2 / 218.7 /
    # 0.673 with rollouts after 3 teacher-forced epochs, against 145.1 / 209.8 / 0.711 for
    # "pixels"; better MSE only, at 1.5x the time per step, so "pixels" stays the default.
    decoder: str = "pixels"
    transform_kernels: int = 4
    transform_kernel_size: int = 9
    # decoder="reference": the frame is not redrawn or re-moved step after step; the last
    # true frame (the reference) is split once into `reference_layers` soft layers (a
    # per-pixel softmax from the decoder CNN, one layer per digit, ideally), and each
    # predicted frame is those layers moved by their accumulated displacements, one
    # bilinear translation from the reference per frame (`translate_frames`). The recurrent
    # output chooses each layer's move of the step, at most `reference_max_step` pixels per
    # axis; the moved layers add up, capped at 1 where they overlap. A rollout cannot blur
    # what it never resamples twice. Measured (README, 12 epochs on rollouts,
    # blur_loss_weight=0.1): MSE 145.1 / MAE 274.9 / SSIM 0.481; the layers split the
    # digits, but each digit over two layers that move apart (ghosts), so it stays off.
    reference_layers: int = 4
    reference_max_step: float = 6.0
    # decoder="reference": how a frame splits into its layers. "learned": a per-pixel softmax
    # from the decoder CNN (above). "tracks": not learned; an `ObjectTracker` follows
    # `reference_layers` objects (set it to the digits per sequence) through the frames: the
    # first frame split by k-means on the bright pixels' positions, each later one by moving
    # each object's layer by the whole-pixel move that matches the frame best. The Elman cell
    # reads each object's center and last move beside the encoder's latent vector; the
    # decoder moves each object by its last move plus a correction chosen from the cell's
    # output, and a rollout moves the centers with the layers. `track_iterations`: k-means
    # rounds on the first frame. Measured (README): with track_resplit, tracks_only,
    # train_on_tracks and objects_apart, MSE 35.2 / MAE 77.1 / SSIM 0.915 (both targets met,
    # 45 min of training) against 145.1 / 209.8 / 0.711 for the default; its recipe (batch
    # 256, 65,536 sequences, 100 epochs, cosine decay) is not the default's yet.
    reference_split: str = "learned"
    track_iterations: int = 5
    # With reference_split="tracks": mend the tracker's split of digits that overlap in the
    # first frame as they part (pixels given by motion, a fresh split where the digits stand
    # apart, centers of mass; `ObjectTracker`). The tracker's layers of the 10th frame moved
    # by the true moves: MSE 2.7 against 7.6 without (benchmarks/nextframe_tracker.py, 1,000
    # test sequences).
    track_resplit: bool = True
    # With reference_split="tracks" and train_on_rollouts: the weight of a term on where the
    # objects are, `+ track_loss_weight * Huber(predicted centers - tracked true centers)`
    # (pixels, delta 1, averaged over steps, objects and axes): the tracker's centers in the
    # true frames that follow teach the moves directly, instead of only through the pixels.
    track_loss_weight: float = 0.0
    # With reference_split="tracks": the Elman cell reads the tracked objects only (their
    # centers and last moves), no CNN latent vector: the tracker is the per-frame encoder.
    # Then a training step needs no CNN, and the moves are learned from many more sequences
    # in the same time.
    tracks_only: bool = False
    # With tracks_only: train on where the objects are, not on frames. The tracker follows the
    # training sequences once (the first epoch, 12 ms a sequence with track_resplit, 6 ms
    # without; the centers are cached), and
    # each step rolls the cell out on the centers alone (`rollout_centers`: the first
    # input_frames true, then its own) against the tracked centers, with the Huber loss of
    # track_loss_weight's term; no frame is drawn, so a step of 256 sequences takes about 60 ms
    # against 0.5 s for 64 on frames. Validation rolls out on frames: val_loss is the same
    # center loss, val_mse and val_mae the frames'. An interrupted run resumes from its last
    # epoch and tracks the sequences again. Measured (README, 65,536 sequences, 120 epochs of
    # batch 256, 43 min): MSE 59.6 / MAE 124.9 / SSIM 0.732, and predicted without the floor
    # (session 19) MSE 60.0 / MAE 106.2 / SSIM 0.875; with objects_apart and the mended
    # tracker, 35.2 / 77.1 / 0.915, the best so far. Training the same model on frames
    # afterwards made it worse (scratch: MSE 64 -> 91).
    train_on_tracks: bool = False
    # With tracks_only: the Elman cell follows each object apart from the others
    # (`ObjectwiseCell`): one state per object, the same W, U, V for all, and each object's
    # move chosen from its own output; hidden_units and latent_dim are per object. The digits
    # move independently, so nothing is lost, and what is learned of one digit's motion
    # holds for the other's. Scratch runs (3,000 steps of 256 on 65,536 tracked sequences):
    # center error 1.57 px against 1.78 px for one cell reading both objects. The full recipe
    # with it (README): MSE 35.2 / MAE 77.1 / SSIM 0.915.
    objects_apart: bool = False
    # Cosine decay of the learning rate to 0 over this many epochs (0: a constant rate).
    learning_rate_decay_epochs: int = 0
    batch_size: int = 32
    epochs: int = 25
    patience: int = 3
    seed: int = 0


# A tiny preset for tests and the default run: seconds, not minutes.
SMOKE = Config(train_sequences=256, validation_sequences=32, test_sequences=64, filters=8,
               latent_dim=32, hidden_units=32, batch_size=16, learning_rate=3e-3, epochs=5)


def search_space(hp, config):
    """The tuner's search space: returns `config` with the searched values set from `hp`."""
    return dataclasses.replace(
        config,
        hidden_units=hp.Choice("hidden_units", [256, 512, 1024]),
        latent_dim=hp.Choice("latent_dim", [128, 256, 512]),
        learning_rate=hp.Float("learning_rate", 3e-4, 3e-3, sampling="log"),
    )


# Data.

@dataclasses.dataclass
class Data:
    """Splits as `tf.data` datasets of `(frames[:, :-1], frames[:, 1:])` float batches in [0, 1]
    (with `train_on_tracks`, the training split's batches are the tracker's centers of whole
    sequences, `(batch, frames, objects, 2)`), and the generator of the fixed test sequences
    (for `evaluation_report`)."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    test_sequences: callable  # indices -> (n, frames, 64, 64) uint8
    source: str


# Sequences per batch when the tracker follows the training sequences (train_on_tracks): in
# batches of 64 it took 6 ms a sequence, of 256 11 ms.
TRACKING_BATCH = 64


def _split(config, digits, count, seed, shuffle, batch_size=None):
    frames = config.input_frames + config.output_frames

    def generate(indices):
        return moving_mnist.moving_sequences(digits, indices, seed, frames,
                                             config.digits_per_sequence)

    def to_pairs(indices):
        sequences = tf.numpy_function(generate, [indices], tf.uint8)
        sequences = tf.reshape(sequences, [-1, frames, FRAME_SIZE, FRAME_SIZE, 1])
        sequences = tf.cast(sequences, tf.float32) / 255.0
        return sequences[:, :-1], sequences[:, 1:]

    indices = tf.data.Dataset.range(count)
    if shuffle:
        indices = indices.shuffle(count, seed=config.seed, reshuffle_each_iteration=True)
    data = indices.batch(batch_size or config.batch_size).map(
        to_pairs, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE), generate


def load_data(config):
    """Moving MNIST from the data directory's digits (or synthetic shapes without one)."""
    if config.input_frames < 1 or config.output_frames < 1:
        raise ValueError("input_frames and output_frames must be positive, received "
                         f"{config.input_frames} and {config.output_frames}")
    digits = moving_mnist.load_digits(config.data_dir or None)
    # Different seeds keep the three splits' sequences apart; validation and train share the
    # training digits, test has its own.
    if config.train_on_tracks:
        train = _tracked_split(config, digits["train"], config.train_sequences, config.seed + 1)
    else:
        train, _ = _split(config, digits["train"], config.train_sequences, config.seed + 1, True)
    validation, _ = _split(config, digits["train"], config.validation_sequences,
                           config.seed + 2, False)
    test, generate_test = _split(config, digits["test"], config.test_sequences, TEST_SEED,
                                 False)
    return Data(train=train, validation=validation, test=test, test_sequences=generate_test,
                source=digits["source"])


def whole_sequences(inputs, targets):
    """The sequences of a `(frames[:, :-1], frames[:, 1:])` pair: the first input frame, then
    the targets."""
    return ops.concatenate([inputs[:, :1], targets], axis=1)


def _tracked_split(config, digits, count, seed):
    """The `ObjectTracker`'s centers of a split's sequences, `(batch, frames, objects, 2)`
    batches (train_on_tracks): tracked once, while the first epoch reads them, then cached
    and reshuffled every epoch."""
    frames, _ = _split(config, digits, count, seed, shuffle=False, batch_size=TRACKING_BATCH)
    tracker = ObjectTracker(config.reference_layers, config.track_iterations,
                            resplit=config.track_resplit)

    def track(inputs, targets):
        return tracker(whole_sequences(inputs, targets))[0]

    centers = frames.map(track).unbatch().cache()
    centers = centers.shuffle(count, seed=config.seed, reshuffle_each_iteration=True)
    return centers.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


# The model.

@keras.saving.register_keras_serializable(package="elman")
class FrameEncoder(keras.layers.Layer):
    """Encodes each frame alone: `(batch, time, 64, 64, 1)` -> latent `(batch, time, latent_dim)`
    and the first layer's feature maps `(batch, time, 32, 32, filters)`.

    Args:
        filters: filters of the first convolution (the next two have 2x and 4x).
        latent_dim: size of the latent vector.
    """

    def __init__(self, filters, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.latent_dim = filters, latent_dim
        convolution = dict(kernel_size=3, strides=2, padding="same", activation="relu")
        self.first = keras_layers.Conv2D(filters, **convolution)  # 32x32
        self.rest = keras.Sequential([
            keras_layers.Conv2D(2 * filters, **convolution),  # 16x16
            keras_layers.Conv2D(4 * filters, **convolution),  # 8x8
            keras_layers.Flatten(),
            keras_layers.Dense(latent_dim, activation="relu"),
        ])

    def build(self, input_shape):
        self.first.build((None, FRAME_SIZE, FRAME_SIZE, 1))
        self.rest.build((None, FRAME_SIZE // 2, FRAME_SIZE // 2, self.filters))

    def call(self, frames):
        batch, time = ops.shape(frames)[0], ops.shape(frames)[1]
        single = ops.reshape(frames, (-1, FRAME_SIZE, FRAME_SIZE, 1))  # (batch * time, 64, 64, 1)
        features = self.first(single)
        latent = self.rest(features)
        return (ops.reshape(latent, (batch, time, self.latent_dim)),
                ops.reshape(features, (batch, time, FRAME_SIZE // 2, FRAME_SIZE // 2,
                                       self.filters)))

    def compute_output_shape(self, input_shape):
        return ((input_shape[0], input_shape[1], self.latent_dim),
                (input_shape[0], input_shape[1], FRAME_SIZE // 2, FRAME_SIZE // 2, self.filters))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "latent_dim": self.latent_dim}


@keras.saving.register_keras_serializable(package="elman")
class ObjectTracker(keras.layers.Layer):
    """Follows `count` objects that move rigidly through the frames, and splits each frame
    into one layer per object, without learning: `(batch, time, 64, 64, 1)` -> their centers
    `(batch, time, count, 2)` (`(row, column)` in pixels) and the layers `(batch, time, 64, 64,
    count)`. Causal: what it gives for frame t depends on frames 0..t only.

    The first frame is split by k-means on the pixels' positions, weighted by brightness
    (`iterations` rounds of Lloyd's algorithm from points spread along the principal axis):
    each pixel goes to the layer of its nearest center. Each later frame matches each layer
    of the frame before at every whole-pixel move up to `search` pixels per axis (the move
    with the least squared difference, `match`), and the layer moves on: its pixels that
    the frame still has (`min(frame, moved layer)`; objects that combine by their maximum
    never hide one another), plus the frame's pixels no moved layer explains.

    Objects that overlap in the first frame get a wrong split there (each layer holds parts
    of both). With `resplit` (and two objects or more) it mends as they part: an unexplained
    pixel goes to the one object whose move brings a visible pixel of the frame before onto
    it (`assign`; else to the nearest center), a frame whose objects stand apart (`apart`) is
    split afresh where that split differs, and a center is its layer's center of mass, so
    that it moves with the object exactly once the layer holds the whole object. Without it,
    unexplained pixels go to the nearest center, and a center starts at its first layer's
    center of mass and moves by the layer's moves (a wrong first split stays in the centers).
    Measured by
    `benchmarks/nextframe_tracker.py` on 1,000 test sequences, the layers of the 10th frame
    moved by the true moves: MSE 2.7 with `resplit`, 7.6 without; the centers in the 10th
    frame were off the digits' centers of mass by more than a pixel in 3% of the sequences
    with it, 43% without.

    Args:
        count: int >= 1, the objects followed.
        iterations: int >= 1, k-means rounds on the first frame. Default: 5.
        search: int >= 1, the largest move between two frames, pixels per axis. Default: 5.
        resplit: bool, mend a wrong split as the objects part (above). Default: False, as
            the tracker of models saved before it; `build_model` sets `track_resplit`
            (True by default).
    """

    def __init__(self, count, iterations=5, search=5, resplit=False, **kwargs):
        super().__init__(**kwargs)
        self.resplit = bool(resplit)
        if count < 1 or iterations < 1 or search < 1:
            raise ValueError("count, iterations and search must be >= 1, received "
                             f"count={count}, iterations={iterations}, search={search}")
        self.count, self.iterations, self.search = int(count), int(iterations), int(search)
        # One object has no split to mend.
        self._mends = self.resplit and self.count > 1

    def cluster(self, frames, centers):
        """Lloyd's rounds from `centers` `(n, count, 2)` on `frames` `(n, 64, 64, 1)`; a center
        that gathers no brightness stays where it is."""
        weights = tf.reshape(frames, (-1, FRAME_SIZE * FRAME_SIZE, 1))
        for _ in range(self.iterations):
            # (n, pixels, count): each pixel's brightness, in the column of its nearest center.
            gathered = weights * tf.one_hot(nearest_center(centers), self.count)
            centers = centers_of_mass(gathered, centers)
        return centers

    def first_centers(self, frames):
        """`(n, 64, 64, 1)` -> `(n, count, 2)`: the weighted mean plus multiples of the principal
        axis's standard deviation, from -1 to 1 (the mean, for one object)."""
        weights = tf.reshape(frames, (-1, FRAME_SIZE * FRAME_SIZE))
        positions = pixel_positions()
        mass = tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1e-3)
        mean = tf.where(mass > 1e-3, weights @ positions / mass, (FRAME_SIZE - 1) / 2)
        centered = positions[None] - mean[:, None]  # (n, pixels, 2)
        covariance = tf.einsum("np,npd,npe->nde", weights, centered, centered) / mass[..., None]
        a, b, c = covariance[:, 0, 0], covariance[:, 0, 1], covariance[:, 1, 1]
        largest = (a + c) / 2 + tf.sqrt(((a - c) / 2) ** 2 + b ** 2)
        # The eigenvector of the largest eigenvalue: (b, largest - a) or (largest - c, b),
        # whichever is longer (both vanish only for a multiple of the identity).
        first, second = tf.stack([b, largest - a], -1), tf.stack([largest - c, b], -1)
        axis = tf.where((tf.norm(first, axis=-1) >= tf.norm(second, axis=-1))[:, None],
                        first, second)
        axis = tf.math.divide_no_nan(axis, tf.norm(axis, axis=-1, keepdims=True))
        spread = tf.sqrt(largest)[:, None] * axis  # (n, 2)
        steps = tf.linspace(-1.0, 1.0, self.count) if self.count > 1 else tf.zeros([1])
        return mean[:, None] + steps[None, :, None] * spread[:, None]

    def match(self, frames, layers):
        """Each layer's whole-pixel move to `frames` `(n, 64, 64, 1)`: `layers` `(n, 64, 64,
        count)` -> `(n, count, 2)`, the move up to `search` per axis that minimizes
        `sum (frame - moved layer)^2` over the frame, that is, maximizes
        `<frame, moved layer> - |moved layer|^2 / 2` (ties: the shorter move)."""
        side = 2 * self.search + 1
        # Every move's inner product at once, as a cross-correlation by FFT (12x faster than
        # a depthwise convolution with 64x64 kernels, which took 2 ms per frame on 2 cores):
        # zero-padded to `size` >= 64 + search, so that a move never wraps a layer's pixels
        # around onto the frame. The same with a frame of ones and the squared layer gives the
        # energy of the moved layer that stays inside the frame.
        size = _fft_size(FRAME_SIZE + self.search)

        def spectrum(images):  # (..., 64, 64) -> (..., size, size // 2 + 1)
            return tf.signal.rfft2d(images, fft_length=[size, size])

        frames = frames[..., 0]
        layers = tf.transpose(layers, (0, 3, 1, 2))  # (n, count, 64, 64)
        inside = spectrum(tf.ones([1, 1, FRAME_SIZE, FRAME_SIZE]))
        # (n, count, size, size): entry (dy mod size, dx mod size) is the score of (dy, dx).
        scores = tf.signal.irfft2d(
            spectrum(frames)[:, None] * tf.math.conj(spectrum(layers))
            - 0.5 * inside * tf.math.conj(spectrum(tf.square(layers))),
            fft_length=[size, size])
        lags = tf.range(-self.search, self.search + 1) % size
        scores = tf.gather(tf.gather(scores, lags, axis=2), lags, axis=3)
        scores = tf.reshape(scores, (-1, self.count, side * side))
        moves = tf.stack(tf.meshgrid(tf.range(-self.search, self.search + 1),
                                     tf.range(-self.search, self.search + 1), indexing="ij"),
                         -1)
        moves = tf.cast(tf.reshape(moves, (side * side, 2)), tf.float32)
        scores -= 1e-4 * tf.reduce_sum(tf.square(moves), -1)
        return tf.gather(moves, tf.argmax(scores, axis=-1))  # (n, count, 2)

    def apart(self, layers):
        """`layers` `(n, 64, 64, count)` -> `(n,)` bool: whether the layers' visible pixels
        (above `VISIBLE`) never touch one another's (no two neighbors, diagonals included,
        in different layers), and every layer holds at least a tenth of the frame's
        brightness (and more than one full pixel's). A split by nearest center that cuts
        through an object's strokes, or through two overlapping objects, touches."""
        visible = tf.cast(layers > VISIBLE, tf.float32)
        grown = tf.nn.max_pool2d(visible, 3, strides=1, padding="SAME")
        # (n, count, count): visible pixels of layer j next to a visible pixel of layer k.
        touching = tf.einsum("nhwk,nhwj->nkj", grown, visible)
        touching -= tf.linalg.diag(tf.linalg.diag_part(touching))
        mass = tf.reduce_sum(layers, axis=(1, 2))  # (n, count)
        enough = mass >= 0.1 * tf.reduce_sum(mass, axis=-1, keepdims=True)
        return tf.logical_and(tf.reduce_sum(touching, axis=(1, 2)) == 0,
                              tf.reduce_all(enough & (mass > 1.0), axis=-1))

    def assign(self, unexplained, previous_frame, moves, centers):
        """The pixels that no moved layer explains, `unexplained` `(n, 64, 64, 1)`, as layers
        `(n, 64, 64, count)`. A pixel goes to the one object whose move brings a visible pixel
        of `previous_frame` onto it (a piece of that object that the split of the frame before
        gave to another layer: the split mends itself as the objects move apart); a pixel that
        no move or more than one explains goes to the nearest center (`split`)."""
        if not self._mends:
            return self.split(unexplained, centers)
        previous = tf.repeat(previous_frame, self.count, axis=-1)
        explains = tf.cast(translate_layers(previous, moves) > VISIBLE, tf.float32)
        alone = tf.cast(tf.reduce_sum(explains, axis=-1, keepdims=True) == 1, tf.float32)
        return (unexplained * explains * alone
                + self.split(unexplained * (1 - alone), centers))

    def split(self, frames, centers):
        """`frames` `(n, 64, 64, 1)` into layers `(n, 64, 64, count)` by nearest center."""
        nearest = tf.one_hot(nearest_center(centers), self.count)
        return frames * tf.reshape(nearest, (-1, FRAME_SIZE, FRAME_SIZE, self.count))

    def call(self, frames):
        frames = tf.cast(frames, tf.float32)
        by_time = tf.transpose(frames, (1, 0, 2, 3, 4))  # (time, batch, 64, 64, 1)
        first_centers = self.cluster(by_time[0], self.first_centers(by_time[0]))
        first_layers = self.split(by_time[0], first_centers)
        if self._mends:
            first_centers = layer_centers(first_layers, first_centers)

        def follow(carry, pair):
            previous_centers, previous_layers = carry
            previous_frame, frame = pair
            moves = self.match(frame, previous_layers)  # (n, count, 2)
            kept = tf.minimum(frame, translate_layers(previous_layers, moves))
            unexplained = tf.nn.relu(frame - tf.reduce_max(kept, axis=-1, keepdims=True))
            centers = previous_centers + moves
            layers = kept + self.assign(unexplained, previous_frame, moves, centers)
            if not self._mends:
                return centers, layers
            # Where the frame's objects stand apart, split it afresh: a wrong split of the
            # first frame (objects that overlap there) is mended once they part. Only where
            # the two splits differ by more than a tenth of the frame's brightness, so that
            # a layer does not flicker between two splits that both hold its object.
            fresh = self.split(frame, self.cluster(frame, centers))
            differ = (tf.reduce_sum(tf.abs(fresh - layers), axis=(1, 2, 3))
                      > 0.1 * tf.reduce_sum(frame, axis=(1, 2, 3)))
            resplit = tf.logical_and(self.apart(fresh), differ)
            layers = tf.where(resplit[:, None, None, None], fresh, layers)
            # The centers of mass: a layer that held the whole object moves its center by
            # the object's move, exactly; one that is mending moves its center to the
            # object's.
            return layer_centers(layers, centers), layers

        centers, layers = tf.scan(follow, (by_time[:-1], by_time[1:]),
                                  (first_centers, first_layers))
        centers = tf.concat([first_centers[None], centers], axis=0)
        layers = tf.concat([first_layers[None], layers], axis=0)
        return tf.transpose(centers, (1, 0, 2, 3)), tf.transpose(layers, (1, 0, 2, 3, 4))

    def compute_output_shape(self, input_shape):
        return ((input_shape[0], input_shape[1], self.count, 2),
                (input_shape[0], input_shape[1], FRAME_SIZE, FRAME_SIZE, self.count))

    def get_config(self):
        return {**super().get_config(), "count": self.count, "iterations": self.iterations,
                "search": self.search, "resplit": self.resplit}


def _fft_size(least):
    """The smallest size >= `least` with no prime factor above 5 (fast for an FFT)."""
    size = least
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


def centers_of_mass(weights, fallback):
    """`weights` `(n, pixels, count)` -> each column's center of mass `(n, count, 2)`, or
    `fallback` where a column holds (almost) nothing."""
    mass = tf.reduce_sum(weights, axis=1)
    sums = tf.matmul(weights, pixel_positions(), transpose_a=True)
    return tf.where(mass[..., None] > 1e-3, sums / tf.maximum(mass, 1e-3)[..., None], fallback)


def layer_centers(layers, fallback):
    """`layers` `(n, 64, 64, count)` -> each layer's center of mass `(n, count, 2)`, or
    `fallback` where a layer holds (almost) nothing."""
    weights = tf.reshape(layers, (-1, FRAME_SIZE * FRAME_SIZE, layers.shape[-1]))
    return centers_of_mass(weights, fallback)


def pixel_positions():
    """`(64 * 64, 2)` float32: the `(row, column)` of each pixel, row-major."""
    rows, columns = tf.meshgrid(tf.range(FRAME_SIZE), tf.range(FRAME_SIZE), indexing="ij")
    return tf.cast(tf.reshape(tf.stack([rows, columns], -1), (-1, 2)), tf.float32)


def nearest_center(centers):
    """`(n, count, 2)` -> `(n, 64 * 64)` int: the index of each pixel's nearest center."""
    # |p - c|^2 without the |p|^2 that all centers share: |c|^2 - 2 p.c, (n, pixels, count).
    distances = (tf.reduce_sum(tf.square(centers), axis=-1)[:, None]
                 - 2.0 * tf.einsum("pd,nkd->npk", pixel_positions(), centers))
    return tf.argmin(distances, axis=-1, output_type=tf.int32)


def track_features(centers, moves, by_object=False):
    """What the Elman cell reads of the tracked objects: `centers` `(..., count, 2)` and their
    last `moves` `(..., count, 2)` in pixels -> `(..., 4 * count)`, the centers scaled to
    [-1, 1] and the moves divided by 4 (about one step of Moving MNIST's digits): every
    center, then every move; with `by_object`, object after object (its center, its move:
    object k's features are `[..., 4 * k:4 * k + 4]`, what `ObjectwiseCell` splits)."""
    half = (FRAME_SIZE - 1) / 2
    count = centers.shape[-2]
    scaled = [(centers[..., k, :] - half) / half for k in range(count)]
    moved = [moves[..., k, :] / 4.0 for k in range(count)]
    if by_object:
        return ops.concatenate([part for pair in zip(scaled, moved) for part in pair], axis=-1)
    return ops.concatenate(scaled + moved, axis=-1)


@keras.saving.register_keras_serializable(package="elman")
class ObjectwiseCell(keras.layers.Layer):
    """Steps a recurrent cell on each of `objects` objects apart, with the same weights: an RNN
    cell `(batch, objects * features)` -> `(batch, objects * output_size)`, for objects that
    move independently (Moving MNIST's digits pass through each other).

    Input features `[k * features:(k + 1) * features]` are object k's (`track_features`
    writes them so with `by_object`). The inner cell steps `(batch * objects, features)`
    rows: object k of every sequence has its own state, and W, U, V are shared by all
    objects, so what the cell learns of one object's motion holds for the other's, and it
    cannot confuse them.
    Output k is object k's. Each inner state of shape `s` is held as `(batch, objects, *s)`.

    Args:
        cell: the inner RNN cell (an `ElmanCell`, or any cell with `state_size` and
            `output_size`), or its serialized config.
        objects: int >= 1.
    """

    def __init__(self, cell, objects, **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if int(objects) < 1:
            raise ValueError(f"objects must be >= 1, received objects={objects}")
        self.cell, self.objects = cell, int(objects)
        # Keras's convention: a list of states, each of an int size or a shape.
        sizes = (cell.state_size if isinstance(cell.state_size, (list, tuple))
                 else [cell.state_size])
        self._inner_shapes = [tuple(size) if isinstance(size, (list, tuple)) else (int(size),)
                              for size in sizes]
        self.state_size = [(self.objects, *shape) for shape in self._inner_shapes]
        self.output_size = self.objects * cell.output_size

    def build(self, input_shape):
        features = input_shape[-1] // self.objects
        if features * self.objects != input_shape[-1]:
            raise ValueError(f"an ObjectwiseCell of {self.objects} objects needs a multiple of "
                             f"{self.objects} input features, received {input_shape[-1]}")
        if not self.cell.built:  # A reloaded model may have built it from its config.
            self.cell.build((None, features))

    def call(self, inputs, states, training=False):
        states = states if isinstance(states, (list, tuple)) else [states]
        batch = ops.shape(inputs)[0]
        rows = ops.reshape(inputs, (batch * self.objects, -1))
        inner = [ops.reshape(state, (batch * self.objects, *shape))
                 for state, shape in zip(states, self._inner_shapes)]
        output, inner = self.cell(rows, inner, training=training)
        inner = inner if isinstance(inner, (list, tuple)) else [inner]
        return (ops.reshape(output, (batch, self.output_size)),
                [ops.reshape(state, (batch, *size))
                 for state, size in zip(inner, self.state_size)])

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, *size), self.compute_dtype) for size in self.state_size]

    def get_config(self):
        return {**super().get_config(), "cell": keras.saving.serialize_keras_object(self.cell),
                "objects": self.objects}


def tracked_moves(centers):
    """`(batch, time, count, 2)` centers -> each step's displacement from the step before
    (zero at the first step)."""
    return ops.concatenate([ops.zeros_like(centers[:, :1]),
                            centers[:, 1:] - centers[:, :-1]], axis=1)


@keras.saving.register_keras_serializable(package="elman")
class FrameDecoder(keras.layers.Layer):
    """Draws one frame per step from the recurrent output and the encoder's feature maps of the
    current frame: `[(batch, time, latent_dim), (batch, time, 32, 32, filters)]`, and with
    `kernels` or `layers` the current frames `(batch, time, 64, 64, 1)` as a third input ->
    `(batch, time, 64, 64, 1)` in [0, 1]. With `split="tracks"`: the recurrent outputs and the
    `ObjectTracker`'s centers and layers of the current frames, `[(batch, time, latent_dim),
    (batch, time, layers, 2), (batch, time, 64, 64, layers)]`.

    Without `kernels` or `layers` the frame is drawn from scratch. With `kernels` (Finn et al.
    2016, CDNA), a dense layer maps the recurrent output to `kernels` kernels of
    `kernel_size`^2 pixels, each softmax-normalized (weights >= 0 that sum to 1: a shift of
    the frame, or a blend of shifts); each is convolved with the current frame, and a softmax
    over `kernels + 1` per-pixel masks mixes those moved frames and the drawn one:

        moved_k = current_frame * kernel_k            # (64, 64), k = 1 .. kernels
        next = sum_k mask_k * moved_k + mask_0 * drawn

    With `layers`, the decoder CNN splits a reference frame into `layers` soft layers (a
    per-pixel softmax, `shares`) and a dense layer maps the recurrent output to each layer's
    move `(dy, dx)`, at most `max_step` pixels per axis (`reference_parts`); the next frame is
    the moved layers added up, capped at 1 where they overlap (`compose`):

        layer_k = reference * share_k                 # k = 1 .. layers
        next = min(1, sum_k translate(layer_k, offset_k))

    With `split="tracks"` the layers are not learned: they are the `ObjectTracker`'s (one
    per object, followed from frame to frame by matching), and they combine by their maximum,
    as the digits do. Each object's move is its last move plus a correction that a dense layer
    chooses from the recurrent output and the object's center and last move
    (`object_moves`, `moves`).

    Called on a sequence, the reference is each step's current frame and the offset is the
    step's move (one step ahead). A rollout (`rollout_predictions`, `predict_frames`) keeps
    the last true frame's layers as the reference and adds up the moves, so every predicted
    frame is one translation of true pixels.

    Args:
        filters: filters of the encoder's first convolution.
        kernels: int >= 0, the moved copies of the current frame; 0 draws frames from scratch.
            Default: 0.
        kernel_size: odd int, the side of each kernel: the farthest move is
            `kernel_size // 2` pixels along each axis. Default: 9.
        layers: int >= 0, the layers of the reference frame; 0: no reference. Not with
            `kernels`. Default: 0.
        max_step: float > 0, the largest move of a layer in one step, pixels per axis (with
            the tracked split: the largest change of a move). Default: 6.
        split: "learned" (the shares' head) or "tracks" (the tracker's layers), with `layers`.
            Default: "learned".
        objects_apart: bool, with the tracked split: the recurrent output is `layers` outputs
            of an `ObjectwiseCell`, one per object, and each object's move is chosen from
            its own output, center and last move by the same dense layer. Default: False.
    """

    def __init__(self, filters, kernels=0, kernel_size=9, layers=0, max_step=6.0,
                 split="learned", objects_apart=False, **kwargs):
        super().__init__(**kwargs)
        if split not in REFERENCE_SPLITS:
            raise ValueError(f"split must be one of {', '.join(map(repr, REFERENCE_SPLITS))}, "
                             f"received {split!r}")
        if kernels < 0 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("kernels must be >= 0 and kernel_size a positive odd number, "
                             f"received kernels={kernels}, kernel_size={kernel_size}")
        if layers < 0 or (layers and kernels) or max_step <= 0:
            raise ValueError("layers must be >= 0, not both layers and kernels, and max_step "
                             f"> 0, received layers={layers}, kernels={kernels}, "
                             f"max_step={max_step}")
        self.filters, self.kernels, self.kernel_size = filters, int(kernels), int(kernel_size)
        self.layers, self.max_step = int(layers), float(max_step)
        self.split = split
        self.objects_apart = bool(objects_apart)
        if self.objects_apart and not (self.layers and split == "tracks"):
            raise ValueError('objects_apart needs layers and split="tracks", received '
                             f"layers={layers}, split={split!r}")
        # Tracked layers need no decoder CNN: the split is the tracker's, the moves a dense layer's.
        self.tracked = bool(self.layers) and split == "tracks"
        transposed = dict(kernel_size=3, strides=2, padding="same", activation="relu")
        if not self.tracked:
            self.expand = keras.Sequential([
                keras_layers.Dense(8 * 8 * 4 * filters, activation="relu"),
                keras_layers.Reshape((8, 8, 4 * filters)),
                keras_layers.Conv2DTranspose(2 * filters, **transposed),  # 16x16
                keras_layers.Conv2DTranspose(filters, **transposed),  # 32x32
            ])
            self.draw = keras.Sequential([
                keras_layers.Conv2D(filters, 3, padding="same", activation="relu"),
                keras_layers.Conv2DTranspose(filters, **transposed),  # 64x64
                # With layers: maps for the shares' head. Else the frame; most pixels are
                # background: start near black (sigmoid(-2) = 0.12), not grey.
                keras_layers.Conv2D(filters, 3, padding="same", activation="relu") if self.layers
                else keras_layers.Conv2D(1, 3, padding="same", activation="sigmoid",
                                         bias_initializer=keras.initializers.Constant(-2.0)),
            ])
        if self.kernels:
            self.kernel_logits = keras_layers.Dense(self.kernels * self.kernel_size ** 2)
            self.mask_logits = keras_layers.Conv2D(self.kernels + 1, 3, padding="same")
        if self.layers:
            # Small random moves, a different one for each layer: layers that start alike get
            # alike gradients and stay alike (with 2 layers and stddev 1e-3 the validation MSE
            # after 100 steps was 154, with 4 and 2e-2 it was 133); and at whole-pixel offsets
            # (zero) a bilinear translation has no gradient with respect to the offset.
            self.steps = keras_layers.Dense(
                2 if self.objects_apart else 2 * self.layers,
                kernel_initializer=keras.initializers.RandomNormal(stddev=2e-2, seed=0))
            if not self.tracked:
                self.share_logits = keras_layers.Conv2D(self.layers, 3, padding="same")

    def build(self, input_shape):
        latent_shape = input_shape[0]
        if not self.tracked:
            self.expand.build((None, latent_shape[-1]))
            self.draw.build((None, FRAME_SIZE // 2, FRAME_SIZE // 2, 2 * self.filters))
        if self.kernels:
            self.kernel_logits.build((None, latent_shape[-1]))
            self.mask_logits.build((None, FRAME_SIZE, FRAME_SIZE, self.filters))
        if self.objects_apart:  # One object's output, center and last move.
            self.steps.build((None, latent_shape[-1] // self.layers + 4))
        elif self.layers:
            self.steps.build((None, latent_shape[-1] + (4 * self.layers if self.tracked else 0)))
        if self.layers and not self.tracked:
            self.share_logits.build((None, FRAME_SIZE, FRAME_SIZE,
                                     self.filters + 1 + self.layers))

    def _hidden(self, flat_outputs, features):
        """`(n, latent_dim)`, `(n, 32, 32, filters)` -> the last hidden maps
        `(n, 64, 64, filters)`."""
        features = ops.reshape(features, (-1, FRAME_SIZE // 2, FRAME_SIZE // 2, self.filters))
        hidden = ops.concatenate([self.expand(flat_outputs), features], axis=-1)
        for layer in self.draw.layers[:-1]:
            hidden = layer(hidden)
        return hidden

    def reference_parts(self, outputs, features, frames):
        """With the learned split: how each frame of a sequence splits into layers, and each
        layer's move.

        A layer's pixels are those that move together: besides the decoder's maps, the shares'
        head sees the frame and, for each layer, the previous frame moved by the layer's
        previous move (the evidence of which pixels that move explains; no gradient flows
        through it).

        Args:
            outputs: `(batch, time, latent_dim)` recurrent outputs.
            features: `(batch, time, 32, 32, filters)` the encoder's maps of each frame.
            frames: `(batch, time, 64, 64, 1)` the frames read.

        Returns:
            `shares` `(batch, time, 64, 64, layers)` (>= 0, summing to 1 at each pixel) and
            `moves` `(batch, time, layers, 2)`, `(dy, dx)` in pixels: step t's layers of
            frame t and their moves to frame t + 1.
        """
        if self.tracked:
            raise ValueError("a FrameDecoder with the tracked split takes its layers from the "
                             "tracker and its moves from object_moves")
        batch, time = ops.shape(outputs)[0], ops.shape(outputs)[1]
        flat_outputs = ops.reshape(outputs, (-1, outputs.shape[-1]))
        moves = ops.reshape(self.moves(flat_outputs), (batch, time, self.layers, 2))
        # Before the first frame: no move, and the frame itself.
        previous_moves = ops.concatenate([ops.zeros_like(moves[:, :1]), moves[:, :-1]], axis=1)
        previous_frames = ops.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
        # (batch * time, 64, 64, layers): the previous frame moved by each previous move.
        evidence = translate_layers(
            ops.repeat(ops.reshape(previous_frames, (-1, FRAME_SIZE, FRAME_SIZE, 1)),
                       self.layers, axis=-1),
            ops.reshape(ops.stop_gradient(previous_moves), (-1, self.layers, 2)))
        maps = self.draw.layers[-1](self._hidden(flat_outputs, features))
        logits = self.share_logits(ops.concatenate(
            [maps, ops.reshape(frames, (-1, FRAME_SIZE, FRAME_SIZE, 1)), evidence], axis=-1))
        shares = ops.softmax(logits, axis=-1)
        return ops.reshape(shares, (batch, time, FRAME_SIZE, FRAME_SIZE, self.layers)), moves

    def moves(self, outputs, centers=None, last_moves=None):
        """Each layer's move for one step: `(n, latent_dim)` -> `(n, layers, 2)`, `(dy, dx)`.

        With the tracked split, the objects' `centers` and `last_moves` `(n, layers, 2)` are
        the current frame's part of the decoder's input (as the pixel decoder reads the
        current frame's maps): the move is the last move plus a correction chosen from the
        recurrent output and them, at most `max_step` per axis (the same speed, unless the
        cell sees a reason to change it: a bounce, or a better estimate). With
        `objects_apart`, each object's from its own part of the output and its own track.
        """
        if not self.tracked:
            return self.max_step * ops.tanh(ops.reshape(self.steps(outputs),
                                                        (-1, self.layers, 2)))
        features = self.object_features(centers, last_moves)
        if self.objects_apart:  # (n, layers, output per object + 4): object after object.
            inputs = ops.concatenate(
                [ops.reshape(outputs, (-1, self.layers, outputs.shape[-1] // self.layers)),
                 ops.reshape(features, (-1, self.layers, 4))], axis=-1)
        else:
            inputs = ops.concatenate([outputs, features], axis=-1)
        return last_moves + self.max_step * ops.tanh(
            ops.reshape(self.steps(inputs), (-1, self.layers, 2)))

    def object_features(self, centers, moves):
        """What the cell reads of the tracked objects (`track_features`), laid out for it: object
        after object with `objects_apart` (`ObjectwiseCell`)."""
        return track_features(centers, moves, by_object=self.objects_apart)

    def object_moves(self, outputs, centers):
        """With the tracked split: each step's moves `(batch, time, layers, 2)` from the
        recurrent outputs `(batch, time, latent_dim)` and the tracked centers `(batch, time,
        layers, 2)` (`moves`, with each step's last move from the centers)."""
        batch, time = ops.shape(outputs)[0], ops.shape(outputs)[1]
        moves = self.moves(ops.reshape(outputs, (-1, outputs.shape[-1])),
                           ops.reshape(centers, (-1, self.layers, 2)),
                           ops.reshape(tracked_moves(centers), (-1, self.layers, 2)))
        return ops.reshape(moves, (batch, time, self.layers, 2))

    def compose_steps(self, layers, moves):
        """Each step's layers moved one step: `layers` `(batch, time, 64, 64, layers)` and
        `moves` `(batch, time, layers, 2)` -> the predictions `(batch, time, 64, 64, 1)`."""
        batch, time = ops.shape(layers)[0], ops.shape(layers)[1]
        predicted = self.compose_layers(
            ops.reshape(layers, (-1, FRAME_SIZE, FRAME_SIZE, self.layers)),
            ops.reshape(moves, (-1, self.layers, 2)))
        return ops.reshape(predicted, (batch, time, FRAME_SIZE, FRAME_SIZE, 1))

    def compose(self, reference, shares, offsets):
        """The reference's layers moved by `offsets` `(n, layers, 2)` and combined:
        `reference` `(n, 64, 64, 1)`, `shares` `(n, 64, 64, layers)` -> `(n, 64, 64, 1)`."""
        return self.compose_layers(reference * shares, offsets)

    def compose_layers(self, layers, offsets, floor=True):
        """`layers` `(n, 64, 64, layers)` moved by `offsets` `(n, layers, 2)` and combined ->
        `(n, 64, 64, 1)`, `floored` unless `floor` is False (predictions)."""
        moved = translate_layers(layers, offsets)
        if self.tracked:
            # Whole objects: they combine as the digits do, by their maximum.
            frame = ops.max(moved, axis=-1)
        else:
            # The sum keeps the reference's brightness wherever the shares are soft; capped
            # at 1 where moved layers overlap, as the digits combine (by their maximum).
            frame = ops.minimum(ops.sum(moved, axis=-1), 1.0)
        return floored(frame[..., None]) if floor else frame[..., None]

    def call(self, inputs):
        if self.tracked:
            if len(inputs) != 3:
                raise ValueError("a FrameDecoder with the tracked split takes the recurrent "
                                 "outputs and the tracker's centers and layers")
            outputs, centers, layers = inputs
            return self.compose_steps(layers, self.object_moves(outputs, centers))
        outputs, features, *current = inputs
        batch, time = ops.shape(outputs)[0], ops.shape(outputs)[1]
        flat_outputs = ops.reshape(outputs, (-1, outputs.shape[-1]))
        if (self.kernels or self.layers) and not current:
            raise ValueError("a FrameDecoder with kernels or layers needs the current frames "
                             "as its third input")
        if self.layers:
            shares, moves = self.reference_parts(outputs, features, current[0])
            return self.compose_steps(current[0] * shares, moves)
        hidden = self._hidden(flat_outputs, features)  # (batch * time, 64, 64, filters)
        frames = self.draw.layers[-1](hidden)  # (batch * time, 64, 64, 1)
        if self.kernels:
            current = ops.reshape(current[0], (-1, FRAME_SIZE, FRAME_SIZE, 1))
            kernels = ops.softmax(ops.reshape(
                self.kernel_logits(flat_outputs),
                (-1, self.kernel_size ** 2, self.kernels)), axis=1)
            kernels = ops.reshape(kernels, (-1, self.kernel_size, self.kernel_size,
                                            self.kernels))
            moved = move_frames(current, kernels)  # (batch * time, 64, 64, kernels)
            masks = ops.softmax(self.mask_logits(hidden), axis=-1)
            frames = ops.sum(masks * ops.concatenate([frames, moved], axis=-1), axis=-1,
                             keepdims=True)
        return ops.reshape(frames, (batch, time, FRAME_SIZE, FRAME_SIZE, 1))

    def compute_output_shape(self, input_shape):
        latent_shape = input_shape[0]
        return (latent_shape[0], latent_shape[1], FRAME_SIZE, FRAME_SIZE, 1)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernels": self.kernels,
                "kernel_size": self.kernel_size, "layers": self.layers,
                "max_step": self.max_step, "split": self.split,
                "objects_apart": self.objects_apart}


def floored(frames):
    """`frames` in [0, 1] mapped to [REFERENCE_FLOOR, 1 - REFERENCE_FLOOR]: in training, never
    exactly 0 or 1, since the cross-entropy clips its input and a clipped pixel (a digit moved
    to the wrong place) would give no gradient."""
    return REFERENCE_FLOOR + (1.0 - 2.0 * REFERENCE_FLOOR) * frames


def translate_frames(frames, offsets):
    """Moves each frame by its own offset, bilinearly, with zeros entering at the edges;
    differentiable in the frames and the offsets.

    Output pixel (i, j) is the frame sampled at `(i - dy, j - dx)`: a translation is separable,
    so it is two products with `(height, height)` and `(width, width)` interpolation matrices,
    `T[i, a] = max(0, 1 - |i - offset - a|)`.

    Args:
        frames: `(n, height, width, 1)`.
        offsets: `(n, 2)`, `(dy, dx)` in pixels, any real numbers.

    Returns:
        `(n, height, width, 1)`.
    """
    height, width = frames.shape[1], frames.shape[2]
    offsets = ops.cast(offsets, frames.dtype)

    def interpolation(size, offset):  # (n, size, size)
        positions = ops.cast(ops.arange(size), frames.dtype)
        distance = positions[None, :, None] - offset[:, None, None] - positions[None, None, :]
        return ops.relu(1.0 - ops.abs(distance))

    rows, columns = interpolation(height, offsets[:, 0]), interpolation(width, offsets[:, 1])
    moved = ops.matmul(ops.matmul(rows, frames[..., 0]), ops.transpose(columns, (0, 2, 1)))
    return moved[..., None]


def translate_layers(layers, offsets):
    """`translate_frames` of each layer by its own offset: `layers` `(n, height, width, count)`
    and `offsets` `(n, count, 2)` -> `(n, height, width, count)`."""
    height, width, count = layers.shape[1], layers.shape[2], layers.shape[3]
    single = ops.reshape(ops.transpose(layers, (0, 3, 1, 2)), (-1, height, width, 1))
    moved = translate_frames(single, ops.reshape(offsets, (-1, 2)))
    return ops.transpose(ops.reshape(moved, (-1, count, height, width)), (0, 2, 3, 1))


def move_frames(frames, kernels):
    """Convolves each frame with its own kernels (a per-example depthwise convolution).

    Args:
        frames: `(batch, height, width, 1)`.
        kernels: `(batch, size, size, kernels)`; output pixel (i, j) of kernel k is
            `sum_{a, b} frames[i + a - size // 2, j + b - size // 2] * kernels[a, b, k]`,
            with zeros outside the frame.

    Returns:
        `(batch, height, width, kernels)`.
    """
    height, width = frames.shape[1], frames.shape[2]
    count = kernels.shape[-1]
    # The batch becomes the channels of one image, so that each example meets its own kernels.
    stacked = tf.transpose(frames, (3, 1, 2, 0))  # (1, height, width, batch)
    moved = tf.nn.depthwise_conv2d(stacked, tf.transpose(kernels, (1, 2, 0, 3)),
                                   strides=(1, 1, 1, 1), padding="SAME")
    moved = tf.reshape(moved, (height, width, -1, count))  # channel = example * count + k
    return tf.transpose(moved, (2, 0, 1, 3))


def build_model(config, data=None, recurrent_layer=None):
    """Builds and compiles the next-frame model.

    Input `frames` `(batch, time, 64, 64, 1)` float in [0, 1]; output the prediction of each
    next frame, same shape (output t predicts input t + 1).

    Args:
        config: the `Config`.
        data: unused (the model needs no vocabulary); kept for the app contract.
        recurrent_layer: optional `keras.layers.RNN` with `return_sequences=True` whose output
            has `latent_dim` features, used instead of `ElmanRNN(ElmanCell)` (a reference);
            predicting and training on rollouts step its `cell`.
    """
    frames = keras.Input(shape=(None, FRAME_SIZE, FRAME_SIZE, 1), name="frames")
    recurrent = recurrent_layer or ElmanRNN(
        ElmanCell(config.hidden_units, output_units=config.latent_dim, output_activation="relu",
                  activation=config.activation),
        return_sequences=True, name="elman")
    if config.decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, received "
                         f"{config.decoder!r}")
    if config.reference_split not in REFERENCE_SPLITS:
        raise ValueError("reference_split must be one of "
                         f"{', '.join(map(repr, REFERENCE_SPLITS))}, received "
                         f"{config.reference_split!r}")
    tracked = config.decoder == "reference" and config.reference_split == "tracks"
    if config.tracks_only and not tracked:
        raise ValueError('tracks_only needs decoder="reference" and reference_split="tracks"')
    if config.train_on_tracks and not config.tracks_only:
        raise ValueError("train_on_tracks needs tracks_only=true (and decoder=\"reference\", "
                         "reference_split=\"tracks\"): the cell must read nothing but the "
                         "tracks")
    if config.objects_apart and not config.tracks_only:
        raise ValueError("objects_apart needs tracks_only=true (and decoder=\"reference\", "
                         "reference_split=\"tracks\"): the cell must read nothing but the "
                         "objects' tracks")
    if config.objects_apart:
        # The same recurrence, stepped on each object apart.
        recurrent = (ElmanRNN if recurrent_layer is None else keras.layers.RNN)(
            ObjectwiseCell(recurrent.cell, config.reference_layers), return_sequences=True,
            name=recurrent.name)
    if not config.tracks_only:
        latent, features = FrameEncoder(config.filters, config.latent_dim,
                                        name="encoder")(frames)
    if tracked:
        # Each object's center and last move, beside the latent vector (or alone).
        centers, tracked_layers = ObjectTracker(config.reference_layers, config.track_iterations,
                                                resplit=config.track_resplit,
                                                name="tracker")(frames)
        objects = track_features(centers, tracked_moves(centers), config.objects_apart)
        latent = objects if config.tracks_only else ops.concatenate([latent, objects], axis=-1)
    outputs = recurrent(latent)  # (batch, time, latent_dim): o_t = relu(V s_t + c)
    if config.decoder == "reference" and config.train_on_rollouts and config.rollout_ramp_epochs:
        raise ValueError('decoder="reference" moves the last true frame, so its rollouts '
                         "cannot read sampled true frames: set rollout_ramp_epochs=0 (use "
                         "rollout_start_epoch for a curriculum)")
    decoder = FrameDecoder(
        config.filters, config.transform_kernels if config.decoder == "transform" else 0,
        config.transform_kernel_size,
        layers=config.reference_layers if config.decoder == "reference" else 0,
        max_step=config.reference_max_step, split=config.reference_split,
        objects_apart=config.objects_apart, name="decoder")
    predicted = decoder([outputs, centers, tracked_layers] if tracked
                        else [outputs, features, frames])
    steps_per_epoch = -(-config.train_sequences // config.batch_size)
    model = RolloutModel(frames, predicted, name="nextframe_elman",
                         rollout_from=(config.input_frames
                                       if config.train_on_rollouts or config.train_on_tracks
                                       else 0),
                         ramp_steps=config.rollout_ramp_epochs * steps_per_epoch,
                         start_steps=config.rollout_start_epoch * steps_per_epoch,
                         seed=config.seed,
                         track_loss_weight=config.track_loss_weight if tracked else 0.0,
                         train_on_tracks=config.train_on_tracks)
    learning_rate = config.learning_rate
    if config.learning_rate_decay_epochs > 0:
        learning_rate = keras.optimizers.schedules.CosineDecay(
            config.learning_rate, config.learning_rate_decay_epochs * steps_per_epoch)
    optimizer = keras.optimizers.Adam(learning_rate, clipnorm=config.clipnorm or None)
    loss = (FrameLoss(config.ssim_loss_weight, config.blur_loss_weight, config.blur_loss_sigma)
            if config.ssim_loss_weight or config.blur_loss_weight else "binary_crossentropy")
    model.compile(optimizer, loss=loss, metrics=["mse", "mae"])
    return model


@keras.saving.register_keras_serializable(package="elman")
class FrameLoss(keras.losses.Loss):
    """Per-pixel binary cross-entropy, plus `ssim_weight * (1 - SSIM)`, plus `blur_weight *` the
    squared error of the frames blurred by a Gaussian of `blur_sigma` pixels, per frame:

        loss = mean_pixels BCE(y, p) + ssim_weight * (1 - SSIM(y, p))
               + blur_weight * sum_pixels (G * y - G * p)^2

    Args:
        ssim_weight: float >= 0, the weight of the SSIM term (`tf.image.ssim`, 11x11 Gaussian
            windows, pixel values in [0, 1]). Default: 0.
        blur_weight: float >= 0, the weight of the blurred term. Default: 0.
        blur_sigma: float > 0, the Gaussian's standard deviation in pixels (a
            `2 * ceil(3 * sigma) + 1` square kernel, zeros outside the frame). Default: 3.

    Call arguments:
        y_true: `(batch, time, height, width, 1)` true frames in [0, 1].
        y_pred: the predicted frames, same shape.

    Returns:
        `(batch, time)` losses, reduced by Keras to their mean.
    """

    def __init__(self, ssim_weight=0.0, blur_weight=0.0, blur_sigma=3.0, name="frame_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if ssim_weight < 0 or blur_weight < 0 or blur_sigma <= 0:
            raise ValueError("ssim_weight and blur_weight must be >= 0 and blur_sigma > 0, "
                             f"received ssim_weight={ssim_weight}, blur_weight={blur_weight}, "
                             f"blur_sigma={blur_sigma}")
        self.ssim_weight, self.blur_weight = float(ssim_weight), float(blur_weight)
        self.blur_sigma = float(blur_sigma)

    def blur(self, frames):
        """`(..., height, width, 1)` -> the same, convolved with the Gaussian."""
        radius = int(np.ceil(3 * self.blur_sigma))
        taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * self.blur_sigma ** 2))
        taps = (taps / taps.sum()).astype("float32")
        shape = ops.shape(frames)
        single = ops.reshape(frames, (-1, shape[-3], shape[-2], 1))
        # Separable: a column, then a row.
        single = tf.nn.conv2d(single, taps[:, None, None, None], 1, "SAME")
        single = tf.nn.conv2d(single, taps[None, :, None, None], 1, "SAME")
        return ops.reshape(single, shape)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        # (batch, time): the mean over the pixels of each frame.
        loss = ops.mean(ops.binary_crossentropy(y_true, y_pred), axis=(-3, -2, -1))
        if self.ssim_weight:
            loss += self.ssim_weight * (1.0 - tf.image.ssim(y_true, y_pred, max_val=1.0))
        if self.blur_weight:
            loss += self.blur_weight * ops.sum(
                ops.square(self.blur(y_true) - self.blur(y_pred)), axis=(-3, -2, -1))
        return loss

    def get_config(self):
        return {**super().get_config(), "ssim_weight": self.ssim_weight,
                "blur_weight": self.blur_weight, "blur_sigma": self.blur_sigma}


def _parts(model):
    """The encoder (None with `tracks_only`), the recurrent layer (the one with a `cell`) and the
    decoder of a model from `build_model`."""
    recurrent = [layer for layer in model.layers if hasattr(layer, "cell")]
    if len(recurrent) != 1:
        raise ValueError(f"expected one recurrent layer with a cell in model {model.name!r}, "
                         f"found {[layer.name for layer in recurrent]}")
    encoders = [layer for layer in model.layers if isinstance(layer, FrameEncoder)]
    return encoders[0] if encoders else None, recurrent[0], model.get_layer("decoder")


def _cell_inputs(encoder, frames, training=False, objects=None):
    """What the cell reads of `frames` `(batch, time, 64, 64, 1)`: the encoder's latent vector,
    and with the tracked split `objects`, the decoder's `object_features` of the frames'
    objects `(batch, time, 4 * layers)` (alone without an encoder). Returns `(inputs (batch,
    time, features), the encoder's maps or None)`."""
    parts, features = [], None
    if encoder is not None:
        latent, features = encoder(frames, training=training)
        parts.append(latent)
    if objects is not None:
        parts.append(objects)
    return (parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)), features


def _tracker(model):
    """The model's `ObjectTracker`, or None (without the tracked split)."""
    trackers = [layer for layer in model.layers if isinstance(layer, ObjectTracker)]
    return trackers[0] if trackers else None


def _initial_states(recurrent, batch):
    states = recurrent.get_initial_state(batch)
    return list(states) if isinstance(states, (list, tuple)) else [states]


def rollout_predictions(model, frames, input_frames, training=False, own_probability=1.0,
                        seed=None, return_centers=False, centers=None):
    """The model's predictions when it reads the first `input_frames` true frames and then its
    own predictions: the objective of `RolloutModel`, differentiable.

    Args:
        model: a model from `build_model`.
        frames: `(batch, time, 64, 64, 1)` float in [0, 1], time known when tracing and
            > `input_frames`; frames after the first `input_frames` are read only where
            `own_probability` < 1.
        input_frames: int >= 1, the true frames read.
        training: bool.
        own_probability: float or scalar tensor in [0, 1]: each later step reads the model's
            own prediction with this probability, per sequence, else the true frame
            (scheduled sampling). Default: 1, a pure rollout.
        seed: a `keras.random.SeedGenerator` (or int) for those draws.
        return_centers: bool, with the tracked split: also return where each output puts
            the tracked objects.
        centers: optional, with the tracked split: the tracker's `(centers, layers)` of
            `frames` (at least their first `input_frames`), when the caller has them already
            (the tracker follows the frames forward: those of the first `input_frames`
            frames do not depend on the later ones).

    Returns:
        `(batch, time, 64, 64, 1)`: output t predicts frame t + 1, like the model's own output;
        outputs from `input_frames` on were computed from predicted (or sampled) frames. With
        `return_centers`, also `(batch, time, layers, 2)`: the objects' centers in each
        predicted frame (the tracked center of the frame read moved by its move, and from the
        last true frame on, that frame's centers moved by the moves added up).
    """
    encoder, recurrent, decoder = _parts(model)
    cell = recurrent.cell
    batch = ops.shape(frames)[0]
    tracker = _tracker(model)
    if tracker is not None:
        centers, layers = tracker(frames[:, :input_frames]) if centers is None else centers
        centers, layers = centers[:, :input_frames], layers[:, :input_frames]
    latent, features = _cell_inputs(
        encoder, frames[:, :input_frames], training,
        decoder.object_features(centers, tracked_moves(centers)) if tracker is not None
        else None)
    states = _initial_states(recurrent, batch)
    outputs = []
    for t in range(input_frames):
        output, states = cell(latent[:, t], states, training=training)
        outputs.append(output)
    outputs, read = ops.stack(outputs, axis=1), frames[:, :input_frames]
    sampled = not (isinstance(own_probability, (int, float)) and own_probability >= 1)
    if decoder.layers:
        if sampled:
            raise ValueError("a FrameDecoder with layers rolls out from the last true frame "
                             "only: own_probability must be 1")
        # The decoder's call, in two parts, so that the rollout keeps the last true frame's
        # layers and move: that frame is the reference, and the moves add up.
        if decoder.tracked:
            moves = decoder.object_moves(outputs, centers)
            predicted_centers = [centers + moves]
        else:
            shares, moves = decoder.reference_parts(outputs, features, read)
            layers = read * shares
        teacher_forced = decoder.compose_steps(layers, moves)
        reference, offsets, move = layers[:, -1], moves[:, -1], moves[:, -1]
    else:
        teacher_forced = decoder([outputs, features, read], training=training)
    predicted, frame = [teacher_forced], teacher_forced[:, -1:]
    for step in range(frames.shape[1] - input_frames):
        if sampled:
            own = keras.random.uniform((batch, 1, 1, 1, 1), seed=seed) < own_probability
            frame = ops.where(own, frame, frames[:, input_frames + step:input_frames + step + 1])
        # The objects are where the layers were moved to, by the last move.
        latent, features = _cell_inputs(
            encoder, frame, training,
            decoder.object_features((centers[:, -1] + offsets)[:, None], move[:, None])
            if tracker is not None else None)
        output, states = cell(latent[:, 0], states, training=training)
        if decoder.layers:
            move = (decoder.moves(output, centers[:, -1] + offsets, move) if decoder.tracked
                    else decoder.moves(output))
            offsets = offsets + move
            frame = decoder.compose_layers(reference, offsets)[:, None]
            if tracker is not None:
                predicted_centers.append((centers[:, -1] + offsets)[:, None])
        else:
            frame = decoder([output[:, None], features, frame], training=training)
        predicted.append(frame)
    if return_centers:
        if tracker is None:
            raise ValueError("return_centers needs a model with the tracked split")
        return ops.concatenate(predicted, axis=1), ops.concatenate(predicted_centers, axis=1)
    return ops.concatenate(predicted, axis=1)


def rollout_centers(model, centers, input_frames, training=False):
    """With `tracks_only`: where the model's rollout puts the tracked objects, computed from
    their centers alone, with no frame drawn (what `rollout_predictions` returns with
    `return_centers`, at a fraction of the cost).

    Args:
        model: a model from `build_model` with `tracks_only`.
        centers: `(batch, time, objects, 2)` the tracker's centers in pixels, time known when
            tracing; those after the first `input_frames` are not read.
        input_frames: int >= 1, the true centers read before the model reads its own.
        training: bool.

    Returns:
        `(batch, time - 1, objects, 2)`: output t is where the model puts the objects in frame
        t + 1 (from step `input_frames` on, reading its own earlier outputs).
    """
    encoder, recurrent, decoder = _parts(model)
    if encoder is not None or not decoder.tracked:
        raise ValueError("rollout_centers needs a model with tracks_only (the cell reads the "
                         "tracks alone)")
    states = _initial_states(recurrent, ops.shape(centers)[0])
    moves, predicted = tracked_moves(centers), []
    for t in range(centers.shape[1] - 1):
        if t < input_frames:  # A true frame's objects; afterwards, where the last step put them.
            center, move = centers[:, t], moves[:, t]
        output, states = recurrent.cell(decoder.object_features(center, move), states,
                                        training=training)
        move = decoder.moves(output, center, move)
        center = center + move
        predicted.append(center)
    return ops.stack(predicted, axis=1)


def track_loss(predicted, tracked):
    """The Huber loss (delta 1 pixel) between predicted and tracked centers, averaged over the
    batch, steps, objects and axes; no gradient flows into `tracked`."""
    return ops.mean(keras.losses.huber(ops.stop_gradient(tracked), predicted, delta=1.0))


@keras.saving.register_keras_serializable(package="elman")
class RolloutModel(keras.Model):
    """A functional next-frame model that trains and validates on its own rollouts.

    Built like `keras.Model(inputs, outputs)`. With `rollout_from=0` it trains exactly as
    `keras.Model` (teacher forcing: each step reads the true frame). Otherwise `train_step` and
    `test_step` compute the predictions with `rollout_predictions`: the first `rollout_from`
    frames are the true ones, and each later step reads the frame the model predicted, so
    the loss (and `val_loss`) measure the prediction of the frames after `rollout_from` as
    `predict_frames` makes it. With `ramp_steps`, training reads its own predictions with a
    probability that rises from 0 to 1 over that many steps (scheduled sampling). With
    `start_steps`, the first that many training steps are teacher-forced (one batched pass, as
    `keras.Model` trains) and the rollouts, or their ramp, begin after them. Validation always
    rolls out. Calling the model (and `predict`) stays teacher-forced.

    Args:
        rollout_from: int >= 0, the true frames read before the model reads its own. Default: 0.
        ramp_steps: int >= 0, training steps (after `start_steps`) until every step reads
            its own prediction. Default: 0.
        start_steps: int >= 0, teacher-forced training steps before the rollouts begin.
            Default: 0.
        seed: int, for the scheduled sampling's draws. Default: None.
        track_loss_weight: float >= 0, with the tracked split (an `ObjectTracker` named
            "tracker"): adds this weight times the Huber loss (delta 1 pixel) between the
            centers the rollout moves the objects to and the tracker's centers in the true
            frames. Not with `start_steps`. Default: 0.
        train_on_tracks: bool, with `tracks_only`: training batches are the tracker's
            centers `(batch, time, objects, 2)`, not frames, and the loss is `track_loss`
            between `rollout_centers` and them; validation batches are frames, with the same
            loss against the tracker's centers of the true frames, and the frame metrics.
            Needs `rollout_from`. Default: False.
        *args, **kwargs: those of `keras.Model` (inputs, outputs, name).
    """

    def __init__(self, *args, rollout_from=0, ramp_steps=0, start_steps=0, seed=None,
                 track_loss_weight=0.0, train_on_tracks=False, **kwargs):
        super().__init__(*args, **kwargs)
        if rollout_from < 0 or ramp_steps < 0 or start_steps < 0:
            raise ValueError("rollout_from, ramp_steps and start_steps must be >= 0, received "
                             f"rollout_from={rollout_from}, ramp_steps={ramp_steps}, "
                             f"start_steps={start_steps}")
        self.rollout_from, self.ramp_steps, self.seed = int(rollout_from), int(ramp_steps), seed
        self.start_steps = int(start_steps)
        self.track_loss_weight = float(track_loss_weight)
        if self.track_loss_weight < 0 or (self.track_loss_weight and (
                self.start_steps or not self.rollout_from or _tracker(self) is None)):
            raise ValueError("track_loss_weight must be >= 0, and it needs rollouts without "
                             "start_steps and a model with the tracked split, received "
                             f"track_loss_weight={track_loss_weight}, rollout_from="
                             f"{rollout_from}, start_steps={start_steps}")
        self.train_on_tracks = bool(train_on_tracks)
        if self.train_on_tracks and (not self.rollout_from or self.start_steps or self.ramp_steps
                                     or _tracker(self) is None or _parts(self)[0] is not None):
            raise ValueError("train_on_tracks needs rollouts without start_steps or ramp_steps "
                             "and a model with tracks_only, received rollout_from="
                             f"{rollout_from}, start_steps={start_steps}, ramp_steps="
                             f"{ramp_steps}")
        self._sampling_seed = keras.random.SeedGenerator(seed) if ramp_steps else None

    def get_config(self):
        return {**super().get_config(), "rollout_from": self.rollout_from,
                "ramp_steps": self.ramp_steps, "start_steps": self.start_steps,
                "seed": self.seed, "track_loss_weight": self.track_loss_weight,
                "train_on_tracks": self.train_on_tracks}

    def own_probability(self):
        """The probability that a training step after the true frames reads the model's own
        prediction, now: 0 for the first `start_steps` optimizer steps, then
        `min(1, (steps - start_steps) / ramp_steps)` (1 without a ramp)."""
        if not self.ramp_steps and not self.start_steps:
            return 1.0
        steps = ops.cast(self.optimizer.iterations, "float32") - self.start_steps
        if not self.ramp_steps:
            return ops.cast(steps >= 0, "float32")
        return ops.clip(steps / self.ramp_steps, 0.0, 1.0)

    def _rollout_loss(self, data, training):
        """`(loss, metrics update)` of a batch with rollout predictions; validation always rolls
        out, training follows `own_probability`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if x.shape[1] is None or x.shape[1] <= self.rollout_from:
            y_pred = self(x, training=training)
        else:
            def rollout():
                return rollout_predictions(
                    self, x, self.rollout_from, training=training,
                    own_probability=self.own_probability() if training and self.ramp_steps
                    else 1.0,
                    seed=self._sampling_seed)

            if training and self.start_steps:
                # Teacher forcing first: one batched pass instead of a step-by-step rollout.
                # TensorFlow logs "Type inference failed" when it first traces this cond;
                # the warning is benign (tensorflow/tensorflow#57052).
                y_pred = tf.cond(self.optimizer.iterations < self.start_steps,
                                 lambda: self(x, training=True), rollout)
            elif self.track_loss_weight or self.train_on_tracks:
                # The tracker follows the objects through the true frames (x's first, then
                # y's); the rollout reads the centers of the first ones.
                tracked = _tracker(self)(whole_sequences(x, y))
                y_pred, centers = rollout_predictions(
                    self, x, self.rollout_from, training=training, return_centers=True,
                    centers=tracked)
                tracked = tracked[0]
            else:
                y_pred = rollout()
        rolled = x.shape[1] is not None and x.shape[1] > self.rollout_from
        if self.train_on_tracks and rolled:
            loss = track_loss(centers, tracked[:, 1:])
        else:
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                     training=training)
        if self.track_loss_weight and not self.train_on_tracks and rolled:
            loss += self.track_loss_weight * track_loss(centers, tracked[:, 1:])

        def update_metrics():
            self._loss_tracker.update_state(loss, sample_weight=ops.shape(x)[0])
            return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        return loss, update_metrics

    def train_step(self, data):
        if not self.rollout_from:
            return super().train_step(data)
        with tf.GradientTape() as tape:
            if self.train_on_tracks:
                centers = keras.utils.unpack_x_y_sample_weight(data)[0]
                if centers.shape.rank != 4 or centers.shape[-1] != 2:
                    raise ValueError("a model with train_on_tracks trains on tracked centers "
                                     "(batch, time, objects, 2), received a batch of shape "
                                     f"{centers.shape}: use load_data's train split")
                loss = track_loss(rollout_centers(self, centers, self.rollout_from, True),
                                  centers[:, 1:])

                def update_metrics():
                    self._loss_tracker.update_state(loss, sample_weight=ops.shape(centers)[0])
                    return {"loss": self._loss_tracker.result()}
            else:
                loss, update_metrics = self._rollout_loss(data, training=True)
            scaled = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
        return update_metrics()

    def get_metrics_result(self):
        if not self.train_on_tracks:
            return super().get_metrics_result()
        # Training on centers draws no frame: the frame metrics are built by the first
        # validation, and until then (the first training epoch) they have no result.
        results = {}
        for metric in self.metrics:
            if getattr(metric, "built", True):
                result = metric.result()
                results.update(result if isinstance(result, dict) else {metric.name: result})
        return results

    def test_step(self, data):
        if not self.rollout_from:
            return super().test_step(data)
        return self._rollout_loss(data, training=False)[1]()


# predict_frames builds its own graph loops, so AutoGraph has nothing to convert. Converting
# it once failed after a 56-minute training in the same process (the converted call ran
# RolloutModel.test_step instead), and the benchmark lost its test evaluation.
@tf.autograph.experimental.do_not_convert
def predict_frames(model, frames, num_frames):
    """Rolls the model forward: reads `frames`, then predicts `num_frames` more, each from the
    previous prediction.

    Args:
        model: a model from `build_model`.
        frames: `(batch, time, 64, 64, 1)` float in [0, 1], time >= 1.
        num_frames: int (or int32 scalar tensor) >= 1.

    Returns:
        `(batch, num_frames, 64, 64, 1)` float in [0, 1] (with a reference decoder, the moved
        layers themselves, without the floor of training).
    """
    frames = tf.convert_to_tensor(frames, tf.float32)
    encoder, recurrent, decoder = _parts(model)
    cell = recurrent.cell
    batch = tf.shape(frames)[0]
    tracker = _tracker(model)
    centers = tf.zeros([batch, tf.shape(frames)[1], 0, 2])
    if tracker is not None:
        centers, layers = tracker(frames)
    latent, features = _cell_inputs(
        encoder, frames, False,
        decoder.object_features(centers, tracked_moves(centers)) if tracker is not None
        else None)
    if features is None:  # Nothing of the frames is carried but where the objects are.
        features = tf.zeros([batch, tf.shape(frames)[1], 0])
    states = _initial_states(recurrent, batch)

    def read(t, states, _, outputs):
        output, states = cell(latent[:, t], states, training=False)
        return t + 1, states, output, outputs.write(t, output)

    # Read the given frames: the states after the last one, its output, and every output.
    _, states, output, outputs = tf.while_loop(
        lambda t, *_: t < tf.shape(frames)[1], read,
        (tf.constant(0), states, tf.zeros([batch, cell.output_size]),
         tf.TensorArray(tf.float32, size=tf.shape(frames)[1])))
    last_features, last_frame = features[:, -1:], frames[:, -1:]
    predicted = tf.TensorArray(tf.float32, size=num_frames,
                               element_shape=tf.TensorShape([None, FRAME_SIZE, FRAME_SIZE, 1]))
    if decoder.layers:
        # The last given frame is the reference: its layers and move (the learned split's
        # shares read the step before it), and the moves add up.
        outputs = tf.transpose(outputs.stack()[-2:], [1, 0, 2])
        if decoder.tracked:
            moves = decoder.object_moves(outputs, centers[:, -2:])
            reference = layers[:, -1]
        else:
            shares, moves = decoder.reference_parts(outputs, features[:, -2:], frames[:, -2:])
            reference = frames[:, -1] * shares[:, -1]
        offsets = moves[:, -1]
    else:
        offsets = tf.zeros([batch, 0, 2])
    positions = centers[:, -1]  # The tracked objects in the last given frame.

    def roll(k, states, output, last_features, last_frame, offsets, move, predicted):
        if decoder.layers:
            # The prediction is the moved layers themselves, with no floor; the encoder reads
            # them floored, as in training's rollouts.
            drawn = decoder.compose_layers(reference, offsets, floor=False)[:, None]
            frame = floored(drawn)
        else:
            frame = drawn = decoder([output[:, None], last_features, last_frame])
        predicted = predicted.write(k, drawn[:, 0])  # (batch, 64, 64, 1)
        new_latent, new_features = _cell_inputs(
            encoder, frame, False,
            decoder.object_features((positions + offsets)[:, None], move[:, None])
            if tracker is not None else None)
        if new_features is not None:
            last_features = new_features
        output, states = cell(new_latent[:, 0], states, training=False)
        if decoder.layers:
            move = (decoder.moves(output, positions + offsets, move) if decoder.tracked
                    else decoder.moves(output))
            offsets = offsets + move
        return k + 1, states, output, last_features, frame, offsets, move, predicted

    *_, predicted = tf.while_loop(
        lambda k, *_: k < num_frames, roll,
        (tf.constant(0), states, output, last_features, last_frame, offsets, offsets,
         predicted))
    return tf.transpose(predicted.stack(), [1, 0, 2, 3, 4])


def export_signatures(model):
    """Serving signatures: `frames` `[batch, time, 64, 64, 1]` and `num_frames` (int32 scalar,
    1 to 100) -> `predicted_frames` `[batch, num_frames, 64, 64, 1]`.

    `serving_default` takes and returns float32 in [0, 1]; `serving_uint8` takes and returns
    uint8 pixels (0-255), as frames are stored.
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
        checks = checked(frames, num_frames) + [
            tf.debugging.assert_greater_equal(frames, 0.0, message="frames must be in [0, 1]"),
            tf.debugging.assert_less_equal(frames, 1.0, message="frames must be in [0, 1] "
                                           "(for 0-255 pixels use the serving_uint8 signature)")]
        with tf.control_dependencies(checks):
            return {"predicted_frames": predict_frames(model, frames, num_frames)}

    @tf.function(input_signature=[tf.TensorSpec(frames_shape, tf.uint8, name="frames"),
                                  tf.TensorSpec([], tf.int32, name="num_frames")])
    def serving_uint8(frames, num_frames):
        frames = tf.ensure_shape(frames, frames_shape)
        with tf.control_dependencies(checked(frames, num_frames)):
            predicted = predict_frames(model, tf.cast(frames, tf.float32) / 255.0, num_frames)
        return {"predicted_frames": tf.cast(tf.round(predicted * 255.0), tf.uint8)}

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


def _example(name, config=None):
    """`test:N` -> `(input frames, true next frames)` of test sequence N, or `.npy` frames."""
    config = config or Config()
    if name.startswith("test:"):
        index = int(name.split(":", 1)[1])
        sequence = moving_mnist.moving_sequence(
            _test_digits(config.data_dir), index, TEST_SEED,
            config.input_frames + config.output_frames,
            config.digits_per_sequence)[None, ..., None].astype("float32") / 255.0
        return sequence[:, :config.input_frames], sequence[:, config.input_frames:]
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


def evaluation_report(model, data, run_dir=None, config=None, log=print, batch_size=100):
    """10 -> 10 on the fixed test set: MSE, MAE, SSIM for the model and copy-last-frame, and a
    PNG of input / truth / prediction for three sequences (`RUN_DIR/predictions.png`)."""
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
        log(f"[elman] nextframe: pictures in {path}")
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
