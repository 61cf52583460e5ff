"""Captioning benchmark on Flickr8k: the Elman decoder against Keras's LSTM (Show and Tell).

Both decoders start from the same cached EfficientNet-Lite0 features (frozen ImageNet CNN) and
train with the same pipeline, config, callbacks and seed; only the recurrent layer differs.
Prints corpus BLEU-1..4 (sacrebleu, against all five references) on the official 1,000 test
images, greedy and beam search, training wall time and parameters.

    ELMAN_DATA_DIR=../shared/data python benchmarks/captioning.py [--set key=value ...]
        [--only elman]

Run directories (logs, checkpoints, captions.json, contact_sheet.html) go to
runs/benchmark-captioning/<model>/.
"""

import keras

from common import parse_arguments, run_models
from elman.apps import get_app

app = get_app("captioning")


def main():
    args, config = parse_arguments(app, __doc__)
    models = {"elman": None,
              "keras_lstm": keras.layers.LSTM(config.hidden_units, return_sequences=True)}
    beam = f"beam{config.beam_width}"

    def figures(metrics):
        report = metrics["report"]
        return {**{f"greedy_bleu{n}": report["greedy"][f"bleu{n}"] for n in (1, 4)},
                **{f"beam_bleu{n}": report[beam][f"bleu{n}"] for n in (1, 2, 3, 4)},
                "token_accuracy": metrics["accuracy"]}

    run_models(app, config, models, args, figures)


if __name__ == "__main__":
    main()
