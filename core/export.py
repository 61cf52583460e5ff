"""Versioned SavedModels for TensorFlow Serving, written atomically.

`export(app, model)` writes `saved_models/<app>/<version>/` with the app's named signatures and
TF Serving's warmup requests, and (re)writes `saved_models/models.config` and `batching.config`
(see `elman.tf_serving`). The SavedModel is first written under a hidden temporary name in the
same folder and renamed into place when complete: TensorFlow Serving only loads integer-named
folders, and a rename within one file system is atomic, so a half-written version is never
seen, even if the export is killed.
"""

import os
import re
import shutil
import uuid
from pathlib import Path

import keras
import tensorflow as tf

from elman import tf_serving

DEFAULT_BASE_DIR = "saved_models"


def versions(app_dir):
    """The integer versions present under `app_dir`, sorted."""
    app_dir = Path(app_dir)
    if not app_dir.is_dir():
        return []
    return sorted(int(path.name) for path in app_dir.iterdir()
                  if path.is_dir() and path.name.isdigit())


def export(app, model, base_dir=DEFAULT_BASE_DIR, version=None):
    """Exports `model` with `app.export_signatures(model)`; returns the version's path.

    Args:
        app: the app module.
        model: the trained Keras model.
        base_dir: the folder holding one folder per app. Default: `saved_models`.
        version: a positive integer; default: one more than the highest present.

    Raises:
        ValueError: when `version` is not a positive integer or already exists.
    """
    app_dir = Path(base_dir) / app.NAME
    if version is None:
        version = (versions(app_dir) or [0])[-1] + 1
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"version must be a positive integer, received version={version!r}")
    target = app_dir / str(version)
    if target.exists():
        raise ValueError(f"{target} already exists; pick another --version or leave it out "
                         "to take the next free one")
    app_dir.mkdir(parents=True, exist_ok=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # Objects the signatures use besides the model (e.g. a pretrained CNN), if the app has any.
    for dependency in getattr(app, "export_dependencies", lambda model: [])(model):
        archive.track(dependency)
    for name, function in app.export_signatures(model).items():
        archive.add_endpoint(name, function)
    temporary = app_dir / f".tmp-{version}-{uuid.uuid4().hex}"
    try:
        archive.write_out(str(temporary), verbose=False)
        tf_serving.write_warmup_requests(temporary, app.NAME, app.warmup_requests())
        os.rename(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    tf_serving.write_server_files(base_dir)
    return target


def load_saved_model(app_name, base_dir=DEFAULT_BASE_DIR, version=None):
    """Loads a version (default: the latest) with plain `tf.saved_model.load`."""
    app_dir = Path(base_dir) / app_name
    present = versions(app_dir)
    if not present:
        raise FileNotFoundError(f"no exported model under {app_dir}: run "
                                f"`elman export {app_name}` first")
    version = present[-1] if version is None else version
    if version not in present:
        raise FileNotFoundError(f"version {version} of {app_name} is not in {app_dir}; "
                                f"present: {present}")
    return tf.saved_model.load(str(app_dir / str(version))), version


def predict(app, inputs, base_dir=DEFAULT_BASE_DIR, version=None, signature="serving_default",
            **extra):
    """Runs the exported model's signature on command-line inputs; returns `(outputs, version)`.

    `extra` holds more inputs of the signature, e.g. `beam_width=4`."""
    loaded, version = load_saved_model(app.NAME, base_dir, version)
    if signature not in loaded.signatures:
        raise ValueError(f"signature must be one of {sorted(loaded.signatures)}, "
                         f"received signature={signature!r}")
    function = loaded.signatures[signature]
    request = app.prediction_request(inputs)
    for name, value in extra.items():
        request[name] = tf.constant(value, function.structured_input_signature[1][name].dtype)
    return function(**request), version


def model_error_message(error):
    """The reason a SavedModel rejected its input, from TensorFlow's error, without the graph's
    node names and frames: "beam_width must be at least 1" rather than "Graph execution
    error: ... assertion failed: [beam_width must be at least 1] [Condition x >= y ...]"."""
    lines = [line.strip() for line in str(error).splitlines()]
    reason = next((line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at", "<stack", "[["))), str(error).strip())
    reason = re.sub(r"\s*\[Op:[^\]]*\]$", "", reason)
    asserted = re.match(r"assertion failed: \[(.*?)\](?: \[Condition|$)", reason)
    return asserted.group(1) if asserted else reason
