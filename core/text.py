"""What the apps that read or write text share: sequence lengths, teacher forcing, masked losses.

A decoder trained with teacher forcing reads "[start] w_1 ... w_n" and learns to write
"w_1 ... w_n [end]"; padding (id 0) is neither read nor scored.
"""

import keras
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
