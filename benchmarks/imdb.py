"""IMDB benchmark: the Elman app against Keras's SimpleRNN and LSTM, in the same pipeline.

Trains each model on the official 25k training reviews less the validation split, with the
same config, callbacks (early stopping on validation accuracy, best weights restored) and seed,
then prints test accuracy on the official 25k test reviews, training wall time and parameter
count side by side.

    ELMAN_DATA_DIR=../shared/data python benchmarks/imdb.py [--set key=value ...] [--only elman]

Run directories (logs, checkpoints) go to runs/benchmark-imdb/<model>/.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from elman import training  # noqa: E402
from elman.apps import get_app  # noqa: E402
from elman.config import apply_overrides  # noqa: E402

app = get_app("imdb")


def references(config):
    """The models compared: name -> the recurrent layer (None: the app's own Elman layer)."""
    return {
        "elman": None,
        "keras_simple_rnn": keras.layers.SimpleRNN(config.hidden_units, return_sequences=True),
        "keras_lstm": keras.layers.LSTM(config.hidden_units, return_sequences=True),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--only", nargs="+", help="run only these models")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/benchmark-imdb"))
    args = parser.parse_args()
    config = apply_overrides(app.Config(), args.overrides)
    data = app.load_data(config)
    print(f"data: {data.source}; config: {config}")
    results = {}
    for name, layer in references(config).items():
        if args.only and name not in args.only:
            continue
        keras.utils.set_random_seed(config.seed)
        # build_model wraps the layer in Bidirectional when the config says so, as for Elman.
        model = app.build_model(config, data, recurrent_layer=layer)
        run_dir = args.runs_dir / name
        model, _ = training.train(app, config, run_dir, data=data, model=model, verbose=2)
        metrics = training.evaluate(app, model, data, run_dir)
        # train() records the wall time of fit() and the epochs run beside the run.
        record = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {"test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"],
                         "train_seconds": record["training_seconds"],
                         "parameters": model.count_params(), "epochs": record["epochs_run"]}
        print(f"{name}: {results[name]}", flush=True)
    print("\nmodel               test accuracy   train time   epochs   parameters")
    for name, result in results.items():
        print(f"{name:20s} {result['test_accuracy']:12.4f} {result['train_seconds'] / 60:9.1f} min"
              f" {result['epochs']:8d} {result['parameters']:12,d}")
    (args.runs_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
