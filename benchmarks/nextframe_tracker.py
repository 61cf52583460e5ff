"""How well the next-frame app's `ObjectTracker` follows Moving MNIST digits, and what moving its
layers of the last true frame could reach: the split's share of the error, apart from the
dynamics that the Elman cell has to learn. Nothing is trained.

On the fixed test sequences (the same as `elman evaluate nextframe`), it prints:

- how often a tracked move between two frames equals the generator's (each digit, each step),
  and how many sequences are tracked without a single wrong move;
- how far the tracked centers of the last given frame are from the digits' centers of mass;
- 10 -> 10 per-frame MSE and MAE (summed over the 64x64 pixels) and SSIM when the tracker's
  layers of the 10th frame are moved by the generator's true moves (perfect dynamics), by the
  true moves plus Gaussian errors of 0.5 and 1 pixel per axis (how fast the figures fall with
  the error of the moves), and by the moves the tracker finds in the true frames that follow;
  beside copying the last frame;
- with `--run-dir`, a trained model's figures (`predict_frames`, as `elman evaluate`) on all
  these sequences, on those tracked without a wrong move, and on the others.

    ELMAN_DATA_DIR=../shared/data python benchmarks/nextframe_tracker.py [--sequences 1000]
        [--run-dir runs/benchmark-nextframe/elman]
"""

import argparse
import itertools
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
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
    parser.add_argument("--run-dir", type=Path,
                        help="also score the model.keras of this run directory")
    args = parser.parse_args()
    config = app.Config()
    model = None
    if args.run_dir is not None:
        if not (args.run_dir / "model.keras").is_file():
            parser.error(f"--run-dir: no model.keras in {args.run_dir}")
        model = keras.saving.load_model(args.run_dir / "model.keras")
        rollout = tf.function(lambda frames: app.predict_frames(model, frames,
                                                                config.output_frames))
    digits = moving_mnist.load_digits(os.environ.get("ELMAN_DATA_DIR"))
    count, given = config.digits_per_sequence, config.input_frames
    frames = given + config.output_frames
    tracker = app.ObjectTracker(count, config.track_iterations)
    decoder = app.MoveDecoder(count)
    track = tf.function(tracker.__call__, input_signature=[
        tf.TensorSpec([None, frames, 64, 64, 1], tf.float32)])
    names = ["true moves", "true moves + N(0, 0.5 px)", "true moves + N(0, 1 px)",
             "tracked moves", "copy last frame"] + (["model"] if model is not None else [])
    right_moves, all_right, errors = [], [], {name: [] for name in names}
    center_errors = []
    positions = np.indices(digits["test"].shape[1:]).reshape(2, -1)
    weights = digits["test"].reshape(len(digits["test"]), -1).astype("float64")
    image_centers = (weights @ positions.T) / weights.sum(axis=1, keepdims=True)  # (images, 2)
    noise = np.random.default_rng(0)
    print(f"digits: {digits['source']}; tracking {args.sequences} test sequences", flush=True)
    for start in range(0, args.sequences, args.batch_size):
        indices = range(start, min(start + args.batch_size, args.sequences))
        drawn = [moving_mnist.moving_sequence(digits["test"], index, app.TEST_SEED, frames,
                                              count, return_positions=True, return_digits=True)
                 for index in indices]
        sequences = np.stack([part[0] for part in drawn])[..., None].astype("float32") / 255
        corners = np.stack([part[1] for part in drawn]).astype("float32")  # (n, frames, count, 2)
        # Where each digit's center of mass is, in each frame: (n, frames, count, 2).
        true_centers = corners + np.stack([[image_centers[digit] for digit in part[2]]
                                           for part in drawn])[:, None].astype("float32")
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
        center_errors.append(np.abs(centers[:, given - 1] - true_centers[:, given - 1][
            np.arange(len(sequences))[:, None], orders[best]]).max(axis=(1, 2)))
        all_right.append(right.all(axis=(1, 2)))
        truth = sequences[:, given:]
        # The last given frame's layers, once per predicted frame.
        reference = np.repeat(layers[:, given - 1:given], config.output_frames, axis=1)
        corners = np.take_along_axis(corners, orders[best][:, None, :, None], axis=2)
        true_offsets = corners[:, given:] - corners[:, given - 1:given]
        tracked_offsets = centers[:, given:] - centers[:, given - 1:given]
        moved = {"true moves": true_offsets, "tracked moves": tracked_offsets}
        for error in (0.5, 1):
            moved[f"true moves + N(0, {error} px)"] = true_offsets + noise.normal(
                0, error, true_offsets.shape).astype("float32")
        for name, offsets in moved.items():
            predicted = decoder.draw(reference, offsets).numpy()
            errors[name].append(app.frame_errors(predicted, truth))
        copy_last = np.repeat(sequences[:, given - 1:given], config.output_frames, axis=1)
        errors["copy last frame"].append(app.frame_errors(copy_last, truth))
        if model is not None:
            errors["model"].append(app.frame_errors(
                rollout(tf.constant(sequences[:, :given])).numpy(), truth))
    right_moves, all_right = np.concatenate(right_moves), np.concatenate(all_right)
    center_errors = np.concatenate(center_errors)
    print(f"tracked moves equal to the generator's: {right_moves.mean():.1%} of "
          f"{right_moves.size} (digit, step); sequences without a wrong move: "
          f"{all_right.mean():.1%} of {all_right.size}")
    print(f"tracked centers in the last given frame, off the digits' centers of mass (the "
          f"larger of the two): {center_errors.mean():.2f} px on average, by more than 1 px "
          f"in {(center_errors > 1).mean():.1%} of the sequences")
    print("10 -> 10 per frame (MSE frames 1 / 5 / 10), the tracker's layers of the last given "
          "frame moved by:")
    for name, parts in errors.items():
        joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        groups = [("", np.ones(len(all_right), bool))]
        if name == "model":
            groups += [(f", tracked without a wrong move ({all_right.sum()})", all_right),
                        (f", the others ({(~all_right).sum()})", ~all_right)]
        for group, selected in groups:
            by_frame = " / ".join(f"{value:.1f}" for value in
                                  joined["mse"][selected].mean(axis=0)[[0, 4, 9]])
            how = {"copy last frame": "(copying the last frame)",
                   "model": f"(the model of {args.run_dir}{group})"}.get(name, f"the {name}")
            print(f"  {how}: MSE {joined['mse'][selected].mean():.1f}, MAE "
                  f"{joined['mae'][selected].mean():.1f}, SSIM "
                  f"{joined['ssim'][selected].mean():.3f} ({by_frame})")


if __name__ == "__main__":
    main()
