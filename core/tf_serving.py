"""TensorFlow Serving's own files beside the exported SavedModels.

- `saved_models/models.config`: a `ModelServerConfig` text proto listing every exported app
  (base path inside the `tensorflow/serving` container, newest version served);
- `saved_models/batching.config`: `BatchingParameters` for `--enable_batching`;
- `<version>/assets.extra/tf_serving_warmup_requests`: a TFRecord file of `PredictionLog`
  records, real example requests for every signature, which TF Serving replays when it loads a
  version, so that the first user's request does not pay for the model's first run.

The users' command (the README shows it with `curl`):

    docker run -p 8501:8501 -v "$PWD/saved_models:/models" tensorflow/serving \\
        --model_config_file=/models/models.config \\
        --enable_batching --batching_parameters_file=/models/batching.config

The warmup records are `tensorflow.serving.PredictionLog` messages. The package that defines
them, `tensorflow-serving-api`, requires the full `tensorflow` wheel, which would install a
second TensorFlow over `tensorflow-cpu`; elman declares instead the four messages it writes,
with the field numbers of `tensorflow_serving/apis/{prediction_log,predict,model}.proto` (the
wire format is what TF Serving reads), and the tests parse what it writes with the real
`tensorflow-serving-api` protos.
"""

import functools
import os
import uuid
from pathlib import Path

import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# Where `docker run -v "$PWD/saved_models:/models"` puts the base directory.
CONTAINER_BASE_PATH = "/models"
# TF Serving's server-side batching: up to 32 requests' examples run as one batch, waiting at
# most 2 ms for companions; 2 threads, one per core of the machines measured.
BATCHING_PARAMETERS = {"max_batch_size": 32, "batch_timeout_micros": 2000,
                       "num_batch_threads": 2, "max_enqueued_batches": 100}


@functools.cache
def _wire_messages():
    """`{name: class}` of ModelSpec, PredictRequest, PredictLog and PredictionLog, with the
    field numbers of TF Serving's protos (a package of elman's own, so that they never clash
    with the real ones when both are imported)."""
    file = descriptor_pb2.FileDescriptorProto(
        name="elman/tf_serving_wire.proto", package="elman.tf_serving_wire", syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name])
    field = descriptor_pb2.FieldDescriptorProto
    string, message = field.TYPE_STRING, field.TYPE_MESSAGE
    prefix = ".elman.tf_serving_wire."

    def add(proto, fields):
        for name, number, kind, type_name, label in fields:
            proto.field.add(name=name, number=number, type=kind, type_name=type_name,
                            label=label)
        return proto

    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    add(file.message_type.add(name="ModelSpec"),
        [("name", 1, string, None, one), ("signature_name", 3, string, None, one)])
    request = add(file.message_type.add(name="PredictRequest"), [
        ("model_spec", 1, message, prefix + "ModelSpec", one),
        # map<string, TensorProto>: repeated entries of a nested key-value message.
        ("inputs", 2, message, prefix + "PredictRequest.InputsEntry", many)])
    entry = add(request.nested_type.add(name="InputsEntry"), [
        ("key", 1, string, None, one), ("value", 2, message, ".tensorflow.TensorProto", one)])
    entry.options.map_entry = True
    add(file.message_type.add(name="PredictLog"),
        [("request", 1, message, prefix + "PredictRequest", one)])
    add(file.message_type.add(name="PredictionLog"),
        [("predict_log", 6, message, prefix + "PredictLog", one)])
    pool = descriptor_pool.Default()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"elman.tf_serving_wire.{name}"))
        for name in ("ModelSpec", "PredictRequest", "PredictLog", "PredictionLog")}


def prediction_log(model_name, signature_name, inputs):
    """One warmup record: a serialized `PredictionLog` holding a `PredictRequest`.

    Args:
        model_name: the model's name in `models.config` (the app's name).
        signature_name: the signature the request calls.
        inputs: `{input name: tensor or array}`.
    """
    messages = _wire_messages()
    log = messages["PredictionLog"]()
    request = log.predict_log.request
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(
            value.numpy() if isinstance(value, tf.Tensor) else value))
    return log.SerializeToString()


def write_warmup_requests(version_dir, model_name, requests):
    """Writes `version_dir/assets.extra/tf_serving_warmup_requests`.

    Args:
        requests: `{signature name: inputs}`, each inputs a dict of tensors.

    Returns:
        The file's path.
    """
    path = Path(version_dir) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature_name, inputs in requests.items():
            writer.write(prediction_log(model_name, signature_name, inputs))
    return path


def _write_atomically(path, text):
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(text)
    os.replace(temporary, path)


def models_config(names, base_path=CONTAINER_BASE_PATH):
    """The text of a `ModelServerConfig`: one `model_config` per model name, read from
    `base_path/NAME`, the newest version served (TF Serving's default policy, spelled out)."""
    entries = "".join(
        f"  config {{\n    name: \"{name}\"\n    base_path: \"{base_path}/{name}\"\n"
        "    model_platform: \"tensorflow\"\n"
        "    model_version_policy { latest { num_versions: 1 } }\n  }\n"
        for name in names)
    return f"model_config_list {{\n{entries}}}\n"


def batching_config(parameters=None):
    """The text of a `BatchingParameters` proto (each field an Int64Value)."""
    parameters = parameters or BATCHING_PARAMETERS
    return "".join(f"{name} {{ value: {value} }}\n" for name, value in parameters.items())


def write_server_files(base_dir, base_path=CONTAINER_BASE_PATH):
    """(Re)writes `models.config` for every app with an exported version under `base_dir`,
    and `batching.config`; returns their paths."""
    from elman.export import versions

    base_dir = Path(base_dir)
    names = sorted(path.name for path in base_dir.iterdir()
                   if path.is_dir() and versions(path))
    config_path, batching_path = base_dir / MODELS_CONFIG, base_dir / BATCHING_CONFIG
    _write_atomically(config_path, models_config(names, base_path))
    _write_atomically(batching_path, batching_config())
    return config_path, batching_path
