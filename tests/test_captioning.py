"""The captioning app on synthetic shapes: overfitting, decoding, image bytes in, CLI."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import app_checks
from elman.apps import get_app
from elman.cli import main
from elman.datasets import flickr8k
from test_flickr8k import write_layout as write_flickr8k_layout

app = get_app("captioning")


@pytest.fixture(scope="module")
def data():
    return app.load_data(app.SMOKE)


@pytest.fixture(scope="module")
def overfit(data):
    """A model trained on 16 pictures until it knows their captions: `(model, inputs)`."""
    keras.utils.set_random_seed(0)
    model = app.build_model(dataclasses.replace(app.SMOKE, learning_rate=3e-3), data)
    inputs, labels = next(iter(data.validation.unbatch().batch(16)))
    model.fit(tf.data.Dataset.from_tensors((inputs, labels)).repeat(300), verbose=0)
    return model, inputs


def test_overfits_a_few_pictures_to_their_exact_captions(overfit):
    model, inputs = overfit
    captions = app.Captioner(model).greedy(inputs["image"]).numpy()
    assert (captions == inputs["caption"].numpy()).sum() >= 15


def test_beam_width_one_equals_greedy(overfit, data):
    model, inputs = overfit
    captioner = app.Captioner(model)
    for images in (inputs["image"], tf.constant(data.test_inputs[:16])):
        beam, _ = captioner.beam_search(images, 1)
        np.testing.assert_array_equal(beam.numpy(), captioner.greedy(images).numpy())


def test_beam_search_scores_are_the_model_log_probabilities(overfit, data):
    """The log-probability beam search reports for a caption is what the training graph (with
    the image merged at every step) gives that caption and its "[end]" under teacher forcing."""
    model, _ = overfit
    images = tf.constant(data.test_inputs[:8])
    captions, log_probabilities = app.Captioner(model).beam_search(images, 3)
    app_checks.check_scores_are_teacher_forced_log_probabilities(
        model, {"image": images, "caption": captions}, "caption", log_probabilities)


def test_training_step_changes_every_weight(data):
    model = app.build_model(app.SMOKE, data)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))


def test_keras_round_trip(data, tmp_path):
    model = app.build_model(app.SMOKE, data)
    inputs, _ = next(iter(data.validation))
    app_checks.check_keras_round_trip(model, inputs, tmp_path)


def test_exported_model_captions_png_and_jpeg_bytes(overfit, tmp_path):
    model, inputs = overfit
    pixels = np.round(inputs["image"].numpy()[:3] * 255).astype(np.uint8)
    jpeg, png = tf.io.encode_jpeg(pixels[2], quality=100).numpy(), flickr8k.encode_png(pixels[1])
    corrupt_png = bytearray(png)
    corrupt_png[40] ^= 0xFF  # Inside the first chunk: its CRC no longer matches.
    encoded = [flickr8k.encode_png(pixels[0]), png, jpeg, b"not an image", b"",
               jpeg[:len(jpeg) // 2], jpeg[:200], png[:len(png) // 2], bytes(corrupt_png),
               b"\xff\xd8\xff" + b"\x00" * 100]
    good = [True, True, True] + [False] * 7
    request = {"image_bytes": tf.constant(encoded)}
    version_dir = app_checks.check_export_without_elman(app, model, request, tmp_path)
    loaded = tf.saved_model.load(str(version_dir))
    outputs = loaded.signatures["serving_default"](**request)
    # Truncated and corrupt files are invalid and cost the good images nothing.
    assert outputs["valid"].numpy().tolist() == good
    captions = outputs["caption"].numpy()
    expected = inputs["caption"].numpy()
    assert captions[0] == expected[0] and captions[1] == expected[1]  # PNG: lossless
    assert set(captions[3:]) == {b""}
    alone = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded[:3]))
    np.testing.assert_array_equal(alone["caption"].numpy(), captions[:3])
    assert loaded.signatures["serving_default"](image_bytes=tf.constant(encoded[3:]))[
        "valid"].numpy().tolist() == good[3:]
    beam = loaded.signatures["beam_search"](image_bytes=request["image_bytes"],
                                            beam_width=tf.constant(3))
    assert beam["valid"].numpy().tolist() == good
    with pytest.raises(tf.errors.InvalidArgumentError, match="beam_width must be at least 1"):
        loaded.signatures["beam_search"](image_bytes=request["image_bytes"],
                                         beam_width=tf.constant(0))


def test_an_lstm_reference_trains_and_decodes_in_the_same_pipeline(data):
    model = app.build_model(app.SMOKE, data, recurrent_layer=keras.layers.LSTM(64))
    assert isinstance(model.get_layer("decoder"), keras.layers.LSTM)
    model.fit(data.train.take(2), verbose=0)
    captioner = app.Captioner(model)
    images = tf.constant(data.test_inputs[:8])
    beam, _ = captioner.beam_search(images, 1)
    np.testing.assert_array_equal(beam.numpy(), captioner.greedy(images).numpy())


def test_bleu_uses_every_reference():
    references = [["A red circle .", "a RED square"], ["a blue circle"]]
    perfect = app.bleu_scores(["a red square", "a blue circle"], references)
    assert perfect["bleu1"] == pytest.approx(100.0) and perfect["bleu4"] == pytest.approx(0.0)
    assert app.bleu_scores(["a red circle", "a blue circle"], references)["bleu3"] == \
        pytest.approx(100.0)


def test_encoder_choice_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="encoder must be one of"):
        app.encoder_name(dataclasses.replace(app.SMOKE, encoder="vgg"))
    with pytest.raises(ValueError, match="needs a data directory"):
        app.load_data(dataclasses.replace(app.SMOKE, encoder="efficientnet_lite0"))
    with pytest.raises(FileNotFoundError, match="efficientnet_lite0_imagenet.npz"):
        app.pretrained_encoder("efficientnet_lite0", tmp_path)
    with pytest.raises(ValueError, match="keras.applications has no 'NoSuchNet'"):
        app.encoder_name(dataclasses.replace(app.SMOKE, encoder="keras:NoSuchNet"))
    # The default: small_cnn without data; with a data directory, Lite0 where its weights are,
    # else a keras.applications CNN that downloads its own.
    assert app.encoder_name(app.SMOKE) == "small_cnn"
    with_data = dataclasses.replace(app.SMOKE, data_dir=str(tmp_path))
    assert app.encoder_name(with_data) == app.FALLBACK_ENCODER == "keras:EfficientNetB0"
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "efficientnet_lite0_imagenet.npz").write_bytes(b"")
    assert app.encoder_name(with_data) == "efficientnet_lite0"


def test_a_keras_applications_encoder_is_cached_trained_and_served(tmp_path, monkeypatch):
    """`encoder=keras:<application>` (here MobileNetV3Small, with random weights: nothing can be
    downloaded in tests) on a tiny Flickr8k folder: features cached, the model trained, and the
    exported model runs the same CNN on raw JPEG bytes in a process without elman."""
    monkeypatch.setattr(app, "KERAS_WEIGHTS", None)
    write_flickr8k_layout(tmp_path / "flickr8k")
    config = dataclasses.replace(app.SMOKE, data_dir=str(tmp_path), encoder="keras:MobileNetV3Small",
                                 cache_dir=str(tmp_path / "cache"))
    data = app.load_data(config)
    assert data.image_input == "image_features" and data.test_inputs.shape == (1, 576)
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [
        f"flickr8k-keras-MobileNetV3Small-{split}-1.npz" for split in ("test", "train",
                                                                      "validation")]
    model = app.build_model(config, data)
    model.fit(data.train, verbose=0)
    assert model.get_layer("pretrained_features").encoder == "keras:MobileNetV3Small"
    request = {"image_bytes": tf.constant(data.test_image_bytes([0]) + [b"not an image"])}
    app_checks.check_export_without_elman(app, model, request, tmp_path)


def test_cli_verbs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "captioning", "--preset", "smoke", "--set", "epochs=1"]) == 0
    assert main(["evaluate", "captioning"]) == 0
    run_dir = tmp_path / "runs" / "captioning"
    report = json.loads((run_dir / "evaluation.json").read_text())["report"]
    assert report["test_images"] == 60 and 0 <= report["greedy"]["bleu4"] <= 100
    assert "<img src='data:image;base64," in (run_dir / "contact_sheet.html").read_text()
    # Decoding settings change at evaluation; settings of the trained model do not.
    assert main(["evaluate", "captioning", "--set", "beam_width=2"]) == 0
    assert "beam2" in json.loads((run_dir / "evaluation.json").read_text())["report"]
    capsys.readouterr()
    assert main(["evaluate", "captioning", "--set", "hidden_units=8"]) == 2
    assert "do not change the trained model" in capsys.readouterr().err
    assert main(["export", "captioning"]) == 0
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "text.png").write_bytes(b"hello")
    capsys.readouterr()
    assert main(["predict", "captioning", "synthetic:0", "text.png", "broken.jpg"]) == 0
    printed = capsys.readouterr().out
    # A JPEG header with garbage after it is told apart only by decoding it: the image is
    # invalid, and the others keep their captions.
    assert "synthetic:0: 'a " in printed
    assert "text.png: not a complete JPEG or PNG image" in printed
    assert "broken.jpg: not a complete JPEG or PNG image" in printed
