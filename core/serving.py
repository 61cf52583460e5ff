"""`elman serve`: TensorFlow Serving's REST API over `saved_models/`, for trying the exports.

The same requests a client sends to the `tensorflow/serving` image work here unchanged:

    POST /v1/models/NAME[/versions/N]:predict     {"instances": [...]} or {"inputs": ...},
                                                  optional "signature_name"
    GET  /v1/models/NAME[/versions/N]             the version's status
    GET  /v1/models/NAME[/versions/N]/metadata    its signature defs
    GET  /                                        a page to try the models (`elman.page`)

Binary strings (image bytes) travel as `{"b64": "..."}`; errors come back as
`{"error": "..."}` with HTTP 400 for bad input and 404 for an unknown model or version.

The models are the SavedModels alone, loaded with `tf.saved_model.load` and called through
their signatures, as TF Serving runs them: no elman code runs inside a request. Like TF
Serving's default version policy, the newest version of each model is served; a poller loads a
new version as soon as it is complete (elman's exports appear in one atomic rename) and swaps
it in only once it has loaded, so a half-written version is never served.

The HTTP layer is Werkzeug's threaded WSGI server (Werkzeug comes with TensorBoard): one thread
per connection, bound to 127.0.0.1 unless told otherwise, requests larger than a limit refused.
It is for trying models and testing clients on one machine; production serving is TF Serving.
"""

import base64
import gc
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from elman import page
from elman.export import model_error_message, versions

DEFAULT_PORT = 8501  # TF Serving's REST port.
DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024
ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                   r"(?:/labels/(?P<label>[^/:]+))?(?P<rest>/metadata|:[a-zA-Z]+)?$")


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# Models.

class Servable:
    """One loaded version of a model: its signatures and their SignatureDefs."""

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, Path(path)
        self.loaded = tf.saved_model.load(str(path))
        self.signatures = dict(self.loaded.signatures)
        saved_model = saved_model_pb2.SavedModel.FromString(
            (self.path / "saved_model.pb").read_bytes())
        self.signature_defs = dict(saved_model.meta_graphs[0].signature_def)

    def input_specs(self, signature_name):
        """`{input name: tf.TensorSpec}` of a signature."""
        return self.signatures[signature_name].structured_input_signature[1]


def _complete_versions(model_dir):
    """The versions under `model_dir` whose `saved_model.pb` is there (a copy by other means than
    `elman export` may still be under way)."""
    return [version for version in versions(model_dir)
            if (model_dir / str(version) / "saved_model.pb").is_file()]


class ModelRepository:
    """The newest version of every model under `base_dir`, kept current by `poll()`.

    Args:
        base_dir: the folder of one folder per model (`saved_models`).
        log: where messages about loading go.
    """

    def __init__(self, base_dir, log=print):
        self.base_dir = Path(base_dir)
        self.log = log
        self._servables = {}
        self._failed = set()  # (name, version) pairs that failed to load, said once.
        self._lock = threading.Lock()

    def poll(self):
        """Loads every model's newest complete version that is not loaded yet; returns the
        `(name, version)` pairs loaded."""
        loaded = []
        if not self.base_dir.is_dir():
            return loaded
        for model_dir in sorted(path for path in self.base_dir.iterdir() if path.is_dir()):
            present = _complete_versions(model_dir)
            current = self._servables.get(model_dir.name)
            if not present or (current and current.version >= present[-1]):
                continue
            newest = present[-1]
            key = (model_dir.name, newest)
            try:
                servable = Servable(model_dir.name, newest, model_dir / str(newest))
            except Exception as error:  # A broken or unfinished copy must not stop the others.
                # Tried again at every poll (a copy may still be under way), said once.
                if key not in self._failed:
                    self.log(f"[elman] serve: cannot load {model_dir / str(newest)} yet "
                             f"(still serving the version before): {type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}")
                self._failed.add(key)
                continue
            with self._lock:
                self._servables[model_dir.name] = servable
            # A loaded model is a large graph of Python objects that lives as long as it is
            # served; frozen, the garbage collector stops scanning it, which otherwise stalls a
            # request now and then (250 ms pauses with next-frame's 40,960-number inputs).
            gc.freeze()
            loaded.append(key)
            self.log(f"[elman] serve: serving {model_dir.name} version {newest} "
                     f"(signatures: {', '.join(sorted(servable.signatures))})")
        return loaded

    def names(self):
        with self._lock:
            return sorted(self._servables)

    def get(self, name, version=None):
        """The servable of `name` (and `version`, if given), or a 404 `RequestError`."""
        with self._lock:
            servable = self._servables.get(name)
        if servable is None:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        if version is not None:
            if not version.isdigit():
                raise RequestError(f"Malformed request: version must be an integer, received "
                                   f"{version!r}", 400)
            if int(version) != servable.version:
                raise RequestError(f"Servable not found for request: Specific({name}, "
                                   f"{version}); version {servable.version} is served", 404)
        return servable


