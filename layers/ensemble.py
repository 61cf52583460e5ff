"""Ensembles inside one model: members trained side by side, each on its own loss, served as
the mean of their probabilities."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class EnsembleAverage(keras.layers.Layer):
    """Combines the probabilities of an ensemble's members.

    At inference it returns their mean. In training it returns each member's probability side
    by side, so that `ensemble_binary_crossentropy` trains every member on its own error,
    exactly as if it were trained alone on the same batches: the members do not learn to
    correct each other, which is what makes an average of independent models better than
    any one of them. Validation and evaluation (training off) score the mean.

    Call arguments:
        probabilities: a list of `members` tensors `(batch, 1)`.
        training: bool.

    Returns:
        `(batch, 1)` at inference; `(batch, members)` in training.

    Example:

    ```python
    average = EnsembleAverage()
    average([np.full((2, 1), 0.2), np.full((2, 1), 0.6)])  # [[0.4], [0.4]]
    average([np.full((2, 1), 0.2), np.full((2, 1), 0.6)], training=True)  # [[0.2, 0.6]] * 2
    ```
    """

    def call(self, probabilities, training=False):
        stacked = ops.concatenate(list(probabilities), axis=-1)  # (batch, members)
        if training:
            return stacked
        return ops.mean(stacked, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shapes):
        return (input_shapes[0][0], 1)


@keras.saving.register_keras_serializable(package="elman")
def ensemble_binary_crossentropy(y_true, y_pred):
    """Binary cross-entropy of each member, averaged over the members.

    Args:
        y_true: `(batch,)` or `(batch, 1)` targets in [0, 1].
        y_pred: `(batch, members)` probabilities (`EnsembleAverage` in training), or
            `(batch, 1)`, where it is Keras's binary cross-entropy.

    Returns:
        `(batch,)`: the mean over the members of their cross-entropies.
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.cast(ops.reshape(y_true, (-1, 1)), y_pred.dtype)
    return keras.losses.binary_crossentropy(ops.broadcast_to(y_true, ops.shape(y_pred)), y_pred)
