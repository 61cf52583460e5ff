"""Serving the way TensorFlow Serving serves: its files (models.config, warmup records, parsed
with the real `tensorflow-serving-api` protos), `elman serve`'s REST API against the
SavedModels' own answers, bad requests, and new versions while serving."""

import base64
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from elman import export, serving, tf_serving
from elman.serving import request_value
from elman.apps import APP_MODULES, get_app
from rest_client import call

APPS = tuple(APP_MODULES)


@pytest.fixture(scope="module")
def base_dir(smoke_exports):
    return smoke_exports


@pytest.fixture(scope="module")
def server(base_dir):
    with serving.Server(base_dir, port=0, poll_seconds=0.2, max_request_bytes=2 ** 20,
                        log=lambda *args: None) as running:
        yield running


def assert_same(served, expected):
    """A JSON value equals a tensor's value (text decoded, numbers to float tolerance)."""
    expected = expected.numpy()
    if expected.dtype == object:
        decoded = np.vectorize(lambda item: item.decode("utf-8", errors="replace"),
                               otypes=[object])(expected)
        assert served == decoded.tolist()
    else:
        np.testing.assert_allclose(np.array(served, dtype=expected.dtype), expected,
                                   rtol=1e-5, atol=1e-5)


# TF Serving's files.

def test_models_config_and_batching_parameters(base_dir):
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((base_dir / tf_serving.MODELS_CONFIG).read_text(),
                               model_server_config_pb2.ModelServerConfig())
    entries = config.model_config_list.config
    assert [entry.name for entry in entries] == sorted(APPS)
    for entry in entries:
        assert entry.base_path == f"/models/{entry.name}"
        assert entry.model_platform == "tensorflow"
        assert entry.model_version_policy.latest.num_versions == 1
    # BatchingParameters is not among tensorflow-serving-api's protos: each line is one of its
    # Int64Value fields.
    lines = (base_dir / tf_serving.BATCHING_CONFIG).read_text().splitlines()
    assert lines == [f"{name} {{ value: {value} }}"
                     for name, value in tf_serving.BATCHING_PARAMETERS.items()]


@pytest.mark.parametrize("name", APPS)
def test_warmup_records_parse_and_replay_through_the_signatures(base_dir, name):
    from tensorflow_serving.apis import prediction_log_pb2

    version_dir = base_dir / name / "1"
    records = list(tf.data.TFRecordDataset(str(version_dir / tf_serving.WARMUP_FILE)))
    loaded = tf.saved_model.load(str(version_dir))
    assert len(records) == len(loaded.signatures)
    replayed = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert log.WhichOneof("log_type") == "predict_log" and request.model_spec.name == name
        signature = loaded.signatures[request.model_spec.signature_name]
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        assert set(inputs) == set(signature.structured_input_signature[1])
        outputs = signature(**inputs)
        assert all(int(tf.size(tensor)) > 0 for tensor in outputs.values())
        replayed.add(request.model_spec.signature_name)
    assert replayed == set(loaded.signatures)


# The REST API.

@pytest.mark.parametrize("name", APPS)
def test_every_signature_answers_tf_serving_json_as_the_saved_model_does(server, base_dir,
                                                                         name):
    loaded = tf.saved_model.load(str(base_dir / name / "1"))
    for signature_name, inputs in get_app(name).warmup_requests().items():
        expected = loaded.signatures[signature_name](**inputs)
        # Columnar: {"inputs": {name: value}} -> {"outputs": {name: value}}.
        status, reply = call(server, f"/v1/models/{name}:predict", {
            "signature_name": signature_name,
            "inputs": {key: request_value(value) for key, value in inputs.items()}})
        assert status == 200, reply
        outputs = reply["outputs"] if len(expected) > 1 else {
            next(iter(expected)): reply["outputs"]}  # One output: its value alone.
        for key, tensor in expected.items():
            assert_same(outputs[key], tensor)
        # Rows: {"instances": [...]} -> {"predictions": [...]}, for signatures whose inputs
        # are all batched; a scalar input (beam_width) needs the columnar format.
        scalars = [key for key, value in inputs.items() if value.shape.rank == 0]
        if len(inputs) == 1:
            rows = request_value(next(iter(inputs.values())))
        else:
            rows = [{key: request_value(value[index]) for key, value in inputs.items()
                     if key not in scalars} for index in range(len(expected[next(iter(expected))]))]
            for row in rows:
                row.update({key: request_value(inputs[key]) for key in scalars})
        status, reply = call(server, f"/v1/models/{name}/versions/1:predict",
                             {"signature_name": signature_name, "instances": rows})
        if scalars:
            assert status == 400 and f"'{scalars[0]}']: expected shape []" in reply["error"]
            continue
        assert status == 200, reply
        for key, tensor in expected.items():
            assert_same([row[key] if len(expected) > 1 else row
                         for row in reply["predictions"]], tensor)


