"""The BPTT analysis: state gradients, Jacobian products, W's spectrum, the callback.

See the package docstring, `elman.bptt`.
"""

import contextlib
import dataclasses
import io

import keras
import numpy as np
import tensorflow as tf

from elman.layers import ElmanCell



def elman_cell(layer):
    """The `ElmanCell` that `layer` (a `keras.layers.RNN`) runs, directly or inside a wrapper
    cell such as `TruncatedBackprop`; None if it runs none."""
    cell = getattr(layer, "cell", None)
    if isinstance(cell, ElmanCell):
        return cell
    inner = getattr(cell, "cell", None)
    return inner if isinstance(inner, ElmanCell) else None


def elman_layers(model):
    """The `keras.layers.RNN` layers of `model` (nested ones included) that run an
    `ElmanCell`, in the model's layer order."""
    found = [layer for layer in model._flatten_layers(include_self=True, recursive=True)
             if isinstance(layer, keras.layers.RNN) and elman_cell(layer) is not None]
    if not found:
        raise ValueError(f"model {model.name!r} has no keras.layers.RNN layer with an ElmanCell; "
                         "elman.bptt inspects Elman layers only")
    return found


def spectral_radius(W):
    """The largest absolute eigenvalue of the square matrix `W` `(units, units)`."""
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(W, dtype="float64")))))


def largest_singular_value(W):
    """The largest singular value (spectral norm) of `W`."""
    return float(np.linalg.norm(np.asarray(W, dtype="float64"), ord=2))


@dataclasses.dataclass
class _Trace:
    """What one RNN layer saw and computed in one forward pass, step by step."""

    layer: keras.layers.RNN
    sequence_mask: object = None  # (batch, time) bool, in the order the layer reads the steps
    inputs: list = dataclasses.field(default_factory=list)  # x_t, each (batch, features)
    previous: list = dataclasses.field(default_factory=list)  # s_{t-1}, each (batch, units)
    states: list = dataclasses.field(default_factory=list)  # s_t, each (batch, units)
    time: int = 0


@contextlib.contextmanager
def _recording(layers):
    """Records, for each RNN layer, the inputs and states of every step of its next forward
    pass. Keras runs the loop step by step in eager mode, so each step's state is a tensor the
    gradient tape can differentiate with respect to."""
    traces = {id(layer): _Trace(layer) for layer in layers}
    originals = []
    for layer in layers:
        trace = traces[id(layer)]
        layer_call, cell_call = layer.call, layer.cell.call

        def call(sequences, *args, _trace=trace, _call=layer_call, **kwargs):
            mask = kwargs.get("mask")
            _trace.time = int(sequences.shape[1])
            _trace.inputs.clear(), _trace.previous.clear(), _trace.states.clear()
            if mask is not None:
                mask = tf.cast(mask, tf.bool)
                _trace.sequence_mask = tf.reverse(mask, [1]) if _trace.layer.go_backwards else mask
            return _call(sequences, *args, **kwargs)

        def step(inputs, states, *args, _trace=trace, _call=cell_call, **kwargs):
            output, new_states = _call(inputs, states, *args, **kwargs)
            previous = states[0] if isinstance(states, (list, tuple)) else states
            state = new_states[0] if isinstance(new_states, (list, tuple)) else new_states
            _trace.inputs.append(inputs), _trace.previous.append(previous)
            _trace.states.append(state)
            return output, new_states

        # Instance attributes shadow the methods for this pass only (Keras layers track
        # attributes, hence object.__setattr__). ElmanRNN's fast path never calls the cell
        # step by step, so it is switched off for the pass.
        object.__setattr__(layer, "call", call)
        object.__setattr__(layer.cell, "call", step)
        originals.append((layer, getattr(layer, "fast_path", None)))
        if hasattr(layer, "fast_path"):
            object.__setattr__(layer, "fast_path", False)
    try:
        yield traces
    finally:
        for layer, fast_path in originals:
            object.__delattr__(layer, "call")
            object.__delattr__(layer.cell, "call")
            if fast_path is not None:
                object.__setattr__(layer, "fast_path", fast_path)


def _check_eager():
    if not tf.executing_eagerly():
        raise RuntimeError("elman.bptt runs eagerly (it reads every step of the loop); call it "
                           "outside tf.function")


