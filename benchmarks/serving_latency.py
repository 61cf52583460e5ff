"""Serving latency of the exported SavedModels, in process, as TF Serving would run them.

Loads `BASE_DIR/APP/<latest version>` with plain `tf.saved_model.load` and calls its
`serving_default` signature:

- one request at a time: p50 and p99 latency over `--requests` calls, cycling through real
  inputs (for IMDB, test reviews of the shipped sample: 10 to 1,000 words; for translation,
  the English sentences of the shipped sample, greedy decoding; for nextframe, 10 frames of
  moving shapes in, 10 predicted; for captioning, the JPEGs of Flickr8k test images with
  `ELMAN_DATA_DIR` set, else PNGs of synthetic shapes, greedy decoding);
- batches of `--batch-size`: throughput in examples per second.

    elman export imdb            # or `elman demo`: writes saved_models/imdb/<version>/
    python benchmarks/serving_latency.py [--apps imdb translation nextframe captioning]
        [--base-dir DIR]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman import export  # noqa: E402


def _text_requests(input_name, texts, batch_size):
    """One request per text, a batch of `batch_size` texts, and what the inputs are."""
    words = np.array([len(text.split()) for text in texts])
    batch = (texts * (batch_size // len(texts) + 1))[:batch_size]
    return ([{input_name: tf.constant([text])} for text in texts],
            {input_name: tf.constant(batch)},
            f"texts of median {np.median(words):.0f} words, max {words.max()}")


def imdb_requests(batch_size):
    from elman.datasets.imdb import load_imdb

    # The test reviews of the shipped sample, never training reviews.
    return _text_requests("review", load_imdb(None)["test"][0], batch_size)


def translation_requests(batch_size):
    from elman.datasets.anki import load_anki

    return _text_requests("sentence", [english for english, _ in load_anki(None)["pairs"]],
                          batch_size)


def nextframe_requests(batch_size):
    from elman.datasets import moving_mnist

    digits = moving_mnist.synthetic_shapes(16)
    frames = moving_mnist.moving_sequences(digits, range(batch_size), seed=0, frames=10)
    frames = tf.constant(frames[..., None].astype("float32") / 255.0)
    ten = tf.constant(10, tf.int32)
    return ([{"frames": frames[i:i + 1], "num_frames": ten} for i in range(batch_size)],
            {"frames": frames, "num_frames": ten}, "10 frames in, 10 predicted")


def captioning_requests(batch_size):
    from elman.datasets import flickr8k, resolve_data_dir

    if resolve_data_dir(None) is not None:
        loaded = flickr8k.load_flickr8k()
        images = loaded["images"].read_many([name for name, _ in loaded["test"][:batch_size]])
        description = "Flickr8k test JPEGs"
    else:
        pictures, _ = flickr8k.synthetic_captions(batch_size, seed=3)
        images = [flickr8k.encode_png(picture) for picture in pictures]
        description = "64x64 PNGs of synthetic shapes"
    return ([{"image_bytes": tf.constant([image])} for image in images],
            {"image_bytes": tf.constant(images)}, f"{description}, greedy")


# App -> `batch_size -> (single requests, one batch request, description)`.
REQUESTS = {"imdb": imdb_requests, "translation": translation_requests,
            "nextframe": nextframe_requests, "captioning": captioning_requests}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", nargs="+", default=list(REQUESTS), choices=list(REQUESTS))
    parser.add_argument("--base-dir", default="saved_models")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs")
    for name in args.apps:
        loaded, version = export.load_saved_model(name, args.base_dir)
        serve = loaded.signatures["serving_default"]
        requests, batch, description = REQUESTS[name](args.batch_size)
        for request in requests[:20]:  # warm-up
            serve(**request)
        latencies = []
        for index in range(args.requests):
            started = time.perf_counter()
            serve(**requests[index % len(requests)])
            latencies.append(time.perf_counter() - started)
        latencies = 1e3 * np.array(latencies)
        serve(**batch)
        rounds, started = 20, time.perf_counter()
        for _ in range(rounds):
            serve(**batch)
        throughput = rounds * args.batch_size / (time.perf_counter() - started)
        print(f"{name} (saved_models version {version}): one request p50 "
              f"{np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms "
              f"over {args.requests} requests ({description}); batch {args.batch_size}: "
              f"{throughput:.0f} requests/s", flush=True)


if __name__ == "__main__":
    main()
