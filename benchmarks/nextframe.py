"""Next-frame benchmark on Moving MNIST: the Elman model, copying the last frame, and the same
model with Keras's ConvLSTM2D in place of the Elman recurrence.

Both models use the same tracker, decoder, pipeline, config, callbacks and seed; only the cell
stepped on each tracked object differs: `ElmanCell`, or a `ConvLSTM2D` step on the object's
features mapped to 8x8 maps (causal: it runs forward in time). Prints per-frame MSE and MAE
(summed over the 64x64 pixels) and SSIM for 10 -> 10 on the fixed test set, training wall time
and parameters.

    ELMAN_DATA_DIR=../shared/data python benchmarks/nextframe.py [--set key=value ...]
        [--only elman]

Run directories (logs, checkpoints, frames.json, predictions.png) go to
runs/benchmark-nextframe/<model>/.
"""

import keras

from common import parse_arguments, run_models
from elman.apps import get_app

app = get_app("nextframe")


@keras.saving.register_keras_serializable(package="elman_benchmarks")
class LatentConvLSTMCell(keras.layers.Layer):
    """A ConvLSTM2D step on the latent vector seen as 8x8 maps, then a 1x1 convolution back to
    the latent size: `(batch, latent_dim)` -> `(batch, latent_dim)`, states `[h, c]`
    `(batch, 8, 8, 4 * latent_dim / 64)`. An RNN cell, so that `keras.layers.RNN` runs it over
    a sequence and the app's rollouts step it as they step the Elman cell. An input of another
    size (an object's tracked features) is first mapped to the latent size by a dense layer.

    Args:
        latent_dim: a multiple of 64.
    """

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = latent_dim
        self.channels = latent_dim // 64
        if self.channels * 64 != latent_dim:
            raise ValueError(f"latent_dim must be a multiple of 64 for the ConvLSTM2D reference, "
                             f"received latent_dim={latent_dim}")
        # Keras's own ConvLSTM2D step, taken from the layer.
        self.conv_lstm = keras.layers.ConvLSTM2D(4 * self.channels, 3, padding="same").cell
        # A 1x1 convolution; linear: with a relu, 81% of its outputs died in the first epoch of
        # the full-data run and the reference stopped learning.
        self.project = keras.layers.Dense(self.channels)
        self.state_size = [(8, 8, 4 * self.channels)] * 2
        self.output_size = latent_dim

    def build(self, input_shape):
        self.project_input = None
        if input_shape[-1] != self.latent_dim:
            self.project_input = keras.layers.Dense(self.latent_dim)
            self.project_input.build(input_shape)
        self.conv_lstm.build((None, 8, 8, self.channels))
        self.project.build((None, 8, 8, 4 * self.channels))

    def call(self, inputs, states, training=False):
        if self.project_input is not None:
            inputs = self.project_input(inputs)
        maps = keras.ops.reshape(inputs, (-1, 8, 8, self.channels))
        h, states = self.conv_lstm(maps, states, training=training)
        return keras.ops.reshape(self.project(h), (-1, self.latent_dim)), states

    def get_initial_state(self, batch_size=None):
        return [keras.ops.zeros((batch_size, *shape), self.compute_dtype)
                for shape in self.state_size]

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}


def conv_lstm(config):
    """ConvLSTM2D over an object's features as 8x8 maps: `(batch, time, output_units)` out,
    causal (it runs forward in time)."""
    return keras.layers.RNN(LatentConvLSTMCell(config.output_units), return_sequences=True,
                            name="conv_lstm")


def main():
    args, config = parse_arguments(app, __doc__)

    def figures(metrics):
        report = metrics["report"]
        return {"mse": report["model"]["mse"], "mae": report["model"]["mae"],
                "ssim": report["model"]["ssim"],
                "copy_last_mse": report["copy_last_frame"]["mse"],
                "copy_last_ssim": report["copy_last_frame"]["ssim"]}

    run_models(app, config, {"elman": None, "keras_conv_lstm": conv_lstm(config)}, args, figures)


if __name__ == "__main__":
    main()
