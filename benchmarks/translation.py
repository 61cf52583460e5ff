"""Translation benchmark: the Elman encoder-decoder against the same model with Keras's GRU.

Both models use the same pipeline, attention, config, callbacks (early stopping on validation
token accuracy, best weights restored) and seed: only the recurrent layers differ. Prints corpus
BLEU and chrF (sacrebleu, case-insensitive) on the test split with greedy decoding and beam
search, training wall time, epochs and parameters side by side.

    ELMAN_DATA_DIR=../shared/data python benchmarks/translation.py [--set key=value ...]
        [--only elman]

Run directories (logs, checkpoints, translations.tsv, bleu.json) go to
runs/benchmark-translation/<model>/.
"""

import keras

from common import parse_arguments, run_models
from elman.apps import get_app

app = get_app("translation")


def main():
    args, config = parse_arguments(app, __doc__)
    models = {"elman": None, "keras_gru": keras.layers.GRU(config.hidden_units)}
    beam = f"beam{config.beam_width}"

    def figures(metrics):
        report = metrics["report"]
        return {"bleu_greedy": report["greedy"]["bleu"], "bleu_beam": report[beam]["bleu"],
                "chrf_beam": report[beam]["chrf"],
                "bleu_beam_all_refs": report[beam]["bleu_all_references"],
                "token_accuracy": metrics["accuracy"]}

    run_models(app, config, models, args, figures)


if __name__ == "__main__":
    main()
