"""Next-frame benchmark on Moving MNIST: the Elman model, copying the last frame, and the same
model with Keras's ConvLSTM2D in place of the Elman recurrence.

Both models use the same per-frame encoder and decoder, pipeline, config, callbacks and seed;
only the recurrence over the latent sequence differs: `ElmanRNN(ElmanCell)` on the latent
vector, or a `ConvLSTM2D` on the latent vector seen as 8x8 maps (causal: it runs forward in
time). Prints per-frame MSE and MAE (summed over the 64x64 pixels) and SSIM for 10 -> 10 on the
fixed test set, training wall time and parameters.

    ELMAN_DATA_DIR=../shared/data python benchmarks/nextframe.py [--set key=value ...]
        [--only elman]

Run directories (logs, checkpoints, frames.json, predictions.png) go to
runs/benchmark-nextframe/<model>/.
"""

import keras

from common import parse_arguments, run_models
from elman.apps import get_app

app = get_app("nextframe")


def conv_lstm(config):
    """ConvLSTM2D over the latent vector reshaped to 8x8 maps: `(batch, time, latent_dim)` in
    and out."""
    channels = config.latent_dim // 64
    if channels * 64 != config.latent_dim:
        raise ValueError(f"latent_dim must be a multiple of 64 for the ConvLSTM2D reference, "
                         f"received latent_dim={config.latent_dim}")
    return keras.Sequential([
        keras.layers.Reshape((-1, 8, 8, channels)),
        keras.layers.ConvLSTM2D(4 * channels, 3, padding="same", return_sequences=True),
        # A 1x1 convolution, every step; linear: with a relu, 81% of its outputs died in the
        # first epoch of the full-data run and the reference stopped learning.
        keras.layers.Dense(channels),
        keras.layers.Reshape((-1, config.latent_dim)),
    ], name="conv_lstm")


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
