"""Independent NumPy references for the Elman equations: a forward loop and BPTT.

Nothing here imports elman, so the tests compare the cell against code it does not share.
Weights follow Keras's row-vector layout: `a_t = x_t U + s_{t-1} W + b`, `s_t = f(a_t)`,
`z_t = s_t V + c`, `o_t = g(z_t)`.
"""

import numpy as np

ACTIVATIONS = {
    # name: (f, f' expressed with the pre-activation a)
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(a.dtype)),
    "sigmoid": (
        lambda a: 1.0 / (1.0 + np.exp(-a)),
        lambda a: (1.0 / (1.0 + np.exp(-a))) * (1.0 - 1.0 / (1.0 + np.exp(-a))),
    ),
    "linear": (lambda a: a, lambda a: np.ones_like(a)),
}


def elman_forward(inputs, U, W, b, V=None, c=None, activation="tanh",
                  output_activation="linear", mask=None, initial_state=None):
    """Runs the Elman equations step by step.

    Args:
        inputs: `(batch, time, input_dim)`.
        mask: optional boolean `(batch, time)`; a masked step keeps the previous state and
            output (Keras's convention), the output before the first step being zeros.

    Returns:
        A dict with `outputs` `(batch, time, output_dim)`, `states` `(batch, time, units)`
        and the cached pre-activations `a` and `z` for `elman_backward`.
    """
    f, _ = ACTIVATIONS[activation]
    g, _ = ACTIVATIONS[output_activation]
    batch, time, _ = inputs.shape
    units = W.shape[0]
    state = np.zeros((batch, units)) if initial_state is None else initial_state
    output_dim = units if V is None else V.shape[1]
    output = np.zeros((batch, output_dim))
    states, outputs, pre_states, pre_outputs, previous = [], [], [], [], []
    for t in range(time):
        previous.append(state)
        a = inputs[:, t] @ U + state @ W + (0 if b is None else b)
        new_state = f(a)
        if V is None:
            z = new_state
            new_output = new_state
        else:
            z = new_state @ V + (0 if c is None else c)
            new_output = g(z)
        if mask is not None:
            keep = mask[:, t][:, None]
            new_state = np.where(keep, new_state, state)
            new_output = np.where(keep, new_output, output)
        state, output = new_state, new_output
        states.append(state)
        outputs.append(output)
        pre_states.append(a)
        pre_outputs.append(z)
    return {
        "outputs": np.stack(outputs, 1),
        "states": np.stack(states, 1),
        "a": pre_states,
        "z": pre_outputs,
        "previous": previous,
    }


def elman_backward(inputs, U, W, b, V, c, forward, output_gradients,
                   activation="tanh", output_activation="linear"):
    """Backpropagation through time for a loss summed over all steps (no mask).

    Implements `dL/ds_t = V^T dL/do_t * g'(z_t) + W^T (f'(a_{t+1}) * dL/ds_{t+1})`.

    Args:
        output_gradients: `dL/do_t`, shape `(batch, time, output_dim)`.

    Returns:
        A dict of gradients for `U`, `W`, `b`, `V`, `c` and `inputs`.
    """
    _, f_prime = ACTIVATIONS[activation]
    _, g_prime = ACTIVATIONS[output_activation]
    time = inputs.shape[1]
    grads = {"U": np.zeros_like(U), "W": np.zeros_like(W), "b": np.zeros_like(b),
             "V": np.zeros_like(V), "c": np.zeros_like(c), "inputs": np.zeros_like(inputs)}
    d_pre_state_next = np.zeros((inputs.shape[0], W.shape[0]))
    for t in reversed(range(time)):
        d_z = output_gradients[:, t] * g_prime(forward["z"][t])
        state = forward["states"][:, t]
        grads["V"] += state.T @ d_z
        grads["c"] += d_z.sum(0)
        d_state = d_z @ V.T + d_pre_state_next @ W.T
        d_pre_state = d_state * f_prime(forward["a"][t])
        grads["U"] += inputs[:, t].T @ d_pre_state
        grads["W"] += forward["previous"][t].T @ d_pre_state
        grads["b"] += d_pre_state.sum(0)
        grads["inputs"][:, t] = d_pre_state @ U.T
        d_pre_state_next = d_pre_state
    return grads
