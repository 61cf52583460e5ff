"""Chooses the captioning app's decoding settings on the validation split, never the test split.

Loads a trained run, captions the validation images greedily and with beam search over a grid of
beam widths and length penalties (beam search ranks `log P / length ** length_penalty`), and
prints corpus BLEU-1..4 (against all five references) and the mean caption length of each, best
BLEU-4 last. The chosen pair goes into `Config` (or `elman evaluate captioning --set
beam_width=... --set length_penalty=...`).

    ELMAN_DATA_DIR=../shared/data python benchmarks/captioning_decoding.py \\
        --run-dir runs/benchmark-captioning/elman [--beam-widths 3 5 10] \\
        [--length-penalties 0.0 0.3 0.6 1.0]
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman import decoding, training  # noqa: E402
from elman.apps import get_app  # noqa: E402

app = get_app("captioning")


def _beam_search(captioner, beam_width):
    @tf.function(reduce_retracing=True)
    def search(images):
        return captioner.beam_search(images, beam_width)[0]

    return search


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/benchmark-captioning/elman"))
    parser.add_argument("--beam-widths", type=int, nargs="+", default=[3, 5, 7, 10])
    parser.add_argument("--length-penalties", type=float, nargs="+",
                        default=[0.0, 0.3, 0.6, 1.0])
    args = parser.parse_args()
    config = training.load_run_config(app, args.run_dir)
    model = training.load_trained_model(app, args.run_dir)
    data = app.load_data(config)
    print(f"{args.run_dir}: {len(data.validation_references)} validation images "
          f"({data.source})", flush=True)

    def score(function):
        captions = decoding.decode_in_batches(function, data.validation_inputs, 128)
        length = np.mean([len(caption.split()) for caption in captions])
        return {**app.bleu_scores(captions, data.validation_references), "length": length}

    results = {"greedy": score(tf.function(app.Captioner(model).greedy, reduce_retracing=True))}
    print(f"greedy: {results['greedy']}", flush=True)
    for width in args.beam_widths:
        for penalty in args.length_penalties:
            results[f"beam {width}, length_penalty {penalty}"] = score(
                _beam_search(app.Captioner(model, penalty), width))
            print(f"beam {width}, length_penalty {penalty}: done", flush=True)
    print(f"\n{'decoding':36}" + "".join(f"{column:>9}" for column in
                                          ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "length")))
    for name, result in sorted(results.items(), key=lambda item: item[1]["bleu4"]):
        print(f"{name:36}" + "".join(f"{result[key]:9.2f}" for key in
                                     ("bleu1", "bleu2", "bleu3", "bleu4", "length")))


if __name__ == "__main__":
    main()
