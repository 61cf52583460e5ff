"""Stepping one recurrent cell on several objects apart, with the same weights."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="elman")
class ObjectwiseCell(keras.layers.Layer):
    """Steps a recurrent cell on each of `objects` objects apart, with the same weights: an RNN
    cell `(batch, objects * features)` -> `(batch, objects * output_size)`, for objects that
    move independently (Moving MNIST's digits pass through each other).

    Input features `[k * features:(k + 1) * features]` are object k's. The inner cell steps
    `(batch * objects, features)` rows: object k of every sequence has its own state, and W,
    U, V are shared by all objects, so what the cell learns of one object's motion holds for
    the other's, and it cannot confuse them. Output k is object k's. Each inner state of
    shape `s` is held as `(batch, objects, *s)`.

    Args:
        cell: the inner RNN cell (an `ElmanCell`, or any cell with `state_size` and
            `output_size`), or its serialized config.
        objects: int >= 1.

    Call arguments:
        inputs: `(batch, objects * features)`.
        states: the inner cell's states, each `(batch, objects, *shape)`.

    Returns:
        `(outputs (batch, objects * output_size), new states)`.

    Example:

    >>> cell = ObjectwiseCell(ElmanCell(32, output_units=8), objects=2)
    >>> outputs = keras.layers.RNN(cell, return_sequences=True)(np.zeros((4, 10, 2 * 4)))
    >>> outputs.shape  # (4, 10, 16)
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
