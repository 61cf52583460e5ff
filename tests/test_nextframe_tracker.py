"""The object tracker and the bilinear translations of the next-frame app, against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from elman.apps.nextframe import tracker
from elman.datasets import moving_mnist


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
    moved = tracker.translate_frames(tf.constant(frames), tf.constant(offsets)).numpy()
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
        return tf.reduce_sum(weights * tracker.translate_frames(tf.constant(frames[:1]), offset))

    with tf.GradientTape() as tape:
        value = objective(offsets)
    gradient = tape.gradient(value, offsets).numpy()
    step = 1e-2
    for axis in range(2):
        delta = np.zeros((1, 2), "float32")
        delta[0, axis] = step
        numeric = (objective(offsets + delta) - objective(offsets - delta)).numpy() / (2 * step)
        assert gradient[0, axis] == pytest.approx(numeric, rel=1e-2)


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


def test_object_tracker_follows_objects_through_overlaps():
    shapes = moving_mnist.synthetic_shapes(10)
    frames = moving_mnist.moving_sequences(shapes, range(4), seed=1)[..., None] / 255.0
    follower = tracker.ObjectTracker(2, iterations=6)
    centers, layers = (part.numpy() for part in follower(frames.astype("float32")))
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
    centers, layers = (part.numpy()[0] for part in follower(passing[None, ..., None]))
    if centers[0, 0, 1] > centers[0, 1, 1]:
        centers, layers = centers[:, ::-1], layers[..., ::-1]
    np.testing.assert_allclose(np.diff(centers, axis=0), np.diff(corners, axis=0), atol=1e-4)
    for k in range(2):
        np.testing.assert_allclose(layers[-1, ..., k], alone[k, -1], atol=1e-5)
    # A blank frame after one object: it stays where it was, with nothing in its layer.
    blank_after = np.stack([alone[0, 0], np.zeros((64, 64), "float32")])[None, ..., None]
    centers, layers = tracker.ObjectTracker(1)(blank_after)
    np.testing.assert_array_equal(centers[0, 1], centers[0, 0])
    np.testing.assert_array_equal(layers[0, 1], 0.0)
    with pytest.raises(ValueError, match="count, iterations and search must be >= 1"):
        tracker.ObjectTracker(2, search=0)


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
    layer holding parts of both. The pixels no moved layer explains go to the object whose
    move explains them, and a frame whose objects stand apart is split afresh: after a few
    frames each layer is one whole shape, centered on it."""
    for seed in (6, 16):
        frames, alone = _shapes_parting(seed)
        centers, layers = (part.numpy()[0]
                           for part in tracker.ObjectTracker(2)(frames[None, ..., None]))

        def layer_error(t):  # the two layers against the two shapes, either order
            return min(sum(np.abs(layers[t, ..., k] - alone[order[k], t]).max()
                           for k in range(2)) for order in ((0, 1), (1, 0)))

        assert layer_error(0) > 0.5  # The first split is wrong for both.
        assert layer_error(-1) < 1e-5
        # Each center is then its shape's center of mass.
        order = (0, 1) if np.abs(layers[-1, ..., 0] - alone[0, -1]).max() < 1e-5 else (1, 0)
        positions = np.indices((64, 64)).reshape(2, -1).T
        for k in range(2):
            shape = alone[order[k], -1].reshape(-1)
            np.testing.assert_allclose(centers[-1, k], shape @ positions / shape.sum(),
                                       atol=1e-3)


def test_object_tracker_tells_layers_apart_only_where_no_stroke_touches():
    layers = np.zeros((4, 64, 64, 2), "float32")
    layers[:, 10:20, 10:20, 0] = 1.0
    layers[:, 10:20, 22:32, 1] = 1.0  # Two pixels of background between them.
    layers[1, 15, 20, 1] = 1.0  # A side neighbor touches.
    layers[2, 20, 20, 1] = 0.5  # So does a diagonal one.
    layers[3, ..., 1] = 0.0
    layers[3, 40, 40, 1] = 1.0  # A layer with almost nothing.
    apart = tracker.ObjectTracker(2).apart(tf.constant(layers)).numpy()
    np.testing.assert_array_equal(apart, [True, False, False, False])
    restored = tracker.ObjectTracker.from_config(tracker.ObjectTracker(3, 4, 2).get_config())
    assert (restored.count, restored.iterations, restored.search) == (3, 4, 2)


def test_object_tracker_matches_each_layer_at_its_best_whole_pixel_move():
    """`match` against a NumPy search over every move of up to 3 pixels: the least squared
    difference between the frame and the layer moved, zeros entering."""
    rng = np.random.default_rng(0)
    frames = rng.uniform(size=(3, 64, 64, 1)).astype("float32")
    layers = rng.uniform(size=(3, 64, 64, 2)).astype("float32")
    moves = tracker.ObjectTracker(2, search=3).match(tf.constant(frames), tf.constant(layers))
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
