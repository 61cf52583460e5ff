"""The checks every app goes through, written once and called from each app's tests."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from elman import export


def check_training_step_changes_every_weight(model, batch):
    """One optimizer step on `batch` must move every trainable weight."""
    before = [weight.numpy().copy() for weight in model.trainable_weights]
    model.train_on_batch(*batch)
    unchanged = [weight.path for weight, old in zip(model.trainable_weights, before)
                 if np.array_equal(weight.numpy(), old)]
    assert not unchanged, f"weights not changed by a training step: {unchanged}"


def check_keras_round_trip(model, inputs, tmp_path):
    """Saving to `.keras` and loading back gives identical outputs."""
    path = tmp_path / "round_trip.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored.predict(inputs, verbose=0),
                                  model.predict(inputs, verbose=0))
    return restored


def _save_tensors(tensors, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensor in tensors.items():
        tf.io.write_file(str(folder / name), tf.io.serialize_tensor(tensor))


def check_export_without_elman(app, model, request, tmp_path):
    """The exported SavedModel, loaded by plain `tf.saved_model.load` in a fresh process that
    never imports elman, returns what the in-process serving function returns.

    Args:
        request: the serving signature's keyword arguments, e.g. `{"review": tf.constant([...])}`.

    Returns:
        The path of the exported version.
    """
    version_dir = export.export(app, model, tmp_path / "saved_models")
    expected = app.export_signatures(model)["serving_default"](**request)
    _save_tensors(request, tmp_path / "request")
    dtypes = {name: tensor.dtype.name for name, tensor in request.items()}
    script = textwrap.dedent(f"""
        import pathlib, sys
        import tensorflow as tf
        loaded = tf.saved_model.load({str(version_dir)!r})
        request = {{name: tf.io.parse_tensor(tf.io.read_file({str(tmp_path / "request")!r} + "/" + name), dtype)
                    for name, dtype in {dtypes!r}.items()}}
        outputs = loaded.signatures["serving_default"](**request)
        folder = pathlib.Path({str(tmp_path / "response")!r})
        folder.mkdir()
        for name, tensor in outputs.items():
            tf.io.write_file(str(folder / name), tf.io.serialize_tensor(tensor))
        assert not any(name.startswith("elman") for name in sys.modules), "elman was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert sorted(os.listdir(tmp_path / "response")) == sorted(expected)
    for name, tensor in expected.items():
        served = tf.io.parse_tensor(tf.io.read_file(str(tmp_path / "response" / name)),
                                    tensor.dtype)
        if tensor.dtype == tf.string:
            np.testing.assert_array_equal(served.numpy(), tensor.numpy())
        else:
            np.testing.assert_allclose(served.numpy(), tensor.numpy(), rtol=1e-5, atol=1e-6)
    return version_dir


def check_scores_are_teacher_forced_log_probabilities(model, inputs, prefix, log_probabilities):
    """The log-probability a beam search reports for each text it wrote is what the training
    graph gives that text (and its "[end]") under teacher forcing.

    Args:
        inputs: the model's inputs, with the written texts as its target text input.
        prefix: the name of the target's text layers, `<prefix>_vectorizer` and
            `<prefix>_length` (e.g. "target", "caption").
        log_probabilities: `(batch,)`, what the beam search reported.
    """
    from elman.text import teacher_forcing

    texts = inputs[prefix]
    ids = model.get_layer(f"{prefix}_length")(model.get_layer(f"{prefix}_vectorizer")(texts))
    _, labels = teacher_forcing(ids)
    logits = model(inputs, training=False)
    word_log_probabilities = tf.gather(tf.nn.log_softmax(logits), labels, batch_dims=2)
    expected = tf.reduce_sum(tf.where(labels != 0, word_log_probabilities, 0.0), axis=1)
    np.testing.assert_allclose(log_probabilities.numpy(), expected.numpy(), rtol=1e-4, atol=1e-3)
