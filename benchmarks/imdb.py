"""IMDB benchmark: the Elman app against Keras's SimpleRNN and LSTM, in the same pipeline.

Trains each model on the official 25k training reviews less the validation split, with the
same config, callbacks (early stopping on validation accuracy, best weights restored) and seed,
then prints test accuracy on the official 25k test reviews, training wall time and parameter
count side by side.

    ELMAN_DATA_DIR=../shared/data python benchmarks/imdb.py [--preset ensemble] [--set key=value ...]
        [--only elman]

Run directories (logs, checkpoints) go to runs/benchmark-imdb/<model>/.
"""

import keras

from common import parse_arguments, run_models
from elman.apps import get_app

app = get_app("imdb")


def main():
    args, config = parse_arguments(app, __doc__)
    # build_model wraps each layer in Bidirectional, as it does the Elman layer.
    models = {
        "elman": None,
        "keras_simple_rnn": keras.layers.SimpleRNN(config.hidden_units, return_sequences=True),
        "keras_lstm": keras.layers.LSTM(config.hidden_units, return_sequences=True),
    }
    run_models(app, config, models, args, lambda metrics: {
        "test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"]})


if __name__ == "__main__":
    main()
