"""Backpropagation through time, made visible: gradients of the loss at every hidden state.

For a model whose recurrent layers run `ElmanCell` inside `keras.layers.RNN` (also wrapped in
`Bidirectional`), and one batch of its data, `inspect` returns per layer:

- `gradient_norms` `(time,)`: the mean over the batch of `||dL/ds_t||`, the gradient of the loss
  with respect to the state at step t (all paths: through later states and through the outputs).
  When it shrinks towards the first steps, the gradient vanishes; when it grows, it explodes.
- `jacobian_norms` `(time,)`: the mean over the batch of `||ds_T/ds_t||_2`, the spectral norm of
  the product of the step Jacobians `ds_k/ds_{k-1} = diag(f'(a_k)) W^T` from step t to the last
  step T: how much of a gradient arriving at `s_T` can reach `s_t`.
- `spectral_radius` and `largest_singular_value` of W: `||ds_T/ds_t|| <= (max|f'| sigma_max(W))^(T-t)`,
  so sigma_max(W) < 1 with tanh guarantees vanishing; a spectral radius above 1 allows explosion.

Steps are numbered in the order the layer reads them (a `go_backwards` layer, like the backward
half of `Bidirectional`, reads the last word first). Masked steps carry the state unchanged:
their state gradient is reported as zero and their Jacobian as the identity.

`BPTTMonitor` is a Keras callback that logs these figures to TensorBoard during training in any
app (`elman train APP --bptt`), and `elman bptt inspect RUN_DIR` plots them for a trained run.

Example:

```python
reports = elman.bptt.inspect(model, inputs, targets)
for report in reports:
    print(report.layer_name, report.spectral_radius, report.gradient_norms[:5])
```
"""

import importlib

__all__ = ["BPTTMonitor", "LayerReport", "StateGradients", "elman_cell", "elman_layers",
           "inspect", "inspect_run", "jacobian_norms", "largest_singular_value",
           "plot_reports", "spectral_radius", "state_gradients"]


def __getattr__(name):
    # The analysis imports TensorFlow; loading it on first use keeps `elman --help` and the
    # light `elman.bptt.settings` fast.
    if name in __all__:
        return getattr(importlib.import_module("elman.bptt.analysis"), name)
    raise AttributeError(f"module 'elman.bptt' has no attribute {name!r}")