def test_status_metadata_and_not_found(server, base_dir):
    assert call(server, "/v1/models/imdb") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                         "error_message": ""}}]})
    status, reply = call(server, "/v1/models/translation/versions/1/metadata")
    assert status == 200 and reply["model_spec"] == {"name": "translation", "signature_name": "",
                                                     "version": "1"}
    signature_defs = reply["metadata"]["signature_def"]["signature_def"]
    beam = signature_defs["beam_search"]
    assert beam["inputs"]["beam_width"]["dtype"] == "DT_INT32"
    assert beam["outputs"]["log_probability"]["dtype"] == "DT_FLOAT"
    assert beam["method_name"] == "tensorflow/serving/predict"
    for path, method, body in (("/v1/models/nothing", None, None),
                               ("/v1/models/nothing:predict", "POST", {"instances": ["a"]}),
                               ("/v1/models/imdb/versions/7", None, None),
                               ("/v1/models/imdb/versions/7:predict", "POST", {"instances": ["a"]}),
                               ("/v1/models/imdb/labels/stable", None, None),
                               ("/v2/anything", None, None)):
        status, reply = call(server, path, body, method)
        assert status == 404 and reply["error"], (path, reply)


REVIEW = {"instances": ["A fine film."]}
# (model, body, the HTTP status, what the message must say)
BAD_REQUESTS = [
    ("imdb", b"", 400, "JSON Parse error"),
    ("imdb", b'{"instances": [', 400, "JSON Parse error"),
    ("imdb", b'{"instances": ["\xff\xfe"]}', 400, "JSON Parse error"),
    ("imdb", b"[]", 400, "JSON object"),
    ("imdb", {"instances": []}, 400, "non-empty list"),
    ("imdb", {"instances": [1, 2]}, 400, "'review'"),
    ("imdb", {"instances": [["a", "b"]]}, 400, "'review']: expected shape [?]"),
    ("imdb", {"inputs": {"review": "a"}}, 400, "'review']: expected shape [?]"),
    ("imdb", {"inputs": {"text": ["a"]}}, 400, "unknown: ['text']"),
    ("imdb", {"instances": ["a"], "inputs": ["a"]}, 400, "exactly one of"),
    ("imdb", {"signature_name": "other", "instances": ["a"]}, 400, "signature_name"),
    ("imdb", {"instances": [{"b64": "not base64!"}]}, 400, "b64"),
    ("imdb", {"instances": [{"b64": 7}]}, 400, "b64"),
    ("imdb", {"examples": ["a"]}, 400, "unknown fields ['examples']"),
    ("imdb", b'{"instances": ["' + b"long " * 300000 + b'"]}', 413, "limit"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": 0}}, 400,
     "beam_width must be at least 1"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": 2.5}}, 400,
     "'beam_width']: expected integers"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": "4"}}, 400, "'beam_width']"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": 2 ** 40}}, 400,
     "int32's range"),
    ("translation", {"signature_name": "beam_search", "inputs": {"sentence": ["Hi."]}}, 400,
     "missing: ['beam_width']"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": None}}, 400, "'beam_width']"),
    ("translation", {"signature_name": "beam_search",
                     "inputs": {"sentence": ["Hi."], "beam_width": True}}, 400,
     "'beam_width']: expected numbers"),
    ("nextframe", {"inputs": {"frames": [[[[0.5]]]], "num_frames": 2}}, 400,
     "'frames']: expected shape [?, ?, 64, 64, 1]"),
    ("nextframe", {"inputs": {"frames": np.full((1, 2, 64, 64, 1), 3.0).tolist(),
                              "num_frames": 2}}, 400, "frames must be in [0, 1]"),
    ("nextframe", b'{"inputs": {"num_frames": 2, "frames": '
     + json.dumps(np.full((1, 2, 64, 64, 1), 0.5).tolist()).replace("0.5", "NaN", 1).encode()
     + b"}}", 400, "frames must be in [0, 1]"),
    ("nextframe", {"inputs": {"frames": np.zeros((1, 2, 64, 64, 1)).tolist(),
                              "num_frames": 0}}, 400, "num_frames must be at least 1"),
    ("nextframe", {"inputs": {"frames": [np.zeros((1, 64, 64, 1)).tolist(),
                                         np.zeros((1, 63, 64, 1)).tolist()],
                              "num_frames": 1}}, 400, "ragged"),
    ("nextframe", {"inputs": {"frames": "frames", "num_frames": 1}}, 400, "'frames']"),
    ("captioning", {"signature_name": "beam_search",
                    "inputs": {"image_bytes": [{"b64": ""}], "beam_width": 99}}, 400,
     "beam_width must be at most 16"),
]


