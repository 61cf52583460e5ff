"""What every app benchmark does: train each model the same way, evaluate it on the test split,
and print the figures side by side."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman import training  # noqa: E402
from elman.apps import get_preset  # noqa: E402
from elman.config import apply_overrides  # noqa: E402


def parse_arguments(app, description):
    """`--set key=value` overrides, `--only MODEL ...` and `--runs-dir`; returns
    `(args, config)`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help="start from this preset of the app (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value of every model")
    parser.add_argument("--only", nargs="+", metavar="MODEL", help="run only these models")
    parser.add_argument("--runs-dir", type=Path, default=Path(f"runs/benchmark-{app.NAME}"),
                        help="run directories go to RUNS_DIR/<model>/ (default: %(default)s)")
    args = parser.parse_args()
    return args, apply_overrides(get_preset(app, args.preset), args.overrides)


def run_models(app, config, models, args, figures):
    """Trains and evaluates each model; prints and returns the results.

    Args:
        models: name -> the recurrent layer given to `app.build_model` (None: the app's own).
        figures: `metrics -> dict` of the figures to report from `training.evaluate`'s metrics.
    """
    print(f"config: {config}", flush=True)
    results, data = {}, None
    for name, layer in models.items():
        if args.only and name not in args.only:
            continue
        run_dir = args.runs_dir / name
        # Exactly what `elman train` does (the same random draws in the same order), so that
        # the app's figures here are those of `elman train APP` with the same config.
        model, _ = training.train(app, config, run_dir, verbose=2, recurrent_layer=layer,
                                  preset=getattr(args, "preset", "default"))
        # The test split, read once for every model (train() reads the data itself, so that
        # its random draws come in the order of `elman train`).
        data = data or app.load_data(config)
        metrics = training.evaluate(app, model, data, run_dir, config)
        # train() records the wall time of fit() and the epochs run beside the run.
        record = json.loads((run_dir / "metrics.json").read_text())
        results[name] = {**figures(metrics), "train_minutes": record["training_seconds"] / 60,
                         "epochs": record["epochs_run"],
                         # 1-based, as Keras's progress bar counts epochs.
                         "best_epoch": (record["best_epoch"] or 0) + 1,
                         "parameters": model.count_params()}
        print(f"{name}: {results[name]}", flush=True)
    columns = list(next(iter(results.values()), {}))
    widths = [max(12, len(column) + 2) for column in columns]
    print("\n" + "model".ljust(20) + "".join(c.rjust(w) for c, w in zip(columns, widths)))
    for name, result in results.items():
        print(name.ljust(20) + "".join(
            (f"{value:{width},d}" if isinstance(value, int) else f"{value:{width}.4f}")
            for value, width in zip(result.values(), widths)))
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    (args.runs_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def timed(function):
    """Seconds `function()` takes."""
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def dense_rate(rows, depth, units, repeats):
    """GFLOP/s of one `(rows, depth) @ (depth, units)` product, median of `repeats`: this
    machine's dense-product rate, printed beside speed figures so that machines compare."""
    a = tf.random.normal((rows, depth))
    b = tf.random.normal((depth, units))
    product = tf.function(lambda: tf.matmul(a, b))
    product()
    seconds = np.median([timed(lambda: product().numpy()) for _ in range(repeats)])
    return 2.0 * rows * depth * units / seconds / 1e9


def add_process_arguments(parser, default=3):
    """`--processes N`: run the measurement in N fresh processes, one after another, and report
    the median over them (one process's timings share its warm-up, memory layout and thread
    placement, so one process run is one sample)."""
    parser.add_argument("--processes", type=int, default=default, metavar="N",
                        help="process runs, one after another; the figures are their medians "
                             "(default: %(default)s)")
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)


def results_of_processes(args):
    """Runs this script again in `args.processes` fresh processes (their output streams through)
    and returns the result each wrote; None in a process that is one of those runs, or where
    one process is all that was asked for (then the caller measures in this process)."""
    if args.result_file is not None or args.processes <= 1:
        return None
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(1, args.processes + 1):
            print(f"--- process run {run} of {args.processes}", flush=True)
            path = Path(folder) / f"run-{run}.json"
            subprocess.run([sys.executable, *sys.argv, "--processes", "1",
                            "--result-file", str(path)], check=True)
            results.append(json.loads(path.read_text()))
    return results


def write_result(args, result):
    """Where this process is one of several runs, hands its result to the parent."""
    if args.result_file is not None:
        args.result_file.write_text(json.dumps(result))


def runs_and_median(values, template="{:.2f}"):
    """`'1.49 / 1.52 / 1.47: median 1.49'` of one figure over process runs."""
    runs = " / ".join(template.format(value) for value in values)
    return f"{runs}: median {template.format(float(np.median(values)))}"