# JSON <-> tensors, as TF Serving's REST API converts them.

def _decode_strings(value, where):
    """JSON strings and `{"b64": ...}` objects (at any depth of lists) -> bytes."""
    if isinstance(value, list):
        return [_decode_strings(item, where) for item in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(f"{where}: a binary value must be {{\"b64\": \"<base64>\"}}, "
                               f"received an object with keys {sorted(value)}")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError) as error:
            raise RequestError(f"{where}: the b64 value is not valid base64 ({error})")
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogatepass")
    raise RequestError(f"{where}: expected a string or {{\"b64\": ...}}, received "
                       f"{type(value).__name__} {json.dumps(value)[:40]}")


def to_tensor(value, spec, where):
    """A JSON value -> a tensor of `spec`'s dtype and a compatible shape, or a clear error."""
    try:
        if spec.dtype == tf.string:
            array = np.array(_decode_strings(value, where), dtype=object)
        else:
            array = np.array(value)
            if array.dtype == object:  # Rows of different lengths, or nulls among numbers.
                raise ValueError("ragged")
            # JSON numbers become int64 or float64 arrays; strings, booleans and nulls do not.
            if array.dtype.kind not in "iuf":
                raise RequestError(f"{where}: expected numbers of type {spec.dtype.name}, "
                                   f"received {json.dumps(value)[:60]}")
            if spec.dtype.is_integer:
                if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
                    raise RequestError(f"{where}: expected integers ({spec.dtype.name}), "
                                       "received a fraction or a non-finite number")
                info = np.iinfo(spec.dtype.as_numpy_dtype)
                if array.size and (array.min() < info.min or array.max() > info.max):
                    raise RequestError(f"{where}: values must be within {spec.dtype.name}'s "
                                       f"range [{info.min}, {info.max}]")
            array = array.astype(spec.dtype.as_numpy_dtype)
    except ValueError:
        raise RequestError(f"{where}: expected a rectangular array of {spec.dtype.name} "
                           "numbers; the nested lists are ragged (rows of different lengths) "
                           "or hold something else")
    if array.dtype == object and array.ndim and any(
            not isinstance(item, bytes) for item in array.reshape(-1)):
        raise RequestError(f"{where}: the nested lists are ragged (every row must have the "
                           "same length)")
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(f"{where}: expected shape {_shape(spec.shape)} ({spec.dtype.name}), "
                           f"received shape {list(array.shape)}")
    return tf.constant(array, dtype=spec.dtype)


def _shape(shape):
    return "[" + ", ".join("?" if size is None else str(size) for size in shape.as_list()) + "]"


def to_json(tensor, name):
    """A tensor -> JSON values: strings as text (or `{"b64": ...}` for outputs whose name ends
    in `_bytes`, as TF Serving does), numbers as numbers."""
    array = tensor.numpy() if isinstance(tensor, tf.Tensor) else tensor
    if array.dtype == object:
        if name.endswith("_bytes"):
            encode = np.vectorize(lambda item: {"b64": base64.b64encode(item).decode()},
                                  otypes=[object])
        else:
            encode = np.vectorize(lambda item: item.decode("utf-8", errors="replace"),
                                  otypes=[object])
        return encode(array).tolist() if array.ndim else encode(array).item()
    return array.tolist()


def request_value(tensor):
    """A tensor as a TF Serving client writes it in a request's JSON: numbers as numbers, UTF-8
    text as text, other bytes (images) as `{"b64": ...}`. For tests, benchmarks and clients."""
    array = np.asarray(tensor.numpy() if isinstance(tensor, tf.Tensor) else tensor)
    if array.dtype.kind not in "SO":
        return array.tolist()

    def one(item):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(item).decode()}

    if not array.ndim:
        return one(array.item())
    return np.vectorize(one, otypes=[object])(array.astype(object)).tolist()


