"""Speed of the Elman recurrence: ElmanRNN against RNN(ElmanCell) and Keras's SimpleRNN.

For every (batch, time, units) of the grid, in one process, with the layers' repeats
interleaved (so that a slow moment of the machine hits all of them) and medians reported:

- training step: forward, loss, backward and an SGD update (`train_on_batch`);
- inference: the forward pass (`predict_on_batch`);
- the ratio of SimpleRNN's median time to each layer's (> 1: faster than SimpleRNN);
- the recurrence's FLOP rate in inference (2·batch·time·units·(input_dim + units) FLOPs for
  `x_t U + s_{t-1} W`) against the rate this machine reaches on one dense matrix product of
  the same total size, `(batch·time, input_dim + units) @ (input_dim + units, units)`: the
  practical limit, since a recurrence cannot beat one large product.

The inputs have `input_dim = units` features and no output projection (V) unless
`--output-units` is given, in which case SimpleRNN is followed by a Dense over time.

    python benchmarks/recurrence_speed.py                    # the full grid (long on 2 cores)
    python benchmarks/recurrence_speed.py --batch 64 --time 200 --units 128
    python benchmarks/recurrence_speed.py --jit-compile      # the same under XLA

Each command runs the measurement in `--processes` fresh processes (3 unless told), one after
another, and ends with every figure's value in each run and the median of the runs.
"""

import argparse
import itertools
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import (add_process_arguments, dense_rate, results_of_processes,  # noqa: E402
                    runs_and_median, timed, write_result)
from elman.layers import ElmanCell, ElmanRNN  # noqa: E402

LAYERS = ("elman_rnn", "rnn_elman_cell", "keras_simple_rnn")


def build(name, batch, time_steps, units, output_units, jit_compile):
    inputs = keras.Input((time_steps, units), batch_size=batch)
    if name == "elman_rnn":
        outputs = ElmanRNN(ElmanCell(units, output_units=output_units),
                           return_sequences=True)(inputs)
    elif name == "rnn_elman_cell":
        outputs = keras.layers.RNN(ElmanCell(units, output_units=output_units),
                                   return_sequences=True)(inputs)
    else:
        outputs = keras.layers.SimpleRNN(units, return_sequences=True)(inputs)
        if output_units:
            outputs = keras.layers.Dense(output_units)(outputs)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(1e-4), "mse", jit_compile=jit_compile)
    return model


def measure(batch, time_steps, units, args):
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(batch, time_steps, units)).astype("float32")
    targets = rng.normal(size=(batch, time_steps, args.output_units or units)).astype("float32")
    models = {name: build(name, batch, time_steps, units, args.output_units, args.jit_compile)
              for name in args.layers}
    for model in models.values():  # Warm up: tracing and compilation are not timed.
        model.train_on_batch(inputs, targets)
        model.predict_on_batch(inputs)
    train = {name: [] for name in models}
    infer = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            train[name].append(timed(lambda: model.train_on_batch(inputs, targets)))
            infer[name].append(timed(lambda: model.predict_on_batch(inputs)))
    flops = 2.0 * batch * time_steps * units * (units + units)
    limit = dense_rate(batch * time_steps, 2 * units, units, args.repeats)
    row = {"batch": batch, "time": time_steps, "units": units, "dense_gflops": limit}
    for name in models:
        row[name] = {"train_ms": 1e3 * float(np.median(train[name])),
                     "infer_ms": 1e3 * float(np.median(infer[name]))}
        row[name]["gflops"] = flops / (row[name]["infer_ms"] / 1e3) / 1e9
        row[name]["of_dense"] = row[name]["gflops"] / limit
    if "keras_simple_rnn" in models:
        reference = row["keras_simple_rnn"]
        for name in models:
            row[name]["train_speedup"] = reference["train_ms"] / row[name]["train_ms"]
            row[name]["infer_speedup"] = reference["infer_ms"] / row[name]["infer_ms"]
    return row


def print_row(row, layers):
    print(f"batch {row['batch']:4d} time {row['time']:5d} units {row['units']:5d} "
          f"(dense product {row['dense_gflops']:.1f} GFLOP/s)")
    for name in layers:
        figures = row[name]
        speed = (f" x{figures['train_speedup']:.2f} train, x{figures['infer_speedup']:.2f} "
                 "infer vs SimpleRNN" if "train_speedup" in figures else "")
        print(f"  {name:18s} train {figures['train_ms']:9.1f} ms  infer {figures['infer_ms']:9.1f}"
              f" ms  {figures['gflops']:6.1f} GFLOP/s = {100 * figures['of_dense']:5.1f}% of "
              f"dense{speed}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--time", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--units", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--layers", nargs="+", choices=LAYERS, default=list(LAYERS))
    parser.add_argument("--output-units", type=int, default=None,
                        help="add V (and a Dense over time after SimpleRNN) with this size")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    parser.add_argument("--jit-compile", action="store_true", help="compile with XLA")
    parser.add_argument("--output", help="write the rows (of every process run) as JSON here")
    add_process_arguments(parser)
    args = parser.parse_args()
    runs = results_of_processes(args)
    if runs is not None:
        print_medians(runs, args.layers)
        if args.output:
            with open(args.output, "w") as file:
                json.dump({"process_runs": runs}, file, indent=1)
        return
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"XLA {'on' if args.jit_compile else 'off'}, medians of {args.repeats}")
    rows = []
    for batch, time_steps, units in itertools.product(args.batch, args.time, args.units):
        rows.append(measure(batch, time_steps, units, args))
        print_row(rows[-1], args.layers)
        if args.output and args.result_file is None:  # A process run hands its rows back.
            with open(args.output, "w") as file:
                json.dump(rows, file, indent=1)
    write_result(args, rows)


def print_medians(runs, layers):
    """Each configuration's figures over the process runs, and their medians."""
    print(f"\nOver {len(runs)} process runs (ratios: SimpleRNN's median time over the layer's):")
    for rows in zip(*runs):
        first = rows[0]
        rates = " / ".join(f"{row['dense_gflops']:.0f}" for row in rows)
        print(f"batch {first['batch']:4d} time {first['time']:5d} units {first['units']:5d} "
              f"(dense product {rates} GFLOP/s)")
        for name in layers:
            train = [row[name]["train_ms"] for row in rows]
            line = f"  {name:18s} train ms {runs_and_median(train, '{:.1f}')}"
            if "train_speedup" in first[name]:
                line += (f"; x {runs_and_median([row[name]['train_speedup'] for row in rows])}"
                         " train, x " + runs_and_median(
                             [row[name]["infer_speedup"] for row in rows]) + " infer")
            print(line, flush=True)


if __name__ == "__main__":
    main()