def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server):
    _, good = call(server, "/v1/models/imdb:predict", REVIEW)
    for name, body, status, message in BAD_REQUESTS:
        got, reply = call(server, f"/v1/models/{name}:predict", body, "POST")
        assert (got, set(reply)) == (status, {"error"}), (name, body if len(str(body)) < 200
                                                         else "...", reply)
        assert message in reply["error"], reply
        assert call(server, "/v1/models/imdb:predict", REVIEW) == (200, good)
    # Not errors: invalid UTF-8 (as b64), an empty review and a long one are answered.
    status, reply = call(server, "/v1/models/imdb:predict", {"instances": [
        {"b64": base64.b64encode(b"\xff\xfe bad bytes").decode()}, "", "word " * 50000]})
    assert status == 200 and all(0 <= row["probability"] <= 1 for row in reply["predictions"])


def test_bad_images_cost_the_good_images_nothing(server):
    from elman.datasets import flickr8k

    pictures, _ = flickr8k.synthetic_captions(2, seed=3)
    png = flickr8k.encode_png(pictures[0])
    jpeg = tf.io.encode_jpeg(pictures[1], quality=95).numpy()
    images = [png, jpeg[:len(jpeg) // 2], b"GIF89a", jpeg, png[:100], b""]

    def caption(batch):
        status, reply = call(server, "/v1/models/captioning:predict", {"instances": [
            {"b64": base64.b64encode(image).decode()} for image in batch]})
        assert status == 200, reply
        return reply["predictions"]

    mixed = caption(images)
    assert [row["valid"] for row in mixed] == [True, False, False, True, False, False]
    assert [row["caption"] for row in caption([png, jpeg])] == [mixed[0]["caption"],
                                                                mixed[3]["caption"]]
    assert mixed[0]["caption"] and not any(row["caption"] for row in mixed if not row["valid"])


def test_a_new_version_is_served_once_complete_and_never_before(base_dir, tmp_path):
    app_dir = tmp_path / "saved_models" / "imdb"
    shutil.copytree(base_dir / "imdb", app_dir)
    loaded = tf.saved_model.load(str(app_dir / "1"))
    with serving.Server(app_dir.parent, port=0, poll_seconds=0.2, log=lambda *args: None) as server:
        _watch_versions(server, app_dir, loaded)


def _watch_versions(server, app_dir, loaded):

    def served_version():
        return call(server, "/v1/models/imdb")[1]["model_version_status"][0]["version"]

    def wait_for(version, seconds=60):
        deadline = time.monotonic() + seconds
        while served_version() != version and time.monotonic() < deadline:
            time.sleep(0.1)
        return served_version()

    # A copy under way (no saved_model.pb yet), and one whose saved_model.pb came first.
    shutil.copytree(app_dir / "1" / "variables", app_dir / "2" / "variables")
    (app_dir / "3").mkdir()
    (app_dir / "3" / "saved_model.pb").write_bytes((app_dir / "1" / "saved_model.pb")
                                                  .read_bytes()[:1000])
    time.sleep(1.0)  # Five polls.
    assert served_version() == "1"
    assert call(server, "/v1/models/imdb:predict", REVIEW)[0] == 200
    # The copy completes: version 3 is served, whole.
    shutil.rmtree(app_dir / "3")
    shutil.copytree(app_dir / "1", app_dir / ".incoming")
    os.rename(app_dir / ".incoming", app_dir / "3")
    assert wait_for("3") == "3"
    status, reply = call(server, "/v1/models/imdb/versions/3:predict", REVIEW)
    expected = loaded.signatures["serving_default"](review=tf.constant(REVIEW["instances"]))
    assert status == 200
    assert_same([row["probability"] for row in reply["predictions"]], expected["probability"])
    # elman's export: the next version, atomic.
    model = get_app("imdb").build_model(get_app("imdb").SMOKE,
                                        get_app("imdb").load_data(get_app("imdb").SMOKE))
    assert export.export(get_app("imdb"), model, app_dir.parent).name == "4"
    assert wait_for("4") == "4"


def test_elman_serve_runs_until_stopped(base_dir, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "elman.cli", "serve", "--base-dir", str(base_dir), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        deadline, url = time.monotonic() + 120, None
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            assert line, "elman serve ended before it served"
            if "REST API at http://" in line:
                url = line.split("REST API at ")[1].split()[0]
        assert url and url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(urllib.request.Request(
                url + "/v1/models/imdb:predict", data=json.dumps(REVIEW).encode()),
                timeout=60) as response:
            probability = json.loads(response.read())["predictions"][0]["probability"]
        assert 0 <= probability <= 1 and not math.isnan(probability)
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()


def test_a_sequence_out_of_range_costs_the_others_nothing(server, base_dir):
    request = get_app("nextframe").warmup_requests()["serving_default"]
    frames = request["frames"].numpy()  # (2, 10, 64, 64, 1)
    expected = tf.saved_model.load(str(base_dir / "nextframe" / "1")).signatures[
        "serving_default"](**request)["predicted_frames"].numpy()
    body = json.dumps({"inputs": {"frames": frames.tolist(), "num_frames": 10}})
    # The first sequence's first pixel (black) becomes NaN, as a JSON client may write it.
    assert frames[0, 0, 0, 0, 0] == 0.0 and '"frames": [[[[[0.0]' in body
    body = body.replace('"frames": [[[[[0.0]', '"frames": [[[[[NaN]', 1)
    status, reply = call(server, "/v1/models/nextframe:predict", body.encode())
    assert status == 200, reply
    assert reply["outputs"]["valid"] == [False, True]
    np.testing.assert_allclose(np.array(reply["outputs"]["predicted_frames"][1]), expected[1],
                               atol=1e-5)
    assert not np.array(reply["outputs"]["predicted_frames"][0]).any()


def test_a_short_load_run_has_no_errors_and_serves_a_new_version_whole(base_dir, tmp_path):
    """benchmarks/serving_load.py, bounded: 4 clients for 4 s per app, every answer checked
    against the SavedModel's, and a version written halfway through IMDB's run."""
    copy = tmp_path / "saved_models"
    shutil.copytree(base_dir, copy)
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "serving_load.py")
    subprocess.run([sys.executable, script, "--apps", "imdb", "captioning", "--clients", "4",
                    "--seconds", "4", "--export-during", "imdb", "--base-dir", str(copy),
                    "--json", str(tmp_path / "load.json")], check=True, timeout=600,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    results = {result["app"]: result for result in
               json.loads((tmp_path / "load.json").read_text())}
    for result in results.values():
        assert result["http"]["requests"] > 4 and result["http"]["errors"] == 0, result
        assert result["in_process"]["errors"] == 0 and result["one_client"]["http"]["errors"] == 0
    assert results["imdb"]["new_version"]["version"] == 2
    assert results["imdb"]["new_version"]["served_after_s"] < 4


def test_a_busy_port_is_a_one_line_error(tmp_path, capsys):
    import socket

    from elman.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--base-dir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"elman: error: cannot listen on 127.0.0.1:{port} (")
    assert "pick another --port" in error and len(error.strip().splitlines()) == 1
