"""Flickr8k (Hodosh et al., 2013): 8,091 images with five captions each, and the official
6,000 / 1,000 / 1,000 train / dev / test image lists; and a synthetic captioning set.

Where Flickr8k is read from, in order:

1. `<data_dir>/flickr8k/` in the layout of the project's shared data folder: the caption file
   `Flickr8k.token.txt`, the lists `Flickr_8k.{train,dev,test}Images.txt`, and the images in
   tar files `flickr8k_224_*.tar` (members `images/<file name>`);
2. the canonical archives `Flickr8k_Dataset.zip` and `Flickr8k_text.zip`, extracted under
   `<data_dir>/flickr8k/` (images in `Flicker8k_Dataset/`), downloaded if a network is there.

Without a data directory, `synthetic_captions` draws coloured shapes with exact captions ("a red
circle above a blue square"), which a correct model learns to caption perfectly.
"""

import tarfile
from pathlib import Path

import numpy as np

from elman.datasets import resolve_data_dir

DATASET_URL = "https://github.com/jbrownlee/Datasets/releases/download/Flickr8k/"
ARCHIVES = ("Flickr8k_Dataset.zip", "Flickr8k_text.zip")
CAPTIONS_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "validation": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}


def read_captions(path):
    """`{image file name: [five captions]}` from `Flickr8k.token.txt`, in file order.

    Keys without an image file (the original file's `2258277193_586949ec62.jpg.1`) are skipped.
    """
    captions = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, separator, caption = line.partition("\t")
        if not separator or "#" not in key:
            raise ValueError(f"{path}, line {number}: expected '<image>#<k>\\t<caption>', "
                             f"received {line[:80]!r}")
        name = key.split("#")[0]
        if name.endswith(".jpg"):
            captions.setdefault(name, []).append(caption.strip())
    return captions


class ImageStore:
    """Reads image bytes by file name from the tar files or an extracted image folder."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._members = {}
        for path in sorted(self.folder.glob("flickr8k_224_*.tar")):
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    if member.isfile():
                        self._members[member.name.split("/")[-1]] = path
        self._images_folder = next((candidate for candidate in
                                    (self.folder / "Flicker8k_Dataset", self.folder / "images")
                                    if candidate.is_dir()), None)

    def __contains__(self, name):
        return name in self._members or (
            self._images_folder is not None and (self._images_folder / name).is_file())

    def read_many(self, names):
        """`[bytes]` for `names`, in order; reads each tar file once."""
        found = {}
        by_archive = {}
        for name in names:
            if name in self._members:
                by_archive.setdefault(self._members[name], set()).add(name)
            elif self._images_folder is not None:
                found[name] = (self._images_folder / name).read_bytes()
        for path, wanted in by_archive.items():
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    name = member.name.split("/")[-1]
                    if name in wanted:
                        found[name] = archive.extractfile(member).read()
        missing = [name for name in names if name not in found]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images not found under {self.folder}, "
                                    f"e.g. {missing[:3]}")
        return [found[name] for name in names]


def load_flickr8k(data_dir=None, download=True):
    """The official splits: `{"train": [(image name, [captions])], "validation": ...,
    "test": ..., "images": ImageStore, "source": str}`.

    Raises:
        ValueError: without a data directory (use `synthetic_captions`).
        FileNotFoundError: when the files are missing and cannot be downloaded; the message
            says where to put them.
    """
    root = resolve_data_dir(data_dir)
    if root is None:
        raise ValueError("Flickr8k needs a data directory (--data-dir or ELMAN_DATA_DIR); "
                         "without one the captioning app uses synthetic shapes")
    folder = root / "flickr8k"
    needed = [folder / CAPTIONS_FILE, *(folder / name for name in SPLIT_FILES.values())]
    if not all(path.is_file() for path in needed) and download:
        try:
            _download(folder)
        except Exception as error:  # Any failure of the network or the archives.
            problem = f"downloading {DATASET_URL} failed ({type(error).__name__}: {error})"
        else:
            problem = None
    else:
        problem = "download=False"
    if not all(path.is_file() for path in needed):
        raise FileNotFoundError(
            f"Flickr8k was not found under {folder}: expected {', '.join(p.name for p in needed)}"
            f" and the images (flickr8k_224_*.tar or Flicker8k_Dataset/); {problem}. Put the "
            "files there, or unset ELMAN_DATA_DIR (and --data-dir) for synthetic shapes.")
    captions = read_captions(folder / CAPTIONS_FILE)
    splits = {}
    for split, file_name in SPLIT_FILES.items():
        names = (folder / file_name).read_text().split()
        splits[split] = [(name, captions[name]) for name in names]
    return {**splits, "images": ImageStore(folder), "source": str(folder)}


def _download(folder):
    import keras

    folder.mkdir(parents=True, exist_ok=True)
    for archive in ARCHIVES:
        keras.utils.get_file(archive, DATASET_URL + archive, cache_dir=str(folder),
                             cache_subdir=".", extract=True)
    for extracted in folder.rglob(CAPTIONS_FILE):  # Bring the text files to the top.
        for text in extracted.parent.glob("*.txt"):
            if not (folder / text.name).exists():
                text.rename(folder / text.name)


# Synthetic shapes with exact captions.

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
           "yellow": (235, 210, 40)}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")


def _draw(image, shape, colour, centre, radius):
    rows, columns = np.mgrid[:image.shape[0], :image.shape[1]]
    dy, dx = rows - centre[0], columns - centre[1]
    if shape == "circle":
        inside = dy ** 2 + dx ** 2 <= radius ** 2
    elif shape == "square":
        inside = (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    else:  # A triangle pointing up.
        inside = (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    image[inside] = colour


def synthetic_captions(count, seed=0, size=64, start=0):
    """`count` pictures of two coloured shapes and their one exact caption each: examples
    `start` to `start + count - 1`.

    Caption: "a <colour> <shape> <relation> a <colour> <shape>", e.g. "a red circle above a
    blue square"; the two shapes differ in colour or shape. Example `i` is a pure function of
    `(seed, i)`.

    Returns:
        `(images, captions)`: `(count, size, size, 3)` uint8 RGB on white, and a list of `str`.
    """
    images = np.full((count, size, size, 3), 255, np.uint8)
    captions = []
    radius = size // 8
    for index in range(count):
        generator = np.random.default_rng([seed, start + index])
        while True:
            first = (generator.choice(list(COLOURS)), generator.choice(SHAPES))
            second = (generator.choice(list(COLOURS)), generator.choice(SHAPES))
            if first != second:
                break
        relation = generator.choice(RELATIONS)
        near, far = generator.integers(radius + 2, size // 2 - 2), \
            generator.integers(size // 2 + radius // 2 + 2, size - radius - 2)
        across = generator.integers(radius + 2, size - radius - 2, size=2)
        # The first shape's centre, then the second's, from the relation.
        centres = {"above": ((near, across[0]), (far, across[1])),
                   "below": ((far, across[0]), (near, across[1])),
                   "left of": ((across[0], near), (across[1], far)),
                   "right of": ((across[0], far), (across[1], near))}[relation]
        for (colour, shape), centre in zip((first, second), centres):
            _draw(images[index], shape, COLOURS[colour], centre, radius)
        captions.append(f"a {first[0]} {first[1]} {relation} a {second[0]} {second[1]}")
    return images, captions


def encode_png(image):
    """PNG bytes of a `(height, width, 3)` uint8 image (with TensorFlow, no PIL needed)."""
    import tensorflow as tf

    return tf.io.encode_png(image).numpy()
