"""Datasets of the elman applications.

Each module reads its real dataset from a local copy under the data directory (the `--data-dir`
flag or the `ELMAN_DATA_DIR` environment variable), downloads it from the canonical place when the
copy is missing and a network is there, and otherwise falls back to a small sample shipped in
`elman/datasets/samples/` (or a synthetic generator), so that every app runs out of the box.
"""

import os
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
