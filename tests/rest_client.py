"""A minimal REST client of `elman serve` for the tests (urllib, bounded in time)."""

import json
import urllib.error
import urllib.request


def call(server, path, body=None, method=None):
    """`(HTTP status, JSON reply)`; `body` is JSON-encoded unless it is bytes."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def predict(server, model, signature_name, inputs):
    """The columnar `:predict` answer's `outputs`, or an AssertionError with the server's error."""
    status, reply = call(server, f"/v1/models/{model}:predict",
                         {"signature_name": signature_name, "inputs": inputs})
    assert status == 200, reply
    return reply["outputs"]
