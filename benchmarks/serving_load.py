"""Load on `elman serve`: concurrent clients on loopback, per app, beside the same requests
through the SignatureDefs in process (no HTTP), so that the server's own cost is visible.

Starts `elman serve` on a free port of 127.0.0.1 as a child process, then for each app runs
`--clients` client threads for `--seconds` (each on its own keep-alive connection, one example
per request, TF Serving's columnar JSON), checks every answer against what
`tf.saved_model.load` gives for the same input (an answer that differs is an error), and
reports requests/s, p50/p99 latency and errors; then the same with the signature called
directly by as many threads; then one client alone, through the server and in process (the
latency a single user sees). With `--export-during APP`, a new version of APP is written
halfway through (copied under a hidden name and renamed into place, as `elman export` does):
the run reports when it was served, and every answer before and after must still be right.

    elman demo                      # or elman export APP: saved_models/APP/<version>/
    python benchmarks/serving_load.py [--apps imdb translation nextframe captioning]
        [--base-dir saved_models] [--clients 16] [--seconds 30] [--export-during imdb]
        [--json FILE]

The requests are those of benchmarks/serving_latency.py (test reviews of the shipped sample,
sentences of the Anki sample, 10 frames of moving shapes, synthetic or Flickr8k images).
"""

import argparse
import gc
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from serving_latency import REQUESTS  # noqa: E402

from elman import export  # noqa: E402
from elman.serving import request_value  # noqa: E402


def same(reply, expected):
    """Whether a columnar reply equals the signature's outputs (text exactly, numbers to
    float tolerance)."""
    outputs = reply["outputs"] if len(expected) > 1 else {next(iter(expected)): reply["outputs"]}
    for name, tensor in expected.items():
        value = np.asarray(tensor.numpy())
        if value.dtype == object:
            if outputs[name] != [item.decode("utf-8", errors="replace")
                                 for item in value.reshape(-1)]:
                return False
        elif not np.allclose(np.array(outputs[name], dtype=value.dtype), value, rtol=1e-4,
                             atol=1e-4):
            return False
    return True


