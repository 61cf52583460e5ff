"""The captioning app's pretrained encoder: EfficientNet-Lite0 built in Keras, its weight archive.

The real archive's check (ImageNet dog classes for Flickr8k dog pictures) needs the data folder:
`python benchmarks/encoder_check.py`.
"""

import numpy as np
import pytest

from elman.apps.captioning import encoders


@pytest.fixture(scope="module")
def model():
    return encoders.efficientnet_lite0(include_top=True)


def _archive_from(model, path, drop=None):
    """Writes `model`'s weights under the original archive names, as the real file has them."""
    suffixes = {"conv": ("weight",), "dense": ("weight", "bias"),
                "bn": ("weight", "bias", "running_mean", "running_var")}
    arrays = {}
    for layer_name, (prefix, kind) in encoders._archive_names(model).items():
        for suffix, weight in zip(suffixes[kind], model.get_layer(layer_name).weights):
            arrays[f"{prefix}.{suffix}"] = weight.numpy()
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return arrays


def test_architecture(model):
    # EfficientNet-Lite0: 4,652,008 parameters plus 42,016 BatchNorm moving statistics.
    assert model.count_params() == 4_694_024
    trunk = encoders.efficientnet_lite0()
    assert trunk.output_shape == (None, 7, 7, 1280)
    blocks = {layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")}
    assert len(blocks) == 16


def test_archive_names_cover_every_weight_and_load(model, tmp_path):
    arrays = _archive_from(model, tmp_path / "weights.npz")
    assert len(arrays) == 247  # As many arrays as the real archive holds.
    assert sum(array.size for array in arrays.values()) == model.count_params()
    assert "_blocks.15._project_conv.weight" in arrays and "_blocks.0._expand_conv.weight" \
        not in arrays  # The first block has no expansion.
    fresh = encoders.efficientnet_lite0(include_top=True)
    encoders.load_efficientnet_lite0_weights(fresh, tmp_path / "weights.npz")
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    inputs = encoders.preprocess_efficientnet_lite(images)
    np.testing.assert_allclose(fresh.predict(inputs, verbose=0), model.predict(inputs, verbose=0),
                               rtol=1e-5, atol=1e-5)
    trunk = encoders.load_efficientnet_lite0_weights(encoders.efficientnet_lite0(),
                                                     tmp_path / "weights.npz")
    np.testing.assert_array_equal(trunk.get_layer("head_conv").kernel.numpy(),
                                  model.get_layer("head_conv").kernel.numpy())


def test_bad_archives_are_clear_errors(model, tmp_path):
    _archive_from(model, tmp_path / "partial.npz", drop="_blocks.3._bn1.running_var")
    with pytest.raises(ValueError, match=r"lacks \['_blocks.3._bn1.running_var'\] for layer "
                                         "block3_depthwise_bn"):
        encoders.load_efficientnet_lite0_weights(encoders.efficientnet_lite0(),
                                                 tmp_path / "partial.npz")
    with pytest.raises(FileNotFoundError, match="put efficientnet_lite0_imagenet.npz in"):
        encoders.load_efficientnet_lite0_weights(model, tmp_path / "missing.npz")
