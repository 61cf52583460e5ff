"""Flickr8k reading (captions, official lists, images in tar files) and the synthetic set."""

import io
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from elman.datasets import flickr8k


def write_layout(folder):
    """A tiny Flickr8k folder in the shared layout: three images, one per split (also used by
    the captioning tests)."""
    folder.mkdir(parents=True)
    lines = [f"{name}#{k}\tA dog runs number {k} ." for name in ("a.jpg", "b.jpg", "c.jpg")
             for k in range(5)] + ["2258277193_586949ec62.jpg.1#0\tNo image ."]
    (folder / flickr8k.CAPTIONS_FILE).write_text("\n".join(lines) + "\n")
    for split, name in zip(("train", "validation", "test"), ("a.jpg", "b.jpg", "c.jpg")):
        (folder / flickr8k.SPLIT_FILES[split]).write_text(name + "\n")
    with tarfile.open(folder / "flickr8k_224_all.tar", "w") as archive:
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            data = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(len(name), tf.uint8))).numpy()
            member = tarfile.TarInfo(f"images/{name}")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))


def test_reads_the_shared_layout(tmp_path):
    write_layout(tmp_path / "flickr8k")
    data = flickr8k.load_flickr8k(tmp_path, download=False)
    assert [name for name, _ in data["train"]] == ["a.jpg"]
    assert data["test"][0][1] == [f"A dog runs number {k} ." for k in range(5)]
    assert "c.jpg" in data["images"] and "2258277193_586949ec62.jpg.1" not in data["images"]
    images = data["images"].read_many(["c.jpg", "a.jpg"])
    assert tf.io.decode_jpeg(images[0]).shape == (8, 8, 3)
    with pytest.raises(FileNotFoundError, match="1 images not found"):
        data["images"].read_many(["z.jpg"])


def test_missing_files_and_bad_lines_are_clear_errors(tmp_path):
    tmp_path.joinpath("flickr8k").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Flickr8k\.token\.txt.*download=False"):
        flickr8k.load_flickr8k(tmp_path, download=False)
    (tmp_path / "bad.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        flickr8k.read_captions(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="needs a data directory"):
        flickr8k.load_flickr8k()


def test_synthetic_captions_describe_their_pictures():
    images, captions = flickr8k.synthetic_captions(40, seed=3)
    again, same = flickr8k.synthetic_captions(40, seed=3)
    np.testing.assert_array_equal(images, again)
    assert captions == same and len(set(captions)) > 20
    for image, caption in zip(images, captions):
        words = caption.split()
        first, second = words[1], words[-2]
        relation = " ".join(words[3:-3])
        centres = []
        for colour in (first, second):
            mask = np.all(image == flickr8k.COLOURS[colour], axis=-1)
            assert mask.sum() > 10, caption
            centres.append(np.argwhere(mask).mean(axis=0))
        if first == second:
            continue  # Same colour: the centres mix both shapes.
        (row_1, column_1), (row_2, column_2) = centres
        assert {"above": row_1 < row_2, "below": row_1 > row_2, "left of": column_1 < column_2,
                "right of": column_1 > column_2}[relation], caption
    assert tf.io.decode_png(flickr8k.encode_png(images[0])).shape == (64, 64, 3)


def test_synthetic_examples_can_be_drawn_from_any_index():
    images, captions = flickr8k.synthetic_captions(5, seed=2)
    tail_images, tail_captions = flickr8k.synthetic_captions(2, seed=2, start=3)
    np.testing.assert_array_equal(tail_images, images[3:])
    assert tail_captions == captions[3:]