def start_server(base_dir):
    """`elman serve` on a free port; returns `(process, host, port)`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "elman.cli", "serve", "--base-dir", str(base_dir), "--port", "0",
         "--poll-seconds", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if "REST API at http://" in line:
            address = line.split("REST API at http://")[1].split()[0]
            host, port = address.rsplit(":", 1)
            # Keep reading its output, so that the pipe never fills up and blocks the server.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, host, int(port)
    process.kill()
    raise RuntimeError("elman serve did not start")


def served_version(host, port, name):
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("GET", f"/v1/models/{name}")
        return int(json.loads(connection.getresponse().read())["model_version_status"][0]
                   ["version"])
    finally:
        connection.close()


def run_clients(clients, seconds, send):
    """`clients` threads calling `send(index)` until `seconds` have passed; returns
    `(latencies in ms, errors, requests/s)`."""
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.monotonic() + seconds

    def client(number):
        state = {}
        index = number
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                problem = send(index, state)
            except Exception as error:  # Any failure is counted, and the client goes on.
                problem = f"{type(error).__name__}: {error}"
                state.clear()
            elapsed = 1e3 * (time.perf_counter() - started)
            with lock:
                latencies.append(elapsed)
                if problem:
                    errors.append(problem)
            index += clients

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return np.array(latencies), errors, len(latencies) / (time.monotonic() - started)


def export_new_version(app_dir):
    """Copies the newest version under a hidden name and renames it into place, as
    `elman export` writes; returns the new version."""
    newest = export.versions(app_dir)[-1]
    temporary = app_dir / f".tmp-{newest + 1}-load"
    shutil.copytree(app_dir / str(newest), temporary)
    os.rename(temporary, app_dir / str(newest + 1))
    return newest + 1


def measure(name, args, host, port):
    loaded, version = export.load_saved_model(name, args.base_dir)
    signature = loaded.signatures["serving_default"]
    requests, _, description = REQUESTS[name](64)
    bodies = [json.dumps({"inputs": {key: request_value(value)
                                     for key, value in request.items()}})
              for request in requests]
    expected = [signature(**request) for request in requests]
    gc.freeze()  # As elman serve does: no collector pauses over the loaded model's objects.

    def send(index, state):
        if "connection" not in state:
            state["connection"] = http.client.HTTPConnection(host, port, timeout=60)
        connection = state["connection"]
        connection.request("POST", f"/v1/models/{name}:predict", bodies[index % len(bodies)],
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        reply = json.loads(response.read())
        if response.status != 200:
            return f"HTTP {response.status}: {reply}"
        if not same(reply, expected[index % len(expected)]):
            return "an answer differs from the SavedModel's"
        return None

    swap = {}
    if args.export_during == name:
        def swap_version():
            time.sleep(args.seconds / 2)
            swap["written"] = time.monotonic()
            swap["version"] = export_new_version(Path(args.base_dir) / name)
            while time.monotonic() < swap["written"] + 60:
                if served_version(host, port, name) == swap["version"]:
                    swap["served_after_s"] = time.monotonic() - swap["written"]
                    return
                time.sleep(0.05)
        swapper = threading.Thread(target=swap_version, daemon=True)
        swapper.start()
    latencies, errors, rate = run_clients(args.clients, args.seconds, send)
    if args.export_during == name:
        swapper.join(timeout=120)

    def direct(index, state):
        signature(**requests[index % len(requests)])

    direct_latencies, direct_errors, direct_rate = run_clients(args.clients,
                                                               min(args.seconds, 10), direct)
    # One request at a time: the latency a single user sees, with and without HTTP.
    alone = {}
    for way, function in (("http", send), ("in_process", direct)):
        latencies_alone, errors_alone, _ = run_clients(1, min(args.seconds, 10), function)
        alone[way] = {"p50_ms": float(np.percentile(latencies_alone, 50)),
                      "p99_ms": float(np.percentile(latencies_alone, 99)),
                      "errors": len(errors_alone)}
    result = {
        "app": name, "version": version, "requests": description, "clients": args.clients,
        "seconds": args.seconds, "http": {
            "requests": len(latencies), "requests_per_s": rate, "errors": len(errors),
            "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "first_errors": errors[:3]},
        "in_process": {
            "requests_per_s": direct_rate, "errors": len(direct_errors),
            "p50_ms": float(np.percentile(direct_latencies, 50)),
            "p99_ms": float(np.percentile(direct_latencies, 99))},
        "one_client": alone,
    }
    if args.export_during == name:
        result["new_version"] = {key: swap.get(key) for key in ("version", "served_after_s")}
    print(f"{name}: {args.clients} clients, {args.seconds} s ({description}):\n"
          f"  elman serve: {rate:.0f} requests/s, p50 {result['http']['p50_ms']:.2f} ms, "
          f"p99 {result['http']['p99_ms']:.2f} ms, {len(errors)} errors of {len(latencies)}"
          + (f" (first: {errors[0]})" if errors else "") + "\n"
          f"  in process:  {direct_rate:.0f} requests/s, p50 "
          f"{result['in_process']['p50_ms']:.2f} ms, p99 {result['in_process']['p99_ms']:.2f} ms\n"
          f"  one client:  elman serve p50 {alone['http']['p50_ms']:.2f} ms, p99 "
          f"{alone['http']['p99_ms']:.2f} ms ({alone['http']['errors']} errors); in process p50 "
          f"{alone['in_process']['p50_ms']:.2f} ms, p99 {alone['in_process']['p99_ms']:.2f} ms",
          flush=True)
    if "new_version" in result:
        print(f"  version {swap.get('version')} written halfway: served "
              f"{swap.get('served_after_s', float('nan')):.2f} s after its rename, "
              + ("no answer lost or wrong" if not errors else "with errors"), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", nargs="+", default=list(REQUESTS), choices=list(REQUESTS))
    parser.add_argument("--base-dir", type=Path, default=Path("saved_models"))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--export-during", choices=list(REQUESTS),
                        help="write a new version of this app halfway through its run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 600:
        parser.error("--clients must be 1-64 and --seconds in (0, 600]")
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs", flush=True)
    process, host, port = start_server(args.base_dir)
    try:
        results = [measure(name, args, host, port) for name in args.apps]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
