"""`ElmanRNN`: `keras.layers.RNN` for `ElmanCell` with the projections moved out of the loop."""

import keras
import tensorflow as tf

from elman.layers.elman_cell import ElmanCell

# State activations applied entry by entry, for which f'(a) is the gradient of sum(f(a)).
_ELEMENTWISE = {"tanh", "relu", "sigmoid", "linear", "elu", "selu", "softplus", "softsign",
                "gelu", "silu", "swish", "hard_sigmoid", "hard_silu", "hard_swish", "relu6",
                "leaky_relu", "exponential", "mish", "celu", "sparse_plus",
                "squareplus", "tanh_shrink", "hard_tanh", "soft_shrink", "hard_shrink",
                "log_sigmoid"}


# Steps run per iteration of the graph loop: each iteration of a TensorFlow while loop costs
# tens of microseconds of bookkeeping, more than the step itself for small batches. Sequences
# are padded with masked steps to a multiple of it.
_STEPS_PER_ITERATION = 8


def _scan_blocks(step, sequences, initial_carry, reverse=False, block=_STEPS_PER_ITERATION):
    """Runs `carry, output = step(carry, inputs_t)` over time, several steps per loop iteration.

    Args:
        step: the step function; `inputs_t` is a tuple with one `(batch, ...)` slice of each
            entry of `sequences`.
        sequences: tuple of time-major tensors `(time, batch, ...)`.
        initial_carry: the carry before the first step.
        reverse: run from the last step to the first (outputs stay in time order).
        block: steps per loop iteration; it must divide the number of steps.

    Returns:
        `(final_carry, outputs)`, outputs `(time, batch, ...)`.
    """
    steps = tf.shape(sequences[0])[0]
    blocks = steps // block
    # (blocks, block, batch, ...): iteration i reads block i.
    blocked = [tf.reshape(x, tf.concat([[blocks, block], tf.shape(x)[1:]], 0))
               for x in sequences]
    # One entry per step: stacking each block's outputs inside the loop (a Pack op per
    # iteration) cost more than the steps themselves.
    outputs = tf.TensorArray(sequences[0].dtype, size=steps, infer_shape=False)
    order = list(range(block))[::-1] if reverse else list(range(block))

    def body(i, carry, outputs):
        index = blocks - 1 - i if reverse else i
        inputs = [x[index] for x in blocked]
        for j in order:
            carry, result = step(carry, tuple(x[j] for x in inputs))
            outputs = outputs.write(index * block + j, result)
        return i + 1, carry, outputs

    _, carry, outputs = tf.while_loop(lambda i, *_: i < blocks, body,
                                      (tf.constant(0), initial_carry, outputs),
                                      maximum_iterations=blocks)
    return carry, outputs.stack()


# `gradient * f'(a_t)` in one op, from s_t = f(a_t): the kernels TensorFlow's own gradients of
# these activations use. Inside the backward loop they spare a pass over all steps computing f'.
_GRADIENT_FROM_STATES = {
    "tanh": lambda gradient, states: tf.raw_ops.TanhGrad(y=states, dy=gradient),
    "sigmoid": lambda gradient, states: tf.raw_ops.SigmoidGrad(y=states, dy=gradient),
    "relu": lambda gradient, states: tf.raw_ops.ReluGrad(gradients=gradient, features=states),
    "linear": lambda gradient, states: gradient,
}


