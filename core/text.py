"""What the apps that read or write text share: sequence lengths, teacher forcing, masked losses,
word vectors from co-occurrence counts.

A decoder trained with teacher forcing reads "[start] w_1 ... w_n" and learns to write
"w_1 ... w_n [end]"; padding (id 0) is neither read nor scored.
"""

import keras
import numpy as np
from keras import ops

# The words that open and close every target sequence; standardized text has no brackets, so
# no real word can be one of them.
START, END = "[start]", "[end]"
# TextVectorization's word for every word outside its vocabulary.
UNKNOWN = "[UNK]"


@keras.saving.register_keras_serializable(package="elman")
class SequenceLength(keras.layers.Layer):
    """Pads word ids with one padding step, then cuts them to `max_length` steps.

    The extra step keeps at least one (masked) step when every sentence of a batch is empty.

    Call arguments:
        word_ids: integer `(batch, time)`.

    Returns:
        `(batch, min(time + 1, max_length))`.
    """

    def __init__(self, max_length, **kwargs):
        super().__init__(**kwargs)
        if max_length < 1:
            raise ValueError(f"max_length must be a positive integer, received {max_length}")
        self.max_length = int(max_length)

    def call(self, word_ids):
        return ops.pad(word_ids, [[0, 0], [0, 1]])[:, :self.max_length]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


def teacher_forcing(target_ids):
    """Splits "[start] w_1 ... w_n [end]" ids into the decoder's inputs and its labels.

    Labels are the ids shifted left (`w_1 ... w_n [end]`); inputs are the ids shifted right,
    with "[end]" never read (padding where the label is padding), so the decoder's mask is the
    labels' mask and the loss and accuracy count exactly the reference's words.

    Returns:
        `(decoder_inputs, labels)`, both `(batch, time - 1)`.
    """
    labels = target_ids[:, 1:]
    inputs = ops.where(ops.not_equal(labels, 0), target_ids[:, :-1], ops.zeros_like(labels))
    return inputs, labels


def _align(labels, logits):
    """Labels padded or cut to the logits' time steps: `(batch, time)`.

    The model pads each batch to its own longest sentence; labels padded within a larger batch
    (a re-batched dataset) have extra columns of padding only, which are cut here.
    """
    labels = ops.cast(labels, "int32")
    time = ops.shape(logits)[1]
    missing = ops.maximum(time - ops.shape(labels)[1], 0)
    return ops.pad(labels, [[0, 0], [0, missing]])[:, :time]


@keras.saving.register_keras_serializable(package="elman")
class MaskedCrossentropy(keras.losses.SparseCategoricalCrossentropy):
    """Cross-entropy of the next-word logits, averaged over the reference's words only.

    Call arguments:
        y_true: integer `(batch, time)`; 0 is padding.
        y_pred: logits `(batch, time, vocabulary)`.
    """

    def __init__(self, name="masked_crossentropy", **kwargs):
        kwargs.update(from_logits=True, ignore_class=0)
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return super().call(_align(y_true, y_pred), y_pred)

    def get_config(self):
        return {"name": self.name}


@keras.saving.register_keras_serializable(package="elman")
class MaskedAccuracy(keras.metrics.Mean):
    """Share of the reference's words (labels other than padding 0) predicted right.

    Call arguments:
        y_true: integer `(batch, time)`; 0 is padding.
        y_pred: logits `(batch, time, vocabulary)`.
    """

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = _align(y_true, y_pred)
        correct = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, -1), "int32"), y_true), "float32")
        return super().update_state(correct, sample_weight=ops.cast(ops.not_equal(y_true, 0),
                                                                    "float32"))