def _loss(model, inputs, targets, predictions, loss):
    if loss is not None:
        return tf.reduce_mean(loss(targets, predictions))
    if getattr(model, "loss", None) is None:
        raise ValueError(f"model {model.name!r} is not compiled: compile it with a loss, or "
                         "pass loss=... to elman.bptt")
    return model.compute_loss(x=inputs, y=targets, y_pred=predictions, training=False)


@dataclasses.dataclass
class StateGradients:
    """One Elman layer's states and the loss's gradients with respect to them.

    Attributes:
        layer: the `keras.layers.RNN` layer.
        inputs: `(batch, time, features)`, the layer's input at each step it read.
        previous_states: `(batch, time, units)`, s_{t-1} as the cell received it.
        states: `(batch, time, units)`, s_t as the cell computed it.
        gradients: `(batch, time, units)`, dL/ds_t (zero at masked steps).
        mask: `(batch, time)` bool, or None without masking.
    """

    layer: keras.layers.RNN
    inputs: np.ndarray
    previous_states: np.ndarray
    states: np.ndarray
    gradients: np.ndarray
    mask: object


def state_gradients(model, inputs, targets, loss=None, layers=None):
    """Computes dL/ds_t for every step t of every Elman layer, on one batch.

    Args:
        model: a Keras model containing `RNN(ElmanCell)` layers.
        inputs: one batch of the model's inputs.
        targets: the matching targets.
        loss: optional callable `loss(targets, predictions)`; default: the compiled loss
            (`model.compute_loss`, regularization included).
        layers: optional list of the RNN layers to trace (default: `elman_layers(model)`).

    Returns:
        A list of `StateGradients`, one per layer.
    """
    _check_eager()
    layers = layers or elman_layers(model)
    with _recording(layers) as traces, tf.GradientTape() as tape:
        predictions = model(inputs, training=False)
        value = _loss(model, inputs, targets, predictions, loss)
    steps = {}
    for layer in layers:
        trace = traces[id(layer)]
        if trace.time == 0 or len(trace.states) < trace.time:
            raise ValueError(f"layer {layer.name!r} did not run step by step in this forward "
                             "pass (is it called inside tf.function, or unrolled?)")
        # Keras calls the step once more before the loop to learn the output's shape; the
        # last `time` calls are the loop's.
        steps[id(layer)] = slice(len(trace.states) - trace.time, None)
    all_states = [traces[id(layer)].states[steps[id(layer)]] for layer in layers]
    all_gradients = tape.gradient(value, all_states,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
    results = []
    for layer, states, gradients in zip(layers, all_states, all_gradients):
        trace, step_slice = traces[id(layer)], steps[id(layer)]
        mask = None if trace.sequence_mask is None else trace.sequence_mask.numpy()
        gradients = np.stack([g.numpy() for g in gradients], 1)  # (batch, time, units)
        if mask is not None:
            gradients = gradients * mask[..., None]
        results.append(StateGradients(
            layer=layer,
            inputs=np.stack([x.numpy() for x in trace.inputs[step_slice]], 1),
            previous_states=np.stack([s.numpy() for s in trace.previous[step_slice]], 1),
            states=np.stack([s.numpy() for s in states], 1),
            gradients=gradients, mask=mask))
    return results


def jacobian_norms(cell, inputs, previous_states, mask=None):
    """`||ds_T/ds_t||_2` for every step t, the norm of the gradient path from the last state back.

    Uses the cell's own equations: `a_t = x_t U + s_{t-1} W + b`, and the step Jacobian
    `ds_t/ds_{t-1} = W diag(f'(a_t))` in Keras's row-vector layout (the identity at masked steps).

    Args:
        cell: a built `ElmanCell`.
        inputs: `(batch, time, features)`, the cell's input at each step.
        previous_states: `(batch, time, units)`, s_{t-1} at each step.
        mask: optional `(batch, time)` bool.

    Returns:
        `(batch, time)` array: entry t is the spectral norm of ds_T/ds_t (1 for t = T).
    """
    inputs = tf.convert_to_tensor(inputs, cell.compute_dtype)
    previous_states = tf.convert_to_tensor(previous_states, cell.compute_dtype)
    pre_activation = (tf.einsum("btf,fu->btu", inputs, cell.U)
                      + tf.einsum("btv,vu->btu", previous_states, cell.W))
    if cell.b is not None:
        pre_activation += cell.b
    with tf.GradientTape() as tape:
        tape.watch(pre_activation)
        activated = cell.activation(pre_activation)
    # f is elementwise, so the gradient of the sum is f'(a) entry by entry.
    derivative = tape.gradient(activated, pre_activation).numpy().astype("float64")
    W = cell.W.numpy().astype("float64")
    batch, time, units = derivative.shape
    keep = np.ones((batch, time), bool) if mask is None else np.asarray(mask, bool)
    product = np.broadcast_to(np.eye(units), (batch, units, units)).copy()  # ds_T/ds_T
    norms = np.ones((batch, time))
    for t in range(time - 1, 0, -1):
        # ds_T/ds_{t-1} = (ds_t/ds_{t-1}) (ds_T/ds_t), with ds_t/ds_{t-1} = W diag(f'(a_t)).
        step = W[None] * derivative[:, t, None, :]
        step = np.where(keep[:, t, None, None], step, np.eye(units)[None])
        product = step @ product
        norms[:, t - 1] = np.linalg.norm(product, ord=2, axis=(1, 2))
    return norms


@dataclasses.dataclass
class LayerReport:
    """The BPTT figures of one Elman layer on one batch (see the module docstring).

    Attributes:
        layer_name: the RNN layer's name (the Bidirectional halves are `forward_...` and
            `backward_...`).
        gradient_norms: `(time,)`, mean over the batch of ||dL/ds_t||.
        jacobian_norms: `(time,)`, mean over the batch of ||ds_T/ds_t||_2.
        spectral_radius: of W.
        largest_singular_value: of W.
        go_backwards: whether the layer reads the sequence from its end.
    """

    layer_name: str
    gradient_norms: np.ndarray
    jacobian_norms: np.ndarray
    spectral_radius: float
    largest_singular_value: float
    go_backwards: bool = False

    def summary(self):
        """One line: W's figures and how the gradient changes from the last step to the first."""
        first, last = self.gradient_norms[0], self.gradient_norms[-1]
        return (f"{self.layer_name}: spectral radius of W {self.spectral_radius:.3f}, "
                f"largest singular value {self.largest_singular_value:.3f}; "
                f"||dL/ds_t|| at the last step {last:.3g}, at the first {first:.3g}; "
                f"||ds_T/ds_1|| {self.jacobian_norms[0]:.3g}")


def inspect(model, inputs, targets, loss=None):
    """The BPTT figures of every Elman layer of `model` on one batch.

    Args:
        model: a Keras model containing `RNN(ElmanCell)` layers (compiled, or pass `loss`).
        inputs, targets: one batch.
        loss: optional callable `loss(targets, predictions)`.

    Returns:
        A list of `LayerReport`, one per Elman layer.
    """
    reports = []
    for result in state_gradients(model, inputs, targets, loss):
        cell = elman_cell(result.layer)
        mask = result.mask
        gradient_norms = np.linalg.norm(result.gradients, axis=-1)  # (batch, time)
        if mask is not None:
            # Average over the sequences that have a word at this step.
            counts = np.maximum(mask.sum(0), 1)
            gradient_norms = (gradient_norms * mask).sum(0) / counts
        else:
            gradient_norms = gradient_norms.mean(0)
        jacobians = jacobian_norms(cell, result.inputs, result.previous_states, mask).mean(0)
        W = cell.W.numpy()
        reports.append(LayerReport(
            layer_name=result.layer.name, gradient_norms=gradient_norms,
            jacobian_norms=jacobians, spectral_radius=spectral_radius(W),
            largest_singular_value=largest_singular_value(W),
            go_backwards=bool(result.layer.go_backwards)))
    return reports


def plot_reports(reports, title="", path=None):
    """Plots ||dL/ds_t|| and ||ds_T/ds_t|| against the steps back from the last step (log scale).

    Args:
        reports: `LayerReport`s, e.g. from `inspect`.
        title: the figure's title.
        path: where to save the PNG; if None, the figure is returned unsaved.

    Returns:
        The matplotlib `Figure`.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for report in reports:
        steps_back = np.arange(len(report.gradient_norms))[::-1]  # T-t for t = 1..T
        label = (f"{report.layer_name} (rho(W)={report.spectral_radius:.2f}, "
                 f"sigma_max={report.largest_singular_value:.2f})")
        left.semilogy(steps_back, np.maximum(report.gradient_norms, 1e-30), label=label)
        right.semilogy(steps_back, np.maximum(report.jacobian_norms, 1e-30),
                       label=report.layer_name)
    left.set(xlabel="steps back from the last step (T - t)", ylabel="||dL/ds_t||",
             title="gradient of the loss at each state")
    right.set(xlabel="steps back from the last step (T - t)", ylabel="||ds_T/ds_t||_2",
              title="product of step Jacobians")
    for axes in (left, right):
        axes.invert_xaxis()
        axes.grid(True, which="both", alpha=0.3)
    left.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    if path is not None:
        figure.savefig(path, dpi=110)
        pyplot.close(figure)
    return figure


class BPTTMonitor(keras.callbacks.Callback):
    """Logs the BPTT figures of a fixed batch to TensorBoard at the end of every epoch.

    Scalars, per Elman layer, under `bptt/<layer>/`: `spectral_radius`,
    `largest_singular_value`, `gradient_norm_last_step`, `gradient_norm_first_step`,
    `gradient_ratio_first_to_last` and `jacobian_norm_first_step` (||ds_T/ds_1||); and an image
    `bptt/gradient_norms` with the plot of `plot_reports`.

    Args:
        inputs, targets: the batch inspected (e.g. the first validation batch).
        log_dir: TensorBoard log directory (the scalars go into `log_dir/bptt`).
        every_n_epochs: inspect every n epochs (default 1).
        images: whether to log the plot as an image (default True).

    Example:

    ```python
    inputs, targets = next(iter(validation))
    model.fit(train, callbacks=[BPTTMonitor(inputs, targets, "runs/x/tensorboard")])
    ```
    """

    def __init__(self, inputs, targets, log_dir, every_n_epochs=1, images=True):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive integer, "
                             f"received every_n_epochs={every_n_epochs!r}")
        self.inputs, self.targets = inputs, targets
        self.log_dir = str(log_dir)
        self.every_n_epochs = every_n_epochs
        self.images = images
        self._writer = None
        self.reports = []

    def on_train_begin(self, logs=None):
        # Checked before the first epoch, so a model without Elman layers fails at once.
        elman_layers(self.model)
        self._writer = tf.summary.create_file_writer(self.log_dir.rstrip("/") + "/bptt")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        self.reports = inspect(self.model, self.inputs, self.targets)
        with self._writer.as_default(step=epoch):
            for report in self.reports:
                prefix = f"bptt/{report.layer_name}/"
                last = max(float(report.gradient_norms[-1]), 1e-30)
                for name, value in [
                        ("spectral_radius", report.spectral_radius),
                        ("largest_singular_value", report.largest_singular_value),
                        ("gradient_norm_last_step", report.gradient_norms[-1]),
                        ("gradient_norm_first_step", report.gradient_norms[0]),
                        ("gradient_ratio_first_to_last", report.gradient_norms[0] / last),
                        ("jacobian_norm_first_step", report.jacobian_norms[0])]:
                    tf.summary.scalar(prefix + name, float(value))
            if self.images:
                figure = plot_reports(self.reports, title=f"epoch {epoch + 1}")
                buffer = io.BytesIO()
                figure.savefig(buffer, format="png", dpi=80)
                from matplotlib import pyplot

                pyplot.close(figure)
                image = tf.image.decode_png(buffer.getvalue(), channels=4)[None]
                tf.summary.image("bptt/gradient_norms", image)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


def inspect_run(run_dir, data_dir=None, output=None, batch_size=None):
    """Inspects a trained app run: loads `RUN_DIR/model.keras` and the run's config, takes the
    first validation batch, and plots the BPTT figures of every Elman layer.

    Args:
        run_dir: a run directory written by `elman train`.
        data_dir: optional data directory instead of the run's own.
        output: the PNG to write (default `RUN_DIR/bptt.png`).
        batch_size: optional number of validation examples to use (default: one batch).

    Returns:
        `(reports, path)`: the `LayerReport`s and the PNG written.
    """
    import json
    from pathlib import Path

    from elman import training
    from elman.apps import get_app
    from elman.config import apply_overrides

    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json): give the "
                                "folder `elman train` wrote, e.g. runs/imdb")
    app = get_app(json.loads(path.read_text()).get("app", ""))
    config = training.load_run_config(app, run_dir, data_dir)
    if batch_size:
        config = apply_overrides(config, [f"batch_size={batch_size}"])
    model = training.load_trained_model(app, run_dir)
    data = app.load_data(config)
    inputs, targets = next(iter(data.validation))
    reports = inspect(model, inputs, targets)
    output = Path(output) if output else run_dir / "bptt.png"
    plot_reports(reports, title=f"{app.NAME}: {run_dir} (a validation batch of "
                 f"{len(targets)})", path=output)
    return reports, output
