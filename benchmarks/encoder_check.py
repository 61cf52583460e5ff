"""Checks the EfficientNet-Lite0 ImageNet weights: Flickr8k test pictures of dogs should be
classified as dogs.

Loads `<data dir>/weights/efficientnet_lite0_imagenet.npz` into the Keras architecture of
`elman.apps.captioning.encoders` and prints the share of the official Flickr8k test images whose
five captions all mention a dog that get a top-1 ImageNet class among the dog breeds (151-268).
A wrong layer mapping or preprocessing gives about 0.

    ELMAN_DATA_DIR=../shared/data python benchmarks/encoder_check.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman.apps.captioning import encoders  # noqa: E402
from elman.datasets import flickr8k, resolve_data_dir  # noqa: E402


def main():
    root = resolve_data_dir()
    if root is None:
        raise SystemExit("set ELMAN_DATA_DIR to the data folder (weights/ and flickr8k/)")
    model = encoders.efficientnet_lite0(include_top=True)
    encoders.load_efficientnet_lite0_weights(
        model, root / "weights" / encoders.EFFICIENTNET_LITE0_FILE)
    flickr = flickr8k.load_flickr8k(root)
    dogs = [name for name, captions in flickr["test"]
            if all("dog" in caption.lower() for caption in captions)]
    images = [tf.io.decode_jpeg(data, channels=3).numpy()
              for data in flickr["images"].read_many(dogs)]
    logits = model.predict(encoders.preprocess_efficientnet_lite(np.stack(images)), verbose=0)
    share = np.mean([label in encoders.DOG_CLASSES for label in np.argmax(logits, -1)])
    print(f"{len(images)} dog pictures of the Flickr8k test split; top-1 class a dog breed: "
          f"{100 * share:.1f}%")


if __name__ == "__main__":
    main()
