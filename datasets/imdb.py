"""The IMDB Large Movie Review dataset (Maas et al., 2011): 25,000 train and 25,000 test reviews.

Where it is read from, in order:

1. `<data_dir>/imdb/imdb_{train,test}.csv.gz`: gzip CSV with the columns `id,rating,label,text`
   (the layout of the project's shared data folder);
2. `<data_dir>/aclImdb/{train,test}/{pos,neg}/*.txt`: the canonical archive, extracted;
3. the canonical archive, downloaded into `<data_dir>` and extracted (needs a network);
4. with no data directory at all, the sample shipped with elman (a few hundred real reviews).
"""

import csv
import gzip
import sys
from pathlib import Path

import numpy as np

from elman.datasets import SAMPLES_DIR, resolve_data_dir

URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
SPLITS = ("train", "test")
SAMPLE_FILE = SAMPLES_DIR / "imdb_sample.csv.gz"

csv.field_size_limit(sys.maxsize)


def _read_csv(path):
    """The rows of a gzip CSV, as dicts."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def _columns(rows):
    """`(texts, labels, review_ids, ratings)` from CSV rows with `label` and `text` columns (and
    `id` and `rating`; without them those are None)."""
    texts = [row["text"] for row in rows]
    labels = np.array([int(row["label"]) for row in rows], dtype="int32")
    review_ids = ratings = None
    if rows and "id" in rows[0]:
        review_ids = np.array([int(row["id"]) for row in rows], dtype="int64")
    if rows and "rating" in rows[0]:
        ratings = np.array([int(row["rating"]) for row in rows], dtype="int32")
    return texts, labels, review_ids, ratings


def _read_folder(root, split):
    """Reads `(texts, labels, review_ids, ratings)` from
    `aclImdb/<split>/{neg,pos}/<id>_<rating>.txt` in sorted file order."""
    texts, labels, review_ids, ratings = [], [], [], []
    for label, polarity in enumerate(("neg", "pos")):
        for path in sorted((root / split / polarity).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
            review_id, rating = path.stem.split("_")[:2]
            review_ids.append(int(review_id))
            ratings.append(int(rating))
    return (texts, np.array(labels, dtype="int32"), np.array(review_ids, dtype="int64"),
            np.array(ratings, dtype="int32"))


def _splits(read, source):
    """`{"train": (texts, labels), "test": ..., "review_ids": {...}, "ratings": {...},
    "source": ...}` from `read(split) -> (texts, labels, review_ids, ratings)`."""
    splits = {split: read(split) for split in SPLITS}
    return {**{split: (texts, labels) for split, (texts, labels, _, _) in splits.items()},
            "review_ids": {split: ids for split, (_, _, ids, _) in splits.items()},
            "ratings": {split: ratings for split, (_, _, _, ratings) in splits.items()},
            "source": source}


def _download(data_dir):
    """Downloads and extracts the canonical archive into `data_dir`; returns the `aclImdb` root."""
    import keras

    archive = keras.utils.get_file("aclImdb_v1.tar.gz", URL, cache_dir=str(data_dir),
                                   cache_subdir=".", extract=True)
    for candidate in (Path(archive), Path(archive) / "aclImdb", data_dir / "aclImdb"):
        if (candidate / "train" / "pos").is_dir():
            return candidate
    raise FileNotFoundError(f"the archive from {URL} did not contain aclImdb/train/pos")


def load_imdb(data_dir=None, download=True):
    """Loads the official IMDB split.

    Args:
        data_dir: the data directory; defaults to `$ELMAN_DATA_DIR`. With neither, the shipped
            sample is returned.
        download: whether to fetch the canonical archive when no local copy is found.

    Returns:
        A dict `{"train": (texts, labels), "test": (texts, labels), "review_ids": {"train": ids,
        "test": ids}, "ratings": {"train": ratings, "test": ratings}, "source": str}`: texts a
        list of `str`, labels an `int32` array (0 negative, 1 positive), ids the `int64` review
        ids and ratings the `int32` star ratings (1-4 negative, 7-10 positive) of the original
        file names, both None for the shipped sample. Within a label, reviews of one movie have
        consecutive ids.

    Raises:
        FileNotFoundError: when a data directory is set but holds no copy and the download
            failed; the message says where to put the files.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        rows = _read_csv(SAMPLE_FILE)  # Both splits in one file, with a `split` column.
        return _splits(lambda split: _columns([row for row in rows if row["split"] == split]),
                       f"the sample shipped with elman ({SAMPLE_FILE.name})")
    csv_paths = {split: root / "imdb" / f"imdb_{split}.csv.gz" for split in SPLITS}
    if all(path.is_file() for path in csv_paths.values()):
        return _splits(lambda split: _columns(_read_csv(csv_paths[split])), str(root / "imdb"))
    folder = root / "aclImdb"
    if not (folder / "train" / "pos").is_dir():
        problem = "download=False"
        if download:
            try:
                folder = _download(root)
                problem = None
            except Exception as error:  # Any failure of the network or the archive.
                problem = f"downloading {URL} failed ({type(error).__name__}: {error})"
        if problem is not None:
            raise FileNotFoundError(
                f"IMDB was not found under {root}: expected {csv_paths['train']} and "
                f"{csv_paths['test']} (gzip CSV with columns id,rating,label,text), or the "
                f"folder {folder}/ extracted from {URL}; {problem}. Put the files there, or "
                f"unset ELMAN_DATA_DIR (and --data-dir) to use the shipped sample.")
    return _splits(lambda split: _read_folder(folder, split), str(folder))
