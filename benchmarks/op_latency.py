"""What one step of a recurrence costs on this machine: the latency of each op of the step when
every op waits for the one before it, inside a TensorFlow while loop, as on the loop's critical
path.

    python benchmarks/op_latency.py                  # batch 64, units 128, all cores
    taskset -c 0 python benchmarks/op_latency.py     # the same on one core

For each op: microseconds per op in a chain of 400 (8 per loop iteration; median of 9 runs).
The product `(batch, units) @ (units, units)` is also timed with more rows (the block products
that run beside the steps), with its FLOP rate. An op that TensorFlow splits over several
threads (an elementwise op with enough work per element, a copy of enough bytes) shows up as
slower with two cores than with one: it waits for the second core.
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import timed  # noqa: E402

STEPS, PER_ITERATION = 400, 8


def chain_latency(step, state, repeats=9):
    """Microseconds per call of `state = step(state, j)` in a chain inside a while loop."""
    @tf.function
    def run():
        def body(i, state):
            for j in range(PER_ITERATION):
                state = step(state, j)
            return i + 1, state
        return tf.while_loop(lambda i, _: i < STEPS // PER_ITERATION, body, (0, state))[1]

    run()
    return 1e6 * float(np.median([timed(run) for _ in range(repeats)])) / STEPS


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--units", type=int, default=128)
    args = parser.parse_args()
    batch, units = args.batch, args.units
    rng = np.random.default_rng(0)
    W = tf.constant(rng.normal(scale=units ** -0.5, size=(units, units)), tf.float32)
    state = tf.constant(rng.normal(size=(batch, units)), tf.float32)
    addends = tf.constant(rng.normal(size=(PER_ITERATION, batch, units)), tf.float32)

    def collect(state, j):  # A block's 8 states in one tensor, as the backward pass needs.
        return tf.concat([state] * PER_ITERATION, 0)[:batch]

    steps = {
        "matmul s W": lambda state, j: tf.matmul(state, W),
        "add": lambda state, j: state + addends[j],
        "tanh": lambda state, j: tf.tanh(state),
        "tanh gradient": lambda state, j: tf.raw_ops.TanhGrad(y=addends[j], dy=state),
        "concat of 8": collect,
        "whole step": lambda state, j: tf.tanh(addends[j] + tf.matmul(state, W)),
    }
    print(f"TensorFlow {tf.__version__}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} "
          f"CPUs, batch {batch}, units {units}: microseconds per op on the critical path")
    for name, step in steps.items():
        print(f"  {name:14s} {chain_latency(step, state):7.2f} us", flush=True)
    for rows in (batch, 4 * batch, PER_ITERATION * batch, 32 * batch):
        rows_state = tf.constant(rng.normal(size=(rows, units)), tf.float32)
        microseconds = chain_latency(lambda state, j: tf.matmul(state, W), rows_state)
        rate = 2.0 * rows * units * units / microseconds / 1e3
        print(f"  product of {rows:5d} rows {microseconds:8.1f} us, {rate:6.1f} GFLOP/s",
              flush=True)


if __name__ == "__main__":
    main()
