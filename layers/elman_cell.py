"""The Elman cell: one step of a simple recurrent network with an output projection."""

import numbers

import keras
from keras import activations, constraints, initializers, ops, regularizers


def _positive_int(name, value, allow_none=False):
    """Returns `value` if it is a positive integer, else raises a ValueError naming `name`."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        expected = "a positive integer or None" if allow_none else "a positive integer"
        raise ValueError(f"{name} must be {expected}, received {name}={value!r}")
    return int(value)


def _activation(name, value):
    """Resolves a Keras activation, raising a ValueError that names the argument."""
    try:
        return activations.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name} must be a Keras activation (e.g. 'tanh', 'relu', 'sigmoid', 'softmax', "
            f"'linear' or a callable), received {name}={value!r}"
        ) from error


@keras.saving.register_keras_serializable(package="elman")
class ElmanCell(keras.layers.SimpleRNNCell):
    """One step of an Elman network.

    The cell computes

        s_t = f(W s_{t-1} + U x_t + b)
        o_t = g(V s_t + c)

    with the same W, U, V at every step and `s_0 = 0` unless an initial state is
    given. W is the recurrent weight (`recurrent_kernel`), U the input weight
    (`kernel`) and b its bias, all three inherited from
    `keras.layers.SimpleRNNCell`; V and c are the output projection this class
    adds. Keras stores weights for row vectors, so in code the step reads
    `s_t = f(x_t @ U + s_{t-1} @ W + b)`, `o_t = g(s_t @ V + c)`.

    With `output_units=None` there is no output projection (`o_t = s_t`) and
    the cell is numerically identical to `SimpleRNNCell` in every mode Keras
    supports, so it can replace it anywhere.

    Args:
        units: Positive integer, size of the state `s_t`.
        output_units: Positive integer, size of the output `o_t`, or `None`
            (default) for no output projection.
        activation: f, the state activation. Default: `"tanh"`. Any Keras
            activation (`"relu"`, `"sigmoid"`, a callable, ...).
        output_activation: g, the output activation. Default: `None`
            (linear). E.g. `"softmax"` or `"sigmoid"`.
        use_bias: Boolean, whether the state has the bias b. Default: `True`.
        use_output_bias: Boolean, whether the output has the bias c.
            Default: `True`.
        kernel_initializer: Initializer for U. Default: `"glorot_uniform"`.
        recurrent_initializer: Initializer for W. Default: `"orthogonal"`.
            For relu cells, `keras.initializers.Identity(gain=g)` gives the
            IRNN recipe of Le et al. (2015).
        bias_initializer: Initializer for b. Default: `"zeros"`.
        output_initializer: Initializer for V. Default: `"glorot_uniform"`.
        output_bias_initializer: Initializer for c. Default: `"zeros"`.
        output_regularizer, output_bias_regularizer, output_constraint,
        output_bias_constraint: Regularizers and constraints for V and c.
        **kwargs: Every other argument of `keras.layers.SimpleRNNCell`
            (`dropout`, `recurrent_dropout`, `seed`, regularizers and
            constraints of U, W, b, `dtype`, `name`, ...).

    Call arguments:
        sequence: The input at one step, shape `(batch, input_dim)`.
        states: The previous state `s_{t-1}`, shape `(batch, units)`, or a
            list holding it.
        training: Python boolean, whether dropout applies.

    Returns:
        A tuple `(o_t, new_states)`: `o_t` of shape `(batch, output_units)`
        (or `(batch, units)` without projection) and the new state `s_t`, in
        the same structure as `states`.

    Example:

    ```python
    cell = ElmanCell(16, output_units=3, output_activation="softmax")
    layer = keras.layers.RNN(cell, return_sequences=True)
    outputs = layer(np.zeros((4, 10, 8), "float32"))  # (4, 10, 3)
    cell.W.shape, cell.U.shape, cell.V.shape  # (16, 16), (8, 16), (16, 3)
    ```
    """

    def __init__(
        self,
        units,
        output_units=None,
        activation="tanh",
        output_activation=None,
        use_bias=True,
        use_output_bias=True,
        output_initializer="glorot_uniform",
        output_bias_initializer="zeros",
        output_regularizer=None,
        output_bias_regularizer=None,
        output_constraint=None,
        output_bias_constraint=None,
        **kwargs,
    ):
        units = _positive_int("units", units)
        output_units = _positive_int("output_units", output_units, allow_none=True)
        _activation("activation", activation)
        super().__init__(units, activation=activation, use_bias=use_bias, **kwargs)
        self.output_units = output_units
        self.output_activation = _activation("output_activation", output_activation)
        self.use_output_bias = use_output_bias
        self.output_initializer = initializers.get(output_initializer)
        self.output_bias_initializer = initializers.get(output_bias_initializer)
        self.output_regularizer = regularizers.get(output_regularizer)
        self.output_bias_regularizer = regularizers.get(output_bias_regularizer)
        self.output_constraint = constraints.get(output_constraint)
        self.output_bias_constraint = constraints.get(output_bias_constraint)
        # Keras's RNN layer infers its output shape from `output_size`.
        self.output_size = output_units or units
        self.output_kernel = None
        self.output_bias = None

    def build(self, input_shape):
        super().build(input_shape)
        if self.output_units is not None:
            self.output_kernel = self.add_weight(
                shape=(self.units, self.output_units),
                name="output_kernel",
                initializer=self.output_initializer,
                regularizer=self.output_regularizer,
                constraint=self.output_constraint,
            )
            if self.use_output_bias:
                self.output_bias = self.add_weight(
                    shape=(self.output_units,),
                    name="output_bias",
                    initializer=self.output_bias_initializer,
                    regularizer=self.output_bias_regularizer,
                    constraint=self.output_bias_constraint,
                )

    # The aliases of the Elman equations. They return the Keras variables themselves, so
    # that assigning to `cell.W` assigns the weight Keras trains and saves.
    @property
    def W(self):
        """The recurrent weight, shape `(units, units)`."""
        return self.recurrent_kernel

    @property
    def U(self):
        """The input weight, shape `(input_dim, units)`."""
        return self.kernel

    @property
    def V(self):
        """The output weight, shape `(units, output_units)`, or `None` without projection."""
        return self.output_kernel

    @property
    def b(self):
        """The state bias, shape `(units,)`, or `None`."""
        return self.bias

    @property
    def c(self):
        """The output bias, shape `(output_units,)`, or `None`."""
        return self.output_bias

    def project(self, state):
        """Applies the output equation `o = g(s @ V + c)` to states of any leading shape.

        Args:
            state: Tensor of shape `(..., units)`.

        Returns:
            `(..., output_units)`, or `state` itself when the cell has no projection.
        """
        if self.output_kernel is None:
            return state
        output = ops.matmul(state, self.output_kernel)
        if self.output_bias is not None:
            output = ops.add(output, self.output_bias)
        if self.output_activation is not None:
            output = self.output_activation(output)
        return output

    def call(self, sequence, states, training=False):
        # SimpleRNNCell computes the state equation, dropout masks included, so that without
        # V the cell is SimpleRNNCell exactly.
        state, new_states = super().call(sequence, states, training=training)
        return self.project(state), new_states

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_units": self.output_units,
                "output_activation": activations.serialize(self.output_activation),
                "use_output_bias": self.use_output_bias,
                "output_initializer": initializers.serialize(self.output_initializer),
                "output_bias_initializer": initializers.serialize(self.output_bias_initializer),
                "output_regularizer": regularizers.serialize(self.output_regularizer),
                "output_bias_regularizer": regularizers.serialize(self.output_bias_regularizer),
                "output_constraint": constraints.serialize(self.output_constraint),
                "output_bias_constraint": constraints.serialize(self.output_bias_constraint),
            }
        )
        return config
