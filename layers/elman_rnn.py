"""`ElmanRNN`: `keras.layers.RNN` for `ElmanCell` with only `s_{t-1} W` computed step by step."""

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

# Loop iterations in flight at once: the next block's steps may start while this block's
# products (x_t U forward, the weights' gradients backward) run beside them, and no more. With
# TensorFlow's default of 10, the executor starts block products far ahead (or lets them lag far
# behind), and the steps on the critical path wait for a thread behind them: a training step at
# batch 64, time 200, units 128 was 1.58x SimpleRNN with 2 against 1.48x with 10 (medians of
# twelve process runs each, 2 cores, 2026-12-07; docs/performance.md). Where a step's product is
# large (batch 256, units 256) 2 is 0-7% slower than 10.
_ITERATIONS_IN_FLIGHT = 2


# `gradient * f'(a_t)` in one op, from s_t = f(a_t): the kernels TensorFlow's own gradients of
# these activations use. Inside the backward loop they spare a pass over all steps computing f'.
_GRADIENT_FROM_STATES = {
    "tanh": lambda gradient, states: tf.raw_ops.TanhGrad(y=states, dy=gradient),
    "sigmoid": lambda gradient, states: tf.raw_ops.SigmoidGrad(y=states, dy=gradient),
    "relu": lambda gradient, states: tf.raw_ops.ReluGrad(gradients=gradient, features=states),
    "linear": lambda gradient, states: gradient,
}