def _named_inputs(value, specs, where):
    """The inputs of one row (an instance) or of the columnar "inputs": `{name: value}`."""
    if isinstance(value, dict) and not (set(value) == {"b64"} and len(specs) == 1):
        unknown = sorted(set(value) - set(specs))
        missing = sorted(set(specs) - set(value))
        if unknown or missing:
            raise RequestError(f"{where}: the signature's inputs are {sorted(specs)}; "
                               + (f"unknown: {unknown}" if unknown else f"missing: {missing}"))
        return value
    if len(specs) != 1:
        raise RequestError(f"{where}: the signature takes several inputs ({sorted(specs)}): "
                           "give an object of them by name")
    return {next(iter(specs)): value}


def parse_predict_request(body, servable):
    """A `:predict` request's JSON body -> `(signature_name, inputs, row_format)`."""
    if not isinstance(body, dict):
        raise RequestError("the request must be a JSON object with \"instances\" or \"inputs\"")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise RequestError(f"unknown fields {unknown}: expected \"signature_name\" and one of "
                           "\"instances\" or \"inputs\"")
    signature_name = body.get("signature_name", "serving_default")
    if not isinstance(signature_name, str) or signature_name not in servable.signatures:
        raise RequestError(f"signature_name: {servable.name} has the signatures "
                           f"{sorted(servable.signatures)}, received {signature_name!r}")
    specs = servable.input_specs(signature_name)
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("the request must have exactly one of \"instances\" (rows) and "
                           "\"inputs\" (columns)")
    if "inputs" in body:
        named = _named_inputs(body["inputs"], specs, "inputs")
        return signature_name, {name: to_tensor(value, specs[name], f"inputs[{name!r}]")
                                for name, value in named.items()}, False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError("instances: expected a non-empty list of rows")
    rows = [_named_inputs(row, specs, f"instances[{index}]")
            for index, row in enumerate(instances)]
    columns = {name: [row[name] for row in rows] for name in specs}
    return signature_name, {name: to_tensor(values, specs[name], f"instances[*][{name!r}]")
                            for name, values in columns.items()}, True


def format_predict_response(outputs, row_format):
    """Signature outputs -> TF Serving's response: `{"predictions": rows}` or
    `{"outputs": columns}` (a single output unwrapped in both, as TF Serving does)."""
    columns = {name: to_json(tensor, name) for name, tensor in outputs.items()}
    if not row_format:
        return {"outputs": next(iter(columns.values())) if len(columns) == 1 else columns}
    sizes = {name: len(value) if isinstance(value, list) else None
             for name, value in columns.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise RequestError(f"the outputs have different batch sizes {sizes}: use the columnar "
                           "\"inputs\" format for this signature")
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    count = next(iter(sizes.values()))
    return {"predictions": [{name: value[index] for name, value in columns.items()}
                            for index in range(count)]}


def predict(servable, body):
    """Runs one `:predict` request; returns the response's JSON value."""
    signature_name, inputs, row_format = parse_predict_request(body, servable)
    try:
        outputs = servable.signatures[signature_name](**inputs)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError, ValueError,
            TypeError) as error:
        raise RequestError(f"{signature_name}: {model_error_message(error)}")
    return format_predict_response(outputs, row_format)


