"""Pooling over the states of a recurrent layer."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class StatePooling(keras.layers.Layer):
    """Concatenates the max and the mean of the states over the unmasked steps.

    Unlike `GlobalMaxPooling1D` and `GlobalAveragePooling1D`, a sequence whose steps are all masked
    (an empty review) pools to zeros instead of `-inf` or NaN.

    Args:
        modes: tuple of `"max"` and/or `"mean"`, concatenated in that order. Default: both.

    Call arguments:
        states: `(batch, time, units)`.
        mask: optional boolean `(batch, time)`.

    Returns:
        `(batch, units * len(modes))`.

    Example:

    ```python
    pooled = StatePooling()(np.ones((2, 5, 3), "float32"))  # (2, 6)
    ```
    """

    def __init__(self, modes=("max", "mean"), **kwargs):
        super().__init__(**kwargs)
        modes = tuple(modes)
        if not modes or any(mode not in ("max", "mean") for mode in modes):
            raise ValueError(f"modes must be a non-empty tuple of 'max' and 'mean', "
                             f"received modes={modes!r}")
        self.modes = modes
        self.supports_masking = True

    def call(self, states, mask=None):
        if mask is None:
            mask = ops.ones(ops.shape(states)[:2], dtype="bool")
        weights = ops.expand_dims(ops.cast(mask, states.dtype), -1)  # (batch, time, 1)
        count = ops.sum(weights, axis=1)  # (batch, 1)
        pooled = []
        for mode in self.modes:
            if mode == "max":
                lowest = ops.min(states, axis=1, keepdims=True) - 1.0
                maximum = ops.max(ops.where(weights > 0, states, lowest), axis=1)
                pooled.append(ops.where(count > 0, maximum, ops.zeros_like(maximum)))
            else:
                pooled.append(ops.sum(states * weights, axis=1) / ops.maximum(count, 1.0))
        return ops.concatenate(pooled, axis=-1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        units = input_shape[-1]
        return (input_shape[0], None if units is None else units * len(self.modes))

    def get_config(self):
        return {**super().get_config(), "modes": list(self.modes)}
