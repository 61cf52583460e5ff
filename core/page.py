"""The page `elman serve` shows at `/`: one panel per app, talking to the REST API.

The page is three static files shipped in the package (`elman/web/`: HTML, CSS and plain
JavaScript; no build step and no CDN, so it works on a machine without internet). Everything it
shows comes from the same `:predict` requests a TF Serving client sends, so behind a proxy that
serves these files and forwards `/v1/` it works against TF Serving too.

Besides the files, the page asks `elman serve` for its examples (they are data of elman's, not
of a SavedModel):

    GET /examples.json                 per app: example reviews and sentences, the captioning
                                       picture URLs, the number of next-frame test sequences,
                                       the beam widths the apps evaluate with
    GET /examples/captioning/N.png     synthetic test picture N (the shapes of the SMOKE and
                                       demo data)
    GET /examples/nextframe/N.json     test sequence N: `frames` and `truth`, uint8
                                       `[time][64][64]`
"""

import functools
import json
import re
from pathlib import Path

import numpy as np

STATIC_DIR = Path(__file__).parent / "web"
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".png": "image/png"}
CAPTIONING_EXAMPLES = 6
NEXTFRAME_EXAMPLES = 8
EXAMPLE_ROUTE = re.compile(r"^/examples/(?P<app>captioning|nextframe)/(?P<index>\d{1,4})"
                           r"\.(?P<kind>png|json)$")


class NotFound(Exception):
    """A page path that does not exist."""


def static_file(path):
    """`(bytes, content type)` of `/` or `/static/NAME`, or `None` for another path."""
    if path in ("/", "/index.html"):
        name = "index.html"
    elif path.startswith("/static/"):
        name = path[len("/static/"):]
        # Only the shipped files: no sub-folders, so no way out of the folder.
        if "/" in name or "\\" in name or name.startswith(".") or \
                not (STATIC_DIR / name).is_file():
            raise NotFound(f"no page file {name!r}")
    else:
        return None
    file = STATIC_DIR / name
    return file.read_bytes(), STATIC_TYPES.get(file.suffix, "application/octet-stream")


@functools.cache
def examples():
    """The examples the page offers: `/examples.json`'s value."""
    from elman.apps import get_app

    imdb, translation, captioning, nextframe = (
        get_app(name) for name in ("imdb", "translation", "captioning", "nextframe"))
    return {
        "imdb": {"reviews": list(imdb.EXAMPLES)},
        "translation": {"sentences": list(translation.EXAMPLES),
                        "beam_width": translation.Config.beam_width},
        "captioning": {"images": [f"/examples/captioning/{index}.png"
                                  for index in range(CAPTIONING_EXAMPLES)],
                       "beam_width": captioning.Config.beam_width},
        "nextframe": {"sequences": NEXTFRAME_EXAMPLES,
                      "input_frames": nextframe.Config.input_frames,
                      "output_frames": nextframe.Config.output_frames},
    }


@functools.lru_cache(maxsize=64)
def example_file(path):
    """`(bytes, content type)` of an `/examples/...` path, or `None` for another path."""
    if path == "/examples.json":
        return json.dumps(examples()).encode(), "application/json"
    match = EXAMPLE_ROUTE.match(path)
    if match is None:
        if path.startswith("/examples"):
            raise NotFound(f"no example {path!r}")
        return None
    app, index, kind = match["app"], int(match["index"]), match["kind"]
    if app == "captioning" and kind == "png" and index < CAPTIONING_EXAMPLES:
        from elman.datasets import flickr8k

        pictures, _ = flickr8k.synthetic_captions(1, seed=3, start=index)
        return flickr8k.encode_png(pictures[0]), "image/png"
    if app == "nextframe" and kind == "json" and index < NEXTFRAME_EXAMPLES:
        from elman.apps.nextframe import model as nextframe

        given, truth = nextframe.example_sequence(index)  # (1, time, 64, 64, 1) each, in [0, 1]

        def pixels(frames):
            return np.round(frames[0, ..., 0] * 255).astype(np.uint8).tolist()

        return json.dumps({"frames": pixels(given), "truth": pixels(truth)}).encode(), \
            "application/json"
    raise NotFound(f"no example {path!r}")


def respond(path):
    """`(bytes, content type)` for a page path, `None` for a path that is not the page's.

    Raises:
        NotFound: for a page path (`/static/...`, `/examples/...`) that does not exist.
    """
    return static_file(path) or example_file(path)
