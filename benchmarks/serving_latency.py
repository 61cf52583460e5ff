"""Serving latency of the exported SavedModels, in process, as TF Serving would run them.

Loads `BASE_DIR/APP/<latest version>` with plain `tf.saved_model.load` and calls its
`serving_default` signature:

- one request at a time: p50 and p99 latency over `--requests` calls, cycling through real
  inputs (for IMDB, test reviews of the shipped sample: 10 to 1,000 words; for translation,
  the English sentences of the shipped sample, greedy decoding);
- batches of `--batch-size`: throughput in examples per second.

    elman export imdb            # or `elman demo`: writes saved_models/imdb/<version>/
    python benchmarks/serving_latency.py [--apps imdb translation] [--base-dir saved_models]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman import export  # noqa: E402


def imdb_texts():
    from elman.datasets.imdb import load_imdb

    # The test reviews of the shipped sample, never training reviews.
    return "review", load_imdb(None)["test"][0]


def translation_texts():
    from elman.datasets.anki import load_anki

    return "sentence", [english for english, _ in load_anki(None)["pairs"]]


# App -> `(signature input name, example texts)`.
REQUESTS = {"imdb": imdb_texts, "translation": translation_texts}


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
        input_name, texts = REQUESTS[name]()
        requests = [{input_name: tf.constant([text])} for text in texts]
        for request in requests[:20]:  # warm-up
            serve(**request)
        latencies = []
        for index in range(args.requests):
            started = time.perf_counter()
            serve(**requests[index % len(requests)])
            latencies.append(time.perf_counter() - started)
        latencies = 1e3 * np.array(latencies)
        words = np.array([len(text.split()) for text in texts])
        batch = {input_name: tf.constant((texts * (args.batch_size // len(texts) + 1))
                                       [:args.batch_size])}
        serve(**batch)
        rounds, started = 20, time.perf_counter()
        for _ in range(rounds):
            serve(**batch)
        throughput = rounds * args.batch_size / (time.perf_counter() - started)
        print(f"{name} (saved_models version {version}): one request p50 "
              f"{np.percentile(latencies, 50):.2f} ms, p99 {np.percentile(latencies, 99):.2f} ms "
              f"over {args.requests} requests (texts of median {np.median(words):.0f} words, "
              f"max {words.max()}); batch {args.batch_size}: {throughput:.0f} texts/s",
              flush=True)


if __name__ == "__main__":
    main()
