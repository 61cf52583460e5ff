"""Synthetic long-range tasks from the literature, the standard tests of what BPTT can learn.

- The adding problem (Hochreiter & Schmidhuber 1997; the version of Le et al. 2015 and
  Arjovsky et al. 2016): each step carries a random number in [0, 1) and a marker; exactly two
  steps are marked, one in each half of the sequence; the target, read at the last step, is the
  sum of the two marked numbers. Always answering 1 (the mean of the target) scores an MSE of
  1/6 = 0.167, the variance of the sum of two uniform numbers; solving the task means an MSE far
  below that.
- The copy-memory task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016): ten symbols drawn
  from eight, then `delay` blanks, the last of which is replaced by a "go" marker, then ten more
  blanks; the model must output blanks until the marker and then the ten symbols, in order.
  Guessing scores 1/8 = 12.5% accuracy on the ten recalled symbols.
"""

import numpy as np

# Copy-memory vocabulary: 0 blank, 1..8 symbols, 9 the "go" marker.
BLANK, GO, SYMBOLS, COPY_LENGTH = 0, 9, 8, 10
COPY_CLASSES = 10
# MSE of always answering 1 on the adding problem: Var(u1 + u2) = 2/12.
ADDING_BASELINE_MSE = 1.0 / 6.0


def adding_problem(num_sequences, sequence_length, seed=0):
    """Sequences of the adding problem.

    Args:
        num_sequences: how many sequences.
        sequence_length: steps per sequence (at least 2).
        seed: NumPy seed; the same seed gives the same sequences.

    Returns:
        `(inputs, targets)`: `inputs` `(num_sequences, sequence_length, 2)` float32 (the number,
        the marker), `targets` `(num_sequences, 1)` float32.
    """
    if sequence_length < 2:
        raise ValueError(f"the adding problem needs sequence_length >= 2, "
                         f"received sequence_length={sequence_length}")
    rng = np.random.default_rng(seed)
    numbers = rng.uniform(size=(num_sequences, sequence_length)).astype("float32")
    half = sequence_length // 2
    first = rng.integers(0, half, size=num_sequences)
    second = rng.integers(half, sequence_length, size=num_sequences)
    markers = np.zeros_like(numbers)
    rows = np.arange(num_sequences)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = (numbers[rows, first] + numbers[rows, second])[:, None]
    return np.stack([numbers, markers], axis=-1), targets.astype("float32")


def copy_memory(num_sequences, delay, seed=0):
    """Sequences of the copy-memory task, `delay + 2 * COPY_LENGTH` steps long.

    Args:
        num_sequences: how many sequences.
        delay: steps from the last symbol to the "go" marker, the marker included (at least
            1): the symbols must be remembered for `delay + COPY_LENGTH` steps.
        seed: NumPy seed.

    Returns:
        `(inputs, targets)`: `inputs` `(num_sequences, time, COPY_CLASSES)` float32 one-hot,
        `targets` `(num_sequences, time)` int32 class ids, where
        `time = delay + 2 * COPY_LENGTH`.
    """
    if delay < 1:
        raise ValueError(f"the copy-memory task needs delay >= 1, received delay={delay}")
    rng = np.random.default_rng(seed)
    time = delay + 2 * COPY_LENGTH
    symbols = rng.integers(1, SYMBOLS + 1, size=(num_sequences, COPY_LENGTH))
    ids = np.full((num_sequences, time), BLANK)
    ids[:, :COPY_LENGTH] = symbols
    ids[:, COPY_LENGTH + delay - 1] = GO
    targets = np.full((num_sequences, time), BLANK)
    targets[:, -COPY_LENGTH:] = symbols
    inputs = np.eye(COPY_CLASSES, dtype="float32")[ids]
    return inputs, targets.astype("int32")


def copy_accuracy(targets, probabilities):
    """Accuracy on the ten recalled symbols: `targets` `(batch, time)`, `probabilities`
    `(batch, time, COPY_CLASSES)`."""
    predicted = np.argmax(probabilities[:, -COPY_LENGTH:], axis=-1)
    return float(np.mean(predicted == targets[:, -COPY_LENGTH:]))
