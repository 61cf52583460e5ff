"""`elman demo`: where its data comes from (shipped, local, downloaded) and what it prints."""

import functools
import http.server
import json
import re
import threading
import zipfile

import pytest

import elman.datasets
from elman.cli import main
from elman.datasets import anki, imdb


@pytest.fixture
def no_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv(elman.datasets.DATA_DIR_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def archive_server(tmp_path):
    """A loopback HTTP server of the files in `tmp_path / "served"`; yields its base URL."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_network_problem_names_the_host_that_did_not_answer():
    # Port 9 (discard) on loopback: nothing listens there, the connection is refused at once.
    problem = elman.datasets.network_problem("127.0.0.1", 9, timeout=2)
    assert problem.startswith("no network (127.0.0.1:9 did not answer")


def test_download_without_a_network_says_so_in_one_line_and_uses_the_shipped_data(
        no_data_dir, monkeypatch, capsys):
    monkeypatch.setattr(elman.datasets, "network_problem", lambda: "no network (test)")
    assert main(["demo", "--apps", "imdb", "--preset", "smoke", "--download"]) == 0
    printed = capsys.readouterr().out
    assert [line for line in printed.splitlines() if "no network" in line] == [
        "[elman] demo: no download, no network (test): using the shipped data"]
    assert "imdb: the smoke preset on the data elman ships or generates" in printed


def test_download_fetches_the_canonical_archive_through_the_loader(
        no_data_dir, archive_server, monkeypatch, tmp_path, capsys):
    url, folder = archive_server
    pairs = [(f"I see {number} cats.", f"Veo {number} gatos.") for number in range(300)]
    with zipfile.ZipFile(folder / "spa-eng.zip", "w") as archive:
        archive.writestr(anki.MEMBER, "\n".join(f"{e}\t{s}" for e, s in pairs) + "\n")
    monkeypatch.setattr(elman.datasets, "network_problem", lambda: None)
    monkeypatch.setattr(anki, "URL", url + "spa-eng.zip")
    data_dir = tmp_path / "data"
    assert main(["demo", "--apps", "translation", "--preset", "smoke", "--download",
                 "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert (data_dir / "spa-eng.zip").is_file()
    assert f"translation: the smoke preset on the real data ({data_dir})" in printed
    assert f"data from {data_dir / 'spa-eng.zip'} (eng-spa: " in printed


def test_a_failed_download_costs_only_its_own_app_the_real_data(
        no_data_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(elman.datasets, "network_problem", lambda: None)
    monkeypatch.setattr(imdb, "URL", "http://127.0.0.1:9/aclImdb_v1.tar.gz")
    assert main(["demo", "--apps", "imdb", "--preset", "smoke", "--download",
                 "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "[elman] imdb: using the shipped data, as the real data could not be read or " \
           "downloaded: " in printed
    assert "downloading http://127.0.0.1:9/aclImdb_v1.tar.gz failed" in printed
    assert "test accuracy" in printed


def test_the_demo_learns_every_app_and_ends_with_a_summary(no_data_dir, tmp_path, capsys):
    """The README's main command, as a new user runs it: every app's demo model beats its
    trivial baseline, and the summary names the result, the export and what to look at."""
    assert main(["demo"]) == 0
    printed = capsys.readouterr().out

    def report(name):
        return json.loads((tmp_path / "runs" / f"{name}-demo" / "evaluation.json").read_text())

    # IMDB: 80% on the sample's 1,000 held-out reviews (chance is 50%), and the two example
    # reviews on their side by a clear margin.
    assert report("imdb")["accuracy"] >= 0.8
    probabilities = [float(p) for p in re.findall(r"p\(positive\)=([0-9.]+)", printed)]
    assert len(probabilities) == 2 and probabilities[0] > 0.7 and probabilities[1] < 0.3
    # Its predictions file: the test reviews, the most confident mistakes first.
    rows = [line.split("\t") for line in (tmp_path / "runs" / "imdb-demo" / "predictions.tsv")
            .read_text(encoding="utf-8").splitlines()[1:]]
    assert len(rows) == 1000 and rows[0][2] == "wrong" and rows[-1][2] == "right"
    # Translation: non-empty translations, far above copying the source, and mostly right: the
    # demo reached BLEU 52.7, 33% of the test sentences as a reference, 57% within one word.
    translation = report("translation")["report"]
    beam = f"beam{translation['beam_width']}"
    assert translation[beam]["bleu"] >= 40 > translation["copy_source"]["bleu"] + 30
    assert translation[beam]["chrf"] >= translation["copy_source"]["chrf"] + 40
    assert translation[beam]["within_one_word"] >= 50 and translation[beam]["exact"] >= 25
    assert "% within one word (beam4)" in printed
    translations = (tmp_path / "runs" / "translation-demo" / "translations.tsv").read_text(
        encoding="utf-8").splitlines()[1:]
    assert all(line.split("\t")[2] and line.split("\t")[3] for line in translations)
    # Next-frame: better than copying the last frame on MSE and SSIM.
    frames = report("nextframe")["report"]
    assert frames["model"]["mse"] < frames["copy_last_frame"]["mse"]
    assert frames["model"]["ssim"] > frames["copy_last_frame"]["ssim"]
    # Captioning: better than giving each image another image's caption.
    captions = report("captioning")["report"]
    beam = next(key for key in captions if key.startswith("beam"))
    assert captions[beam]["bleu4"] > captions["other_images"]["bleu4"] + 5

    # Progress: which app, and the time left, estimated from the measured demo.
    assert "=== 1/4 imdb: the demo preset on the data elman ships or generates" in printed
    assert re.search(r"=== 2/4 translation: .*\(\d+ s so far, about \d+ s left\)", printed)
    summary = printed[printed.index("=== summary: 4 apps in"):]
    for name, picture in (("imdb", "predictions.tsv"), ("translation", "translations.tsv"),
                          ("nextframe", "predictions.gif"), ("captioning", "contact_sheet.html")):
        entry = summary[summary.index(f"\n{name} ("):]
        assert f"SavedModel:  saved_models/{name}/1" in entry
        assert (tmp_path / "saved_models" / name / "1" / "saved_model.pb").is_file()
        assert f"try:         elman predict {name} " in entry
        look_at = next(line for line in entry.splitlines() if line.startswith("  look at:"))
        assert f"runs/{name}-demo/{picture}" in look_at
    assert f"result:      test accuracy {report('imdb')['accuracy']:.1%}" in summary
    assert "baseline:    one label for every review: 50.0%" in summary
    assert "serve them with TF Serving's REST API: elman serve, then" in summary
