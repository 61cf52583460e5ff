"""Moving MNIST (Srivastava et al., 2015): digits bouncing in 64x64 frames, generated from MNIST.

Each sequence places `digits_per_sequence` 28x28 MNIST digits at random positions of a 64x64
canvas and moves each in a straight line at a constant speed (3.6 pixels per frame, as in the
original generator), bouncing off the edges; overlapping digits combine by their maximum.
Sequence `i` of a split is a pure function of `(seed, i)`, so the fixed test set is the same on
every machine and needs no file.

Where the digits come from, in order:

1. `<data_dir>/mnist/train-images-idx3-ubyte.gz` and `t10k-images-idx3-ubyte.gz`: training
   sequences from the 60k training digits, test sequences from the 10k test digits;
2. `<data_dir>/mnist/t10k-images-idx3-ubyte.gz` alone (the project's shared data folder): training
   sequences from test digits 0-7999, test sequences from digits 8000-9999, so the two never
   share a digit image;
3. the canonical MNIST files, downloaded into `<data_dir>/mnist/` (needs a network);
4. with no data directory at all, synthetic shapes (squares, discs, crosses, rings) instead of
   digits: the same motion, no download, for the default run and the tests.
"""

import gzip
from pathlib import Path

import numpy as np

from elman.datasets import resolve_data_dir

URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
TRAIN_FILE, TEST_FILE = "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"
FRAME_SIZE = 64
DIGIT_SIZE = 28
# Srivastava et al.'s generator moves a digit 0.1 of the free range (64 - 28) per frame.
STEP = 0.1 * (FRAME_SIZE - DIGIT_SIZE)


def read_idx_images(path):
    """`(count, rows, columns)` uint8 images from a gzip idx3 file."""
    data = gzip.open(path).read()
    if len(data) < 16 or int.from_bytes(data[:4], "big") != 2051:
        raise ValueError(f"{path} is not an idx3 image file (expected the magic number 2051)")
    count, rows, columns = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, columns)


def synthetic_shapes(count=64, seed=0):
    """`(count, 28, 28)` uint8 images of filled or outlined shapes, for the default run."""
    rows, columns = np.mgrid[:DIGIT_SIZE, :DIGIT_SIZE] - (DIGIT_SIZE - 1) / 2
    radius = np.hypot(rows, columns)
    shapes = [
        (np.abs(rows) < 9) & (np.abs(columns) < 9),  # square
        radius < 10,  # disc
        ((np.abs(rows) < 3) | (np.abs(columns) < 3)) & (radius < 13),  # cross
        (radius < 11) & (radius > 6),  # ring
        (np.abs(rows) + np.abs(columns)) < 11,  # diamond
    ]
    generator = np.random.default_rng(seed)
    images = []
    for index in range(count):
        shape = shapes[index % len(shapes)].astype("float32")
        shade = generator.uniform(0.6, 1.0)
        images.append(np.round(255 * shade * shape).astype(np.uint8))
    return np.stack(images)


def load_digits(data_dir=None, download=True):
    """The digit images for training and test sequences.

    Returns:
        A dict `{"train": (n, 28, 28) uint8, "test": (m, 28, 28) uint8, "source": str}`.

    Raises:
        FileNotFoundError: when a data directory is set but holds no MNIST file and the download
            failed; the message says where to put the files.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        return {"train": synthetic_shapes(64, seed=0), "test": synthetic_shapes(64, seed=1),
                "source": "synthetic shapes (no data directory set)"}
    folder = root / "mnist"
    train_path, test_path = folder / TRAIN_FILE, folder / TEST_FILE
    if not test_path.is_file():
        problem = "download=False"
        if download:
            try:
                test_path = _download(folder, TEST_FILE)
                train_path = _download(folder, TRAIN_FILE)
                problem = None
            except Exception as error:  # Any failure of the network.
                problem = f"downloading {URL} failed ({type(error).__name__}: {error})"
        if problem is not None:
            raise FileNotFoundError(
                f"MNIST was not found under {root}: expected {test_path} (and optionally "
                f"{train_path}), the gzip idx files from {URL}; {problem}. Put the files "
                "there, or unset ELMAN_DATA_DIR (and --data-dir) to use synthetic shapes.")
    test_digits = read_idx_images(test_path)
    if train_path.is_file():
        return {"train": read_idx_images(train_path), "test": test_digits,
                "source": f"{folder} (train digits -> train sequences, test digits -> test)"}
    return {"train": test_digits[:8000], "test": test_digits[8000:],
            "source": f"{test_path} (digits 0-7999 -> train sequences, 8000-9999 -> test)"}


def _download(folder, name):
    import keras

    folder.mkdir(parents=True, exist_ok=True)
    return Path(keras.utils.get_file(name, URL + name, cache_dir=str(folder), cache_subdir="."))


def moving_sequence(digits, index, seed, frames=20, digits_per_sequence=2,
                    return_positions=False, return_digits=False):
    """Sequence `index` of the split seeded by `seed`: `(frames, 64, 64)` uint8.

    A pure function of `(seed, index)` and the digit images: the same sequence on every machine.
    With `return_positions`, also where each digit was drawn: `(frames, digits_per_sequence,
    2)` int, the `(row, column)` of its 28x28 image's top-left corner. With `return_digits`,
    also which images of `digits` were drawn: `(digits_per_sequence,)` int (after the
    positions, if both).
    """
    generator = np.random.default_rng([seed, index])
    canvas = np.zeros((frames, FRAME_SIZE, FRAME_SIZE), np.uint8)
    corners = np.zeros((frames, digits_per_sequence, 2), int)
    chosen = np.zeros(digits_per_sequence, int)
    free = FRAME_SIZE - DIGIT_SIZE
    for digit in range(digits_per_sequence):
        chosen[digit] = generator.integers(len(digits))
        image = digits[chosen[digit]]
        position = generator.uniform(0, free, size=2)
        angle = generator.uniform(0, 2 * np.pi)
        velocity = STEP * np.array([np.sin(angle), np.cos(angle)])
        for frame in range(frames):
            top, left = corners[frame, digit] = np.round(position).astype(int)
            window = canvas[frame, top:top + DIGIT_SIZE, left:left + DIGIT_SIZE]
            np.maximum(window, image, out=window)
            position = position + velocity
            for axis in range(2):  # Bounce: reflect the position and reverse the direction.
                if position[axis] < 0:
                    position[axis], velocity[axis] = -position[axis], -velocity[axis]
                elif position[axis] > free:
                    position[axis], velocity[axis] = 2 * free - position[axis], -velocity[axis]
    extras = ((corners,) if return_positions else ()) + ((chosen,) if return_digits else ())
    return (canvas, *extras) if extras else canvas


def moving_sequences(digits, indices, seed, frames=20, digits_per_sequence=2):
    """`(len(indices), frames, 64, 64)` uint8: `moving_sequence` for each index."""
    return np.stack([moving_sequence(digits, int(index), seed, frames, digits_per_sequence)
                     for index in indices])