def _recurrence(projected, initial_state, W, step_mask, activation):
    """Runs `s_t = f(p_t + s_{t-1} W)` over time, with a hand-written BPTT.

    Only `s_{t-1} W` stays in the loop, forward and backward; the gradient of W is one matrix
    product over all steps after the backward loop, as cuDNN does for its RNNs.

    Args:
        projected: `(time, batch, units)`, `p_t = x_t U + b`, time-major.
        initial_state: `(batch, units)`, s_0.
        W: `(units, units)`.
        step_mask: `(time, batch, 1)` of 0/1 in the states' dtype, or None: a masked step keeps
            the previous state.
        activation: f, elementwise.

    Returns:
        `(time, batch, units)`: the state after every step.
    """

    # A known length with a divisor from 4 to 8 runs in blocks of that size as it is; any other
    # length is padded to whole blocks of 8 with masked steps, which keep the state and pass the
    # gradient through unchanged.
    time_steps = tf.shape(projected)[0]
    static_steps = projected.shape[0]
    block = None
    if static_steps is not None:
        block = next(size for size in range(_STEPS_PER_ITERATION, 0, -1)
                     if static_steps % size == 0)
    padding = None
    if block is None or block < 4:
        block = _STEPS_PER_ITERATION
        padding = [[0, (-time_steps) % block], [0, 0], [0, 0]]
        if step_mask is None:
            step_mask = tf.ones_like(projected[..., :1])
        step_mask = tf.pad(step_mask, padding)
        projected = tf.pad(projected, padding)

    @tf.custom_gradient
    def run(projected, initial_state, W):
        if step_mask is None:
            def step(state, inputs):
                state = activation(inputs[0] + tf.matmul(state, W))
                return state, state

            _, states = _scan_blocks(step, (projected,), initial_state, block=block)
        else:
            def step(state, inputs):
                p, keep = inputs
                state = keep * activation(p + tf.matmul(state, W)) + (1 - keep) * state
                return state, state

            _, states = _scan_blocks(step, (projected, step_mask), initial_state, block=block)
        states.set_shape(projected.shape)

        def gradient(d_states):
            W_transposed = tf.transpose(W)
            # d_pre = dL/da_t = (dL/ds_t from the output + from the future) * f'(a_t), with f'
            # applied inside the loop from s_t where an op does it, else precomputed for all steps.
            times_derivative = _GRADIENT_FROM_STATES.get(getattr(activation, "__name__", ""))
            if times_derivative is not None:
                factors = states
            else:
                times_derivative = tf.multiply
                # The pre-activations, recomputed for all steps in one product.
                previous = tf.concat([initial_state[None], states[:-1]], axis=0)  # s_{t-1}
                pre_activation = projected + tf.einsum("tbu,uv->tbv", previous, W)
                with tf.GradientTape() as tape:
                    tape.watch(pre_activation)
                    activated = activation(pre_activation)
                factors = tape.gradient(activated, pre_activation)  # f'(a_t)
            if step_mask is None:
                def back(d_state, inputs):
                    # d_state: dL/ds_t through the future; returns dL/ds_{t-1} and dL/da_t.
                    d_output, factor = inputs
                    d_pre = times_derivative(d_output + d_state, factor)
                    return tf.matmul(d_pre, W_transposed), d_pre

                d_initial, d_pre = _scan_blocks(back, (d_states, factors),
                                                tf.zeros_like(initial_state), reverse=True,
                                                block=block)
            else:
                def back(d_state, inputs):
                    d_output, factor, keep = inputs
                    total = d_output + d_state
                    d_pre = keep * times_derivative(total, factor)
                    return (1 - keep) * total + tf.matmul(d_pre, W_transposed), d_pre

                d_initial, d_pre = _scan_blocks(back, (d_states, factors, step_mask),
                                                tf.zeros_like(initial_state), reverse=True,
                                                block=block)
            d_pre = tf.reshape(d_pre, tf.shape(projected))
            # dL/dW = sum_t s_{t-1}^T d_pre_t: one product over steps 2.. (slices along time
            # share the buffers) plus the first step's, from s_0.
            units = tf.shape(W)[0]
            d_W = (tf.matmul(tf.reshape(states[:-1], [-1, units]),
                             tf.reshape(d_pre[1:], [-1, units]), transpose_a=True)
                   + tf.matmul(initial_state, d_pre[0], transpose_a=True))
            return d_pre, d_initial, d_W

        return states, gradient

    states = run(projected, initial_state, W)
    return states if padding is None else states[:time_steps]


def _time_major_product(sequences, kernel):
    """`(batch, time, features) @ (features, units)` -> `(time, batch, units)`: one 2-D matrix
    product (TensorFlow's einsum for this, and its gradient, took several times as long)."""
    time_major = tf.transpose(sequences, [1, 0, 2])
    shape = tf.shape(time_major)
    product = tf.matmul(tf.reshape(time_major, [-1, shape[2]]), kernel)
    product = tf.reshape(product, tf.concat([shape[:2], tf.shape(kernel)[1:]], 0))
    product.set_shape(time_major.shape[:2].concatenate(kernel.shape[1:]))
    return product


