"""Training speed as users feel it: an app's model with ElmanRNN against the same model with
Keras's SimpleRNN in its place, interleaved in one process.

    ELMAN_DATA_DIR=../shared/data python benchmarks/epoch_speed.py imdb [--steps 60] [--rounds 3]
    ELMAN_DATA_DIR=../shared/data python benchmarks/epoch_speed.py translation

Both models are built from the app's config (the default recipe, or `--preset`) on the same
data. The first `--steps` training batches are read once and kept; each model trains on all of
them once untimed (tracing, one graph per bucket length), then the two alternate `--rounds`
times over the same batches, each round timed as a whole. The figures: median seconds per
step, an epoch's estimate (the training split's batches times that), the ratio, and this
machine's dense-product rate beside them, so that figures from different machines can be
compared. The command does this in `--processes` fresh processes (3 unless told), one after
another, and ends with each figure in every run and the median of the runs.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import (add_process_arguments, dense_rate, results_of_processes,  # noqa: E402
                    runs_and_median, write_result)
from elman import training  # noqa: E402
from elman.apps import get_app, get_preset  # noqa: E402
from elman.config import apply_overrides  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", choices=("imdb", "translation"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=60, help="batches timed per round")
    parser.add_argument("--rounds", type=int, default=3)
    add_process_arguments(parser)
    args = parser.parse_args()
    runs = results_of_processes(args)
    if runs is not None:
        print(f"\nOver {len(runs)} process runs: dense product "
              f"{runs_and_median([run['dense_gflops'] for run in runs], '{:.0f}')} GFLOP/s")
        for name in runs[0]["ms_a_step"]:
            print(f"  {name:10s} ms a step "
                  f"{runs_and_median([run['ms_a_step'][name] for run in runs], '{:.1f}')}")
        ratios = [run["ms_a_step"]["SimpleRNN"] / run["ms_a_step"]["ElmanRNN"] for run in runs]
        print(f"  ElmanRNN faster than SimpleRNN by x {runs_and_median(ratios)}")
        return

    app = get_app(args.app)
    config = apply_overrides(get_preset(app, args.preset), args.overrides)
    training.make_repeatable(config.seed)
    data = app.load_data(config)
    steps_per_epoch = sum(1 for _ in data.train)
    batches = list(data.train.take(args.steps))
    layers = {"ElmanRNN": None,
              "SimpleRNN": keras.layers.SimpleRNN(config.hidden_units, return_sequences=True)}
    models = {name: app.build_model(config, data, recurrent_layer=layer)
              for name, layer in layers.items()}
    for model in models.values():  # Untimed: tracing.
        for inputs, targets in batches:
            model.train_on_batch(inputs, targets)
    seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for inputs, targets in batches:
                model.train_on_batch(inputs, targets)
            seconds[name].append((time.perf_counter() - started) / len(batches))

    # The dense product of recurrence_speed.py at batch 64, time 200, units 128.
    rate = dense_rate(64 * 200, 2 * 128, 128, repeats=15)
    print(f"{args.app} --preset {args.preset} {' '.join(args.overrides)}: {data.source}; "
          f"{len(batches)} batches x {args.rounds} rounds, {os.cpu_count()} CPUs, "
          f"dense product {rate:.1f} GFLOP/s, TensorFlow {tf.__version__}")
    per_step = {name: float(np.median(values)) for name, values in seconds.items()}
    for name, value in per_step.items():
        print(f"  {name:10s} {1e3 * value:7.1f} ms a step (rounds: "
              f"{', '.join(f'{1e3 * v:.1f}' for v in seconds[name])}), an epoch of "
              f"{steps_per_epoch} steps: {value * steps_per_epoch / 60:.1f} min")
    print(f"  ElmanRNN x{per_step['SimpleRNN'] / per_step['ElmanRNN']:.2f} faster than "
          "SimpleRNN")
    write_result(args, {"dense_gflops": rate,
                        "ms_a_step": {name: 1e3 * value for name, value in per_step.items()}})


if __name__ == "__main__":
    main()
