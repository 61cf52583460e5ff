"""Scores an exported SavedModel the way TF Serving serves it: loaded with plain
`tf.saved_model.load`, called through its `serving_default` signature on the app's whole test
split, with nothing of elman's Python in the model's path. Its figures should equal those of
`elman evaluate` on the run the export came from.

    ELMAN_DATA_DIR=../shared/data python benchmarks/served_scores.py nextframe \
        --run-dir runs/benchmark-nextframe/elman
    ELMAN_DATA_DIR=../shared/data python benchmarks/served_scores.py imdb \
        --run-dir runs/benchmark-imdb/elman

Exports RUN_DIR/model.keras to BASE_DIR/APP/<next version>/ first (default base dir:
RUN_DIR/saved_models), then prints the figures and writes RUN_DIR/served.json.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman import export, training  # noqa: E402
from elman.apps import get_app  # noqa: E402


def nextframe_scores(app, signature, data, config, batch_size=100):
    """10 -> 10 MSE, MAE and SSIM per frame on the fixed test sequences, as `elman evaluate`."""
    parts = []
    progress = keras.utils.Progbar(config.test_sequences, unit_name="sequence")
    for start in range(0, config.test_sequences, batch_size):
        indices = np.arange(start, min(start + batch_size, config.test_sequences))
        sequences = data.test_sequences(indices)[..., None].astype("float32") / 255.0
        given, truth = sequences[:, :config.input_frames], sequences[:, config.input_frames:]
        predicted = signature(frames=tf.constant(given),
                              num_frames=tf.constant(config.output_frames))["predicted_frames"]
        parts.append(app.frame_errors(predicted.numpy(), truth))
        progress.add(len(indices))
    return {key: float(np.concatenate([part[key] for part in parts]).mean())
            for key in parts[0]}


def imdb_scores(app, signature, data, config):
    """Accuracy on the official test reviews."""
    right = total = 0
    for reviews, labels in data.test:
        probability = signature(review=reviews)["probability"].numpy()
        right += int(np.sum((probability >= 0.5) == (labels.numpy() >= 0.5)))
        total += len(labels)
    return {"accuracy": right / total, "reviews": total}


SCORES = {"nextframe": nextframe_scores, "imdb": imdb_scores}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", choices=sorted(SCORES))
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--base-dir", type=Path, help="default: RUN_DIR/saved_models")
    args = parser.parse_args()
    app = get_app(args.app)
    config = training.load_run_config(app, args.run_dir)
    version_dir = export.export(app, training.load_trained_model(app, args.run_dir),
                                args.base_dir or args.run_dir / "saved_models")
    print(f"exported {version_dir}; scoring it through serving_default", flush=True)
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    scores = SCORES[args.app](app, signature, app.load_data(config), config)
    print(json.dumps(scores, indent=2))
    (args.run_dir / "served.json").write_text(json.dumps(
        {"saved_model": str(version_dir), **scores}, indent=2) + "\n")


if __name__ == "__main__":
    main()