def cooccurrence_counts(word_ids, vocabulary_size, window=5, context_words=5000):
    """How often each word has each of the most frequent words within `window` words of it.

    Args:
        word_ids: iterable of integer arrays, one per text, of ids in `[0, vocabulary_size)`;
            ids 0 (padding) and 1 (out of vocabulary) are neither counted nor counted as
            contexts. Ids are assumed ordered by frequency, as `TextVectorization` orders them,
            so the contexts are ids `2 .. context_words + 1`.
        vocabulary_size: int.
        window: int >= 1, the largest distance between a word and its context word.
        context_words: int, how many of the most frequent words serve as contexts.

    Returns:
        `(vocabulary_size, context_words)` float32: row w, column c counts the pairs of w and
        the context word of id `c + 2` at distances 1 to `window`, before or after it.
    """
    if window < 1:
        raise ValueError(f"window must be a positive integer, received {window}")
    separator = np.zeros(window, np.int64)  # Pairs never span two texts.
    ids = np.concatenate([np.concatenate([np.asarray(sequence, np.int64), separator])
                          for sequence in word_ids] or [separator])
    if ids.size and (ids.min() < 0 or ids.max() >= vocabulary_size):
        raise ValueError(f"word ids must lie in [0, {vocabulary_size}), received ids from "
                         f"{ids.min()} to {ids.max()}")
    keys = []
    for distance in range(1, window + 1):
        for words, contexts in ((ids[:-distance], ids[distance:]),
                                (ids[distance:], ids[:-distance])):
            context = contexts - 2
            kept = (words > 1) & (context >= 0) & (context < context_words)
            keys.append(words[kept] * context_words + context[kept])
    counts = np.bincount(np.concatenate(keys), minlength=vocabulary_size * context_words)
    return counts.reshape(vocabulary_size, context_words).astype(np.float32)


def word_vectors(counts, dimensions, seed=0):
    """Word vectors from co-occurrence counts: positive PMI, then a truncated SVD.

    The classic count-based word embedding (Levy, Goldberg & Dagan 2015): PPMI with context
    distribution smoothing (counts of contexts raised to 0.75), factored by a randomized SVD
    (Halko et al. 2011), vectors `U_k sqrt(S_k)`. Words that appear in the same contexts get
    similar vectors.

    Args:
        counts: `(words, contexts)` co-occurrence counts, as `cooccurrence_counts` returns.
        dimensions: int, the size of the vectors (at most `min(words, contexts)`).
        seed: int, for the randomized SVD.

    Returns:
        `(words, dimensions)` float32; the rows of words without a positive PMI are zero.
    """
    counts = np.asarray(counts, np.float32)
    if not 0 < dimensions <= min(counts.shape):
        raise ValueError(f"dimensions must be in [1, {min(counts.shape)}], received {dimensions}")
    total = counts.sum()
    if total == 0:
        raise ValueError("the co-occurrence counts are all zero: no text had two words within "
                         "the window")
    word_probability = counts.sum(axis=1, keepdims=True) / total
    smoothed = counts.sum(axis=0, keepdims=True) ** 0.75
    context_probability = smoothed / smoothed.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(counts / total / (word_probability * context_probability))
    ppmi = np.where(np.isfinite(pmi) & (pmi > 0), pmi, np.float32(0))
    del pmi
    # Randomized SVD: an orthonormal basis of the range, refined by two power iterations.
    rng = np.random.default_rng(seed)
    sketch = rng.standard_normal((ppmi.shape[1], min(dimensions + 10, min(ppmi.shape))))
    basis = ppmi @ sketch.astype(np.float32)
    for _ in range(2):
        basis, _ = np.linalg.qr(basis)
        basis = ppmi @ (ppmi.T @ basis)
    basis, _ = np.linalg.qr(basis)
    left, singular_values, _ = np.linalg.svd(basis.T @ ppmi, full_matrices=False)
    vectors = (basis @ left[:, :dimensions]) * np.sqrt(singular_values[:dimensions])
    vectors[~ppmi.any(axis=1)] = 0  # Exactly, not rounding errors.
    return vectors.astype(np.float32)
