"""English-Spanish sentence pairs from the Tatoeba Project, as packaged by manythings.org/anki.

`spa-eng/spa.txt` holds 118,964 lines `<English>\\t<Spanish>`, ordered roughly from short to long;
the same English sentence often appears on several lines with different Spanish translations.
Attribution: www.manythings.org/anki and tatoeba.org (CC BY 2.0 FR).

Where it is read from, in order:

1. `<data_dir>/anki/spa-eng.zip` (the layout of the project's shared data folder), or
   `<data_dir>/spa-eng.zip`, or the extracted `<data_dir>/spa-eng/spa.txt`;
2. the canonical archive, downloaded into `<data_dir>` (needs a network);
3. with no data directory at all, the copy shipped with elman (the same file, xz-compressed).
"""

import hashlib
import io
import lzma
import zipfile
from pathlib import Path

from elman.datasets import SAMPLES_DIR, resolve_data_dir

URL = "http://storage.googleapis.com/download.tensorflow.org/data/spa-eng.zip"
MEMBER = "spa-eng/spa.txt"
SHIPPED_FILE = SAMPLES_DIR / "anki_spa_eng.tsv.xz"


def _parse(text, origin):
    """`[(english, spanish), ...]` from the tab-separated text of `spa.txt`."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            raise ValueError(f"{origin}, line {number}: expected '<English>\\t<Spanish>', "
                             f"received {line[:80]!r}")
        pairs.append((columns[0].strip(), columns[1].strip()))
    return pairs


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        if MEMBER not in archive.namelist():
            raise ValueError(f"{path} does not contain {MEMBER}; it holds "
                             f"{archive.namelist()[:5]}")
        return _parse(io.TextIOWrapper(archive.open(MEMBER), encoding="utf-8").read(),
                      f"{path}:{MEMBER}")


def _download(data_dir):
    """Downloads the canonical archive into `data_dir`; returns its path."""
    import keras

    return Path(keras.utils.get_file("spa-eng.zip", URL, cache_dir=str(data_dir),
                                     cache_subdir="."))


def load_anki(data_dir=None, download=True):
    """Loads all English-Spanish pairs in file order.

    Args:
        data_dir: the data directory; defaults to `$ELMAN_DATA_DIR`. With neither, the copy
            shipped with elman is read.
        download: whether to fetch the canonical archive when no local copy is found.

    Returns:
        A dict `{"pairs": [(english, spanish), ...], "source": str}`.

    Raises:
        FileNotFoundError: when a data directory is set but holds no copy and the download
            failed; the message says where to put the file.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        with lzma.open(SHIPPED_FILE, "rt", encoding="utf-8") as file:
            pairs = _parse(file.read(), SHIPPED_FILE.name)
        return {"pairs": pairs, "source": f"the copy shipped with elman ({SHIPPED_FILE.name})"}
    for path in (root / "anki" / "spa-eng.zip", root / "spa-eng.zip"):
        if path.is_file():
            return {"pairs": _read_zip(path), "source": str(path)}
    text_file = root / "spa-eng" / "spa.txt"
    if text_file.is_file():
        return {"pairs": _parse(text_file.read_text(encoding="utf-8"), str(text_file)),
                "source": str(text_file)}
    problem = "download=False"
    if download:
        try:
            path = _download(root)
            return {"pairs": _read_zip(path), "source": str(path)}
        except Exception as error:  # Any failure of the network or the archive.
            problem = f"downloading {URL} failed ({type(error).__name__}: {error})"
    raise FileNotFoundError(
        f"the Anki English-Spanish pairs were not found under {root}: expected "
        f"{root / 'anki' / 'spa-eng.zip'} (the archive from {URL}) or {text_file}; {problem}. "
        "Put the file there, or unset ELMAN_DATA_DIR (and --data-dir) to use the copy shipped "
        "with elman.")


def split_by_source(pairs, key, validation_fraction, test_fraction):
    """Splits pairs so that every pair with the same source sentence lands in the same split.

    The file repeats source sentences with different translations, so a random split of lines
    would put a test sentence's twin in train. Instead each distinct `key(pair)` (e.g. the
    standardized source sentence) goes to a split chosen by a hash of its text: deterministic,
    independent of the file's order and of the other sentences.

    Returns:
        `{"train": [...], "validation": [...], "test": [...]}`, each in file order.
    """
    if not (0 < validation_fraction and 0 < test_fraction
            and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be positive with a sum "
                         f"below 1, received {validation_fraction} and {test_fraction}")
    splits = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        digest = hashlib.sha256(key(pair).encode("utf-8")).digest()
        position = int.from_bytes(digest[:8], "big") / 2 ** 64  # Uniform in [0, 1).
        if position < test_fraction:
            splits["test"].append(pair)
        elif position < test_fraction + validation_fraction:
            splits["validation"].append(pair)
        else:
            splits["train"].append(pair)
    return splits
