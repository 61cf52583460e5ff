"""Datasets of the elman applications.

Each module reads its real dataset from a local copy under the data directory (the `--data-dir`
flag or the `ELMAN_DATA_DIR` environment variable), downloads it from the canonical place when the
copy is missing and a network is there, and otherwise falls back to a small sample shipped in
`elman/datasets/samples/` (or a synthetic generator), so that every app runs out of the box.
"""

import os
import socket
from pathlib import Path

DATA_DIR_VARIABLE = "ELMAN_DATA_DIR"
SAMPLES_DIR = Path(__file__).parent / "samples"


def resolve_data_dir(data_dir=None):
    """The data directory: `data_dir` if given, else `$ELMAN_DATA_DIR`, else `None` (samples).

    Raises:
        ValueError: when the directory named does not exist.
    """
    chosen = data_dir or os.environ.get(DATA_DIR_VARIABLE) or None
    if chosen is None:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "data_dir" if data_dir else DATA_DIR_VARIABLE
        raise ValueError(f"{source} must name an existing directory, received {source}={chosen!r}")
    return path


def network_problem(host="storage.googleapis.com", port=443, timeout=5.0):
    """Why the data sets cannot be downloaded now, or `None` when `host` answers.

    One TCP connection, bounded by `timeout` seconds, to a host that serves the canonical
    archives: without a network, the loaders would otherwise each wait for their own failure.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"no network ({host}:{port} did not answer: {error})"