def _recurrence(inputs, U, b, initial_state, W, step_mask, activation):
    """Runs `s_t = f(x_t U + b + s_{t-1} W)` over time, with a hand-written BPTT.

    Only `s_{t-1} W` and f stay on the loop's critical path, forward and backward. The work
    that does not depend on the previous state is done a block of steps at a time beside it,
    where the executor overlaps it with the next block's steps: `x_t U + b` in the forward
    loop, and in the backward loop the gradients of U, b, W and the inputs, one matrix
    product per block (cuDNN makes these products over all steps; here they also fill the
    second core while the steps run one after another).

    Args:
        inputs: `(time, batch, features)`, x_t, time-major.
        U: `(features, units)`.
        b: `(units,)`.
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
    time_steps = tf.shape(inputs)[0]
    static_steps = inputs.shape[0]
    block = None
    if static_steps is not None:
        block = next(size for size in range(_STEPS_PER_ITERATION, 0, -1)
                     if static_steps % size == 0)
    padding = None
    if block is None or block < 4:
        block = _STEPS_PER_ITERATION
        padding = [[0, (-time_steps) % block], [0, 0], [0, 0]]
        if step_mask is None:
            step_mask = tf.ones_like(inputs[..., :1])
        step_mask = tf.pad(step_mask, padding)
        inputs = tf.pad(inputs, padding)

    @tf.custom_gradient
    def run(inputs, U, b, initial_state, W):
        shape = tf.shape(inputs)
        blocks, batch, units = shape[0] // block, shape[1], tf.shape(W)[0]
        # (blocks, block * batch, features): one 2-D product per block gives its x_t U.
        input_blocks = tf.reshape(inputs, [blocks, block * batch, shape[2]])
        keep_blocks = (None if step_mask is None
                       else tf.reshape(step_mask > 0, [blocks, block, batch, 1]))

        def forward(i, state, states):
            # Each block's steps are taken apart by one op (Unpack), not a slice per step, and a
            # masked step is one select: fewer ops per step, each of which costs the executor
            # microseconds on the loop's critical path.
            projected = tf.unstack(tf.reshape(tf.matmul(input_blocks[i], U) + b,
                                              [block, batch, units]), num=block)
            keep = None if keep_blocks is None else tf.unstack(keep_blocks[i], num=block)
            for j in range(block):
                new_state = activation(projected[j] + tf.matmul(state, W))
                state = new_state if keep is None else tf.where(keep[j], new_state, state)
                states = states.write(i * block + j + 1, state)
            return i + 1, state, states

        # s_0, s_1, ..., s_T in one tensor: the states, and s_{t-1} for every step in the
        # backward pass, are slices of it along time, which share its buffer.
        _, _, all_states = tf.while_loop(
            lambda i, *_: i < blocks, forward,
            (tf.constant(0), initial_state,
             tf.TensorArray(inputs.dtype, size=blocks * block + 1,
                            infer_shape=False).write(0, initial_state)),
            maximum_iterations=blocks, parallel_iterations=_ITERATIONS_IN_FLIGHT)
        all_states = all_states.stack()
        steps = None if inputs.shape[0] is None else inputs.shape[0] + 1
        all_states.set_shape(tf.TensorShape([steps]).concatenate(inputs.shape[1:2])
                             .concatenate(W.shape[1:]))
        states = all_states[1:]

        def gradient(d_states):
            W_transposed, U_transposed = tf.transpose(W), tf.transpose(U)
            previous_states = all_states[:-1]  # s_{t-1} of every step
            # d_pre = dL/da_t = (dL/ds_t from the output + from the future) * f'(a_t), with f'
            # applied inside the loop from s_t where an op does it, else precomputed for all steps.
            times_derivative = _GRADIENT_FROM_STATES.get(getattr(activation, "__name__", ""))
            if times_derivative is not None:
                factors = states
            else:
                times_derivative = tf.multiply
                # The pre-activations, recomputed for all steps in two products.
                pre_activation = (tf.einsum("tbf,fu->tbu", inputs, U) + b
                                  + tf.einsum("tbu,uv->tbv", previous_states, W))
                with tf.GradientTape() as tape:
                    tape.watch(pre_activation)
                    activated = activation(pre_activation)
                factors = tape.gradient(activated, pre_activation)  # f'(a_t)
            blocked = [tf.reshape(x, [blocks, block, batch, units]) for x in (d_states, factors)]

            def backward(i, d_state, d_U, d_b, d_W, d_inputs):
                # d_state: dL/ds_t through the future, for the last step of block k.
                k = blocks - 1 - i
                d_outputs, block_factors = (tf.unstack(x[k], num=block) for x in blocked)
                keep = None if keep_blocks is None else tf.unstack(keep_blocks[k], num=block)
                zero = tf.constant(0, d_state.dtype)
                d_pre = [None] * block
                for j in reversed(range(block)):
                    total = d_outputs[j] + d_state
                    d_pre[j] = times_derivative(total, block_factors[j])
                    if keep is not None:
                        d_pre[j] = tf.where(keep[j], d_pre[j], zero)
                    d_state = tf.matmul(d_pre[j], W_transposed)
                    if keep is not None:
                        # A masked step passes the gradient through unchanged.
                        d_state = tf.where(keep[j], d_state, total)
                d_pre = tf.concat(d_pre, 0)  # (block * batch, units)
                previous = tf.reshape(  # A slice of static size, as XLA needs.
                    tf.slice(previous_states, [k * block, 0, 0], [block, -1, -1]),
                    [block * batch, units])
                d_W += tf.matmul(previous, d_pre, transpose_a=True)
                d_U += tf.matmul(input_blocks[k], d_pre, transpose_a=True)
                d_b += tf.reduce_sum(d_pre, 0)
                d_inputs = d_inputs.write(k, tf.matmul(d_pre, U_transposed))
                return i + 1, d_state, d_U, d_b, d_W, d_inputs

            _, d_initial, d_U, d_b, d_W, d_inputs = tf.while_loop(
                lambda i, *_: i < blocks, backward,
                (tf.constant(0), tf.zeros_like(initial_state), tf.zeros_like(U),
                 tf.zeros_like(b), tf.zeros_like(W),
                 tf.TensorArray(inputs.dtype, size=blocks, infer_shape=False)),
                maximum_iterations=blocks, parallel_iterations=_ITERATIONS_IN_FLIGHT)
            d_inputs = tf.reshape(d_inputs.stack(), shape)
            return d_inputs, d_U, d_b, d_initial, d_W

        return states, gradient

    states = run(inputs, U, b, initial_state, W)
    return states if padding is None else states[:time_steps]


@keras.saving.register_keras_serializable(package="elman")
class ElmanRNN(keras.layers.RNN):
    """`keras.layers.RNN` for an `ElmanCell`, with `U x_t` and `V s_t` off the loop's critical path.

    Neither the input projection `x_t U + b` nor the output `g(s_t V + c)` depends on the
    previous state, so this layer computes the output for all steps at once, in one large
    matrix product after the loop, and the input projection one block of steps at a time in a
    product that runs beside the steps; only `s_{t-1} W` and f are computed step by step,
    forward and in a hand-written backward pass (which computes the weights' gradients block
    by block beside its steps in the same way). It reads the cell's own variables (the cell
    stays the one source of truth and what is saved) and gives the same outputs and gradients as
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
        if not isinstance(cell, ElmanCell):  # Any other cell: Keras's own loop.
            return False
        name = getattr(cell.activation, "__name__", "")
        return (self.fast_path and not self.unroll
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
        inputs = tf.transpose(sequences, [1, 0, 2])  # (time, batch, input_dim)
        step_mask = None
        if mask is not None:
            step_mask = tf.cast(tf.transpose(mask), inputs.dtype)[..., None]  # (time, batch, 1)
        # Tensors, not the variables: the custom gradient returns the weights' gradients as
        # those of its inputs.
        U, W, b = (tf.convert_to_tensor(keras.ops.convert_to_tensor(weight))
                   if weight is not None else tf.zeros([cell.units], inputs.dtype)
                   for weight in (cell.kernel, cell.recurrent_kernel, cell.bias))
        states = _recurrence(inputs, U, b, state, W, step_mask, cell.activation)
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