def status(servable):
    return {"model_version_status": [{"version": str(servable.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def metadata(servable):
    signature_defs = {name: json_format.MessageToDict(signature_def,
                                                      preserving_proto_field_name=True)
                      for name, signature_def in servable.signature_defs.items()}
    return {"model_spec": {"name": servable.name, "signature_name": "",
                           "version": str(servable.version)},
            "metadata": {"signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signature_def": signature_defs}}}


# HTTP.

class RestApplication:
    """The WSGI application of TF Serving's REST API over a `ModelRepository`."""

    def __init__(self, repository, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
        self.repository = repository
        self.max_request_bytes = max_request_bytes

    def page(self, request):
        """The page at `/`, its files and its examples (`elman.page`)."""
        try:
            found = page.respond(request.path)
        except page.NotFound as error:
            found = None
            message = str(error)
        else:
            message = f"Malformed request: GET {request.path} (the page is at /)"
        if found is None:
            return Response(json.dumps({"error": message}), status=404,
                            mimetype="application/json")
        content, content_type = found
        # The examples are computed once per process; the page's files may change with an
        # upgrade, so the browser asks again each time (small files, from the local disk).
        return Response(content, content_type=content_type,
                        headers={"Cache-Control": "no-cache"})

    def respond(self, request):
        match = ROUTE.match(request.path)
        if match is None:
            raise RequestError(f"Malformed request: {request.method} {request.path}", 404)
        if match["label"] is not None:
            raise RequestError(f"Servable not found for request: label {match['label']!r} "
                               "(elman serve has no version labels; use /versions/N)", 404)
        servable = self.repository.get(match["name"], match["version"])
        rest = match["rest"]
        if request.method == "GET" and rest in (None, "/metadata"):
            return metadata(servable) if rest else status(servable)
        if request.method == "POST" and rest == ":predict":
            # Werkzeug refuses a body over `max_content_length` before reading it (413).
            data = request.get_data(cache=False)
            try:
                body = json.loads(data)
            except (ValueError, UnicodeDecodeError) as error:
                raise RequestError(f"JSON Parse error: {error}")
            return predict(servable, body)
        if request.method == "POST" and rest in (":classify", ":regress"):
            raise RequestError(f"{rest[1:]} is not served: the models have predict signatures; "
                               "use :predict", 400)
        raise RequestError(f"Malformed request: {request.method} {request.path}", 404)

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.max_content_length = self.max_request_bytes
        if request.method == "GET" and not request.path.startswith("/v1/"):
            return self.page(request)(environ, start_response)
        try:
            body, code = self.respond(request), 200
        except RequestError as error:
            body, code = {"error": str(error)}, error.status
        except RequestEntityTooLarge:
            body, code = {"error": f"the request is larger than the limit of "
                                   f"{self.max_request_bytes} bytes"}, 413
        response = Response(json.dumps(body), status=code, mimetype="application/json")
        return response(environ, start_response)


class _QuietHandler(WSGIRequestHandler):
    """No line per request on the console (TF Serving logs none either); errors still are."""

    def log_request(self, *args, **kwargs):
        pass


class Server:
    """`elman serve`: the REST application on a threaded HTTP server, with a poller thread
    that loads new versions.

    Args:
        base_dir: `saved_models`.
        host, port: where to listen (port 0: a free one, see `.port`).
        poll_seconds: how often to look for new versions (TF Serving's default is 1 s).
        max_request_bytes: the largest request body accepted.

    Example:

    ```python
    with Server("saved_models", port=0) as server:
        print(server.url)  # http://127.0.0.1:PORT
    ```
    """

    def __init__(self, base_dir, host="127.0.0.1", port=DEFAULT_PORT, poll_seconds=1.0,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, log=print):
        self.repository = ModelRepository(base_dir, log)
        # The port first: a busy one fails at once, before any model is loaded. The socket is
        # bound here, as Werkzeug would end the process on an error of its own binding.
        try:
            listening = socket.create_server((host, port))
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port} ({error.strerror or error}): "
                             "pick another --port (0: any free one) or --host") from error
        with listening:
            self.http = make_server(host, port,
                                    RestApplication(self.repository, max_request_bytes),
                                    threaded=True, request_handler=_QuietHandler,
                                    fd=listening.fileno())
        self.repository.poll()
        self.poll_seconds = poll_seconds
        self.port = self.http.port  # Werkzeug reads it from the socket (port 0: the one chosen)
        self.url = f"http://{host}:{self.port}"
        self._stopped = threading.Event()
        self._threads = []

    def _poll_forever(self):
        while not self._stopped.wait(self.poll_seconds):
            self.repository.poll()

    def start(self):
        """Serves in background threads; returns self."""
        for target in (self.http.serve_forever, self._poll_forever):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self._stopped.set()
        self.http.shutdown()
        self.http.server_close()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def serve(base_dir, host="127.0.0.1", port=DEFAULT_PORT, poll_seconds=1.0,
          max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
    """Runs the server until interrupted (Ctrl-C)."""
    server = Server(base_dir, host, port, poll_seconds, max_request_bytes)
    names = server.repository.names()
    print(f"[elman] serve: TF Serving's REST API at {server.url} for "
          + (", ".join(names) if names else f"no model yet (export one into {base_dir})"),
          flush=True)
    print(f"[elman] serve: try them in a browser at {server.url}/", flush=True)
    if names:
        print(f"[elman] serve: or   curl {server.url}/v1/models/{names[0]}/metadata", flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[elman] serve: stopped")
    finally:
        server.stop()
