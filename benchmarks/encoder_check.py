"""Checks the EfficientNet-Lite0 ImageNet weights: Flickr8k test pictures of dogs should be
classified as dogs.

Loads `<data dir>/weights/efficientnet_lite0_imagenet.npz` into the Keras architecture of
`elman.apps.captioning.encoders` and prints the share of the official Flickr8k test images whose
five captions all mention a dog that get a top-1 ImageNet class among the dog breeds (151-268).
A wrong layer mapping or preprocessing gives about 0.

    ELMAN_DATA_DIR=../shared/data python benchmarks/encoder_check.py
"""

import os
import tarfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from elman.apps.captioning import encoders  # noqa: E402
from elman.datasets import resolve_data_dir  # noqa: E402


def main():
    root = resolve_data_dir()
    if root is None:
        raise SystemExit("set ELMAN_DATA_DIR to the data folder (weights/ and flickr8k/)")
    model = encoders.efficientnet_lite0(include_top=True)
    encoders.load_efficientnet_lite0_weights(
        model, root / "weights" / encoders.EFFICIENTNET_LITE0_FILE)
    captions = {}
    for line in open(root / "flickr8k" / "Flickr8k.token.txt", encoding="utf-8"):
        key, caption = line.rstrip("\n").split("\t")
        captions.setdefault(key.split("#")[0], []).append(caption.lower())
    test = set((root / "flickr8k" / "Flickr_8k.testImages.txt").read_text().split())
    dogs = {name for name in test if all("dog" in caption for caption in captions[name])}
    images = []
    with tarfile.open(root / "flickr8k" / "flickr8k_224_test.tar") as archive:
        for member in archive.getmembers():
            if member.name.split("/")[-1] in dogs:
                data = archive.extractfile(member).read()
                images.append(tf.io.decode_jpeg(data, channels=3).numpy())
    logits = model.predict(encoders.preprocess_efficientnet_lite(np.stack(images)), verbose=0)
    share = np.mean([label in encoders.DOG_CLASSES for label in np.argmax(logits, -1)])
    print(f"{len(images)} dog pictures of the Flickr8k test split; top-1 class a dog breed: "
          f"{100 * share:.1f}%")


if __name__ == "__main__":
    main()