@keras.saving.register_keras_serializable(package="elman")
class ElmanRNN(keras.layers.RNN):
    """`keras.layers.RNN` for an `ElmanCell`, with `U x_t` and `V s_t` computed outside the loop.

    Neither the input projection `x_t U + b` nor the output `g(s_t V + c)` depends on the
    previous state, so this layer computes each for all steps at once, in one large matrix
    product before and after the loop; only `s_{t-1} W` and f stay inside it, forward and in
    a hand-written backward pass. It reads the cell's own variables (the cell stays the one
    source of truth and what is saved) and gives the same outputs and gradients as
    `keras.layers.RNN(cell)`, with every argument of `keras.layers.RNN` (`return_sequences`,
    `return_state`, `go_backwards`, masking, initial state, `Bidirectional`, input dropout in
    training). Where the fast path does not apply (recurrent dropout in training, `unroll`,
    a state activation that is not elementwise, a cell other than `ElmanCell`, a backend other
    than TensorFlow, or `fast_path=False`), it runs Keras's plain loop instead.

    Args:
        cell: an `ElmanCell`.
        fast_path: Boolean, whether to take the fast path where it applies. Default: `True`.
        **kwargs: the arguments of `keras.layers.RNN`.

    Call arguments:
        sequences: `(batch, time, input_dim)`.
        initial_state: optional `(batch, units)`.
        mask: optional boolean `(batch, time)`.
        training: Python boolean.

    Returns:
        `(batch, time, output_dim)` with `return_sequences`, else `(batch, output_dim)`;
        with `return_state`, also the final state `(batch, units)`.

    Example:

    ```python
    layer = ElmanRNN(ElmanCell(64, output_units=10), return_sequences=True)
    outputs = layer(np.zeros((8, 20, 3), "float32"))  # (8, 20, 10)
    ```
    """

    def __init__(self, cell, fast_path=True, **kwargs):
        super().__init__(cell, **kwargs)
        self.fast_path = bool(fast_path)

    def _takes_fast_path(self, training):
        cell = self.cell
        name = getattr(cell.activation, "__name__", "")
        return (self.fast_path and isinstance(cell, ElmanCell) and not self.unroll
                and keras.backend.backend() == "tensorflow" and name in _ELEMENTWISE
                and not (training and cell.recurrent_dropout > 0))

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if not self._takes_fast_path(training):
            return super().inner_loop(sequences, initial_state, mask, training)
        cell = self.cell
        state = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        if training and cell.dropout > 0:
            # Keras's dropout mask for RNN inputs is the same at every step.
            sequences = sequences * cell.get_dropout_mask(sequences[:, 0, :])[:, None, :]
        if self.go_backwards:
            sequences = tf.reverse(sequences, [1])
            mask = None if mask is None else tf.reverse(mask, [1])
        projected = _time_major_product(sequences, cell.kernel)  # (time, batch, units)
        if cell.bias is not None:
            projected += cell.bias
        step_mask = None
        if mask is not None:
            step_mask = tf.cast(tf.transpose(mask), projected.dtype)[..., None]  # (time, batch, 1)
        # A tensor, not the variable: the custom gradient returns W's gradient as an input's.
        W = tf.convert_to_tensor(keras.ops.convert_to_tensor(cell.recurrent_kernel))
        states = _recurrence(projected, state, W, step_mask, cell.activation)
        outputs = cell.project(states)  # (time, batch, output_dim)
        if step_mask is not None:
            # Keras's masked outputs: zeros (zero_output_for_mask), else the last unmasked
            # step's output, and zeros before the first unmasked step.
            shown = step_mask if self.zero_output_for_mask else tf.cast(
                tf.cumsum(step_mask, axis=0) > 0, outputs.dtype)
            outputs = outputs * shown
        outputs = tf.transpose(outputs, [1, 0, 2])  # (batch, time, output_dim)
        last_output = outputs[:, -1]
        if not self.return_sequences:
            outputs = outputs[:, -1:]
        return last_output, outputs, [states[-1]]

    def get_config(self):
        return {**super().get_config(), "fast_path": self.fast_path}
