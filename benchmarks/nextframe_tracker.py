"""How well the next-frame app's `ObjectTracker` follows Moving MNIST digits, and what moving its
layers of the last true frame could reach: the split's share of the error, apart from the
dynamics that the Elman cell has to learn. Nothing is trained.

On the fixed test sequences (the same as `elman evaluate nextframe`), it prints:

- how often a tracked move between two frames equals the generator's (each digit, each step),
  and how many sequences are tracked without a single wrong move;
- 10 -> 10 per-frame MSE (summed over the 64x64 pixels) when the tracker's layers of the 10th
  frame are moved by the generator's true moves (perfect dynamics), and by the moves the tracker
  finds in the true frames that follow; beside copying the last frame.

    ELMAN_DATA_DIR=../shared/data python benchmarks/nextframe_tracker.py [--sequences 1000]
"""

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman.apps import get_app  # noqa: E402
from elman.datasets import moving_mnist  # noqa: E402

app = get_app("nextframe")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=1000,
                        help="test sequences to track (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()
    config = app.Config()
    digits = moving_mnist.load_digits(os.environ.get("ELMAN_DATA_DIR"))
    count, given = config.digits_per_sequence, config.input_frames
    frames = given + config.output_frames
    tracker = app.ObjectTracker(count, config.track_iterations)
    decoder = app.FrameDecoder(config.filters, layers=count, split="tracks")
    track = tf.function(tracker.__call__, input_signature=[
        tf.TensorSpec([None, frames, 64, 64, 1], tf.float32)])
    right_moves, all_right, errors = [], [], {"true moves": [], "tracked moves": [],
                                              "copy last frame": []}
    print(f"digits: {digits['source']}; tracking {args.sequences} test sequences", flush=True)
    for start in range(0, args.sequences, args.batch_size):
        indices = range(start, min(start + args.batch_size, args.sequences))
        pairs = [moving_mnist.moving_sequence(digits["test"], index, app.TEST_SEED, frames,
                                              count, return_positions=True)
                 for index in indices]
        sequences = np.stack([pair[0] for pair in pairs])[..., None].astype("float32") / 255
        corners = np.stack([pair[1] for pair in pairs]).astype("float32")  # (n, frames, count, 2)
        centers, layers = (part.numpy() for part in track(tf.constant(sequences)))
        true_moves = np.diff(corners, axis=1)
        tracked_moves = np.diff(centers, axis=1)
        # Which digit each tracked object is: per sequence, the order of the digits that
        # agrees with the most tracked moves. agree: (orders, n, steps, count) bool.
        orders = np.array(list(itertools.permutations(range(count))))
        agree = np.stack([np.abs(tracked_moves - true_moves[:, :, order]).max(-1) < 0.5
                          for order in orders])
        best = agree.sum(axis=(2, 3)).argmax(axis=0)  # (n,)
        right = agree[best, np.arange(len(sequences))]
        right_moves.append(right.reshape(-1))
        all_right.append(right.all(axis=(1, 2)))
        truth = sequences[:, given:]
        reference = layers[:, given - 1]
        corners = np.take_along_axis(corners, orders[best][:, None, :, None], axis=2)
        true_offsets = corners[:, given:] - corners[:, given - 1:given]
        tracked_offsets = centers[:, given:] - centers[:, given - 1:given]
        for name, offsets in (("true moves", true_offsets), ("tracked moves", tracked_offsets)):
            predicted = np.stack([decoder.compose_layers(reference, offsets[:, k]).numpy()
                                  for k in range(config.output_frames)], axis=1)
            errors[name].append(app.frame_errors(predicted, truth)["mse"])
        copy_last = np.repeat(sequences[:, given - 1:given], config.output_frames, axis=1)
        errors["copy last frame"].append(app.frame_errors(copy_last, truth)["mse"])
    right_moves, all_right = np.concatenate(right_moves), np.concatenate(all_right)
    print(f"tracked moves equal to the generator's: {right_moves.mean():.1%} of "
          f"{right_moves.size} (digit, step); sequences without a wrong move: "
          f"{all_right.mean():.1%} of {all_right.size}")
    for name, parts in errors.items():
        mse = np.concatenate(parts)
        by_frame = " / ".join(f"{value:.1f}" for value in mse.mean(axis=0)[[0, 4, 9]])
        how = ("copying the last frame" if name == "copy last frame"
               else f"the tracker's layers moved by the {name}")
        print(f"10 -> 10 MSE per frame, {how}: {mse.mean():.1f} (frames 1 / 5 / 10: {by_frame})")


if __name__ == "__main__":
    main()
