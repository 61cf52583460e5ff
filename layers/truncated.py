"""Truncated backpropagation through time, as a cell wrapper."""

import keras
from keras import ops

from elman.layers.elman_cell import _positive_int


@keras.saving.register_keras_serializable(package="elman")
class TruncatedBackprop(keras.layers.Layer):
    """Wraps a one-state cell (e.g. `ElmanCell`) so that gradients flow at most `steps` steps back.

    The state passes through `stop_gradient` every `steps` steps (before steps 1, k+1, 2k+1, ...),
    which is truncated BPTT with k = `steps`: the forward pass is unchanged, but a loss can only
    teach the steps since the last cut. A step counter rides along as a second state.

    Args:
        cell: the wrapped cell; it must have a single state.
        steps: positive integer, k.

    Call arguments:
        inputs: `(batch, input_dim)`.
        states: `[s_{t-1} (batch, units), counter (batch, 1)]`.
        training: Python boolean, passed to the cell.

    Returns:
        `(output, [s_t, counter + 1])`.

    Example:

    ```python
    layer = keras.layers.RNN(TruncatedBackprop(ElmanCell(32), steps=20))
    ```
    """

    def __init__(self, cell, steps, **kwargs):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        self.cell = cell
        self.steps = _positive_int("steps", steps)
        self.state_size = [cell.state_size, 1]
        self.output_size = getattr(cell, "output_size", cell.state_size)

    def build(self, input_shape):
        if not self.cell.built:
            self.cell.build(input_shape)
        self.built = True

    def call(self, inputs, states, training=False):
        state, counter = states
        cut = ops.cast(ops.equal(ops.mod(counter, self.steps), 0), state.dtype)  # (batch, 1)
        state = cut * ops.stop_gradient(state) + (1.0 - cut) * state
        output, new_states = self.cell(inputs, [state], training=training)
        new_state = new_states[0] if isinstance(new_states, (list, tuple)) else new_states
        return output, [new_state, counter + 1.0]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.cell.state_size), self.compute_dtype),
                ops.zeros((batch_size, 1), self.compute_dtype)]

    def get_config(self):
        return {**super().get_config(), "cell": keras.saving.serialize_keras_object(self.cell),
                "steps": self.steps}
