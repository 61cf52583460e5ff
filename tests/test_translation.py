"""The translation app on its shipped data: split, text, training, decoding, export, CLI."""

import dataclasses
import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import app_checks
from elman.apps import get_app
from elman.cli import main
from elman.datasets import anki
from elman.text import UNKNOWN

app = get_app("translation")

AWKWARD_SENTENCES = {
    "empty": b"",
    "500 words": b" ".join([b"the cat sat on the mat"] * 84),
    "invalid UTF-8": b"where \xff\xfe is \xc3",
    "only punctuation": b"?!... ,,",
    "non-ASCII": "¿Dónde está la estación? 駅はどこですか".encode(),
}


@pytest.fixture(scope="module")
def data():
    return app.load_data(app.SMOKE)


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(0)
    return app.build_model(app.SMOKE, data)


@pytest.fixture(scope="module")
def overfit(data):
    """A model trained on 16 pairs until it knows them: `(model, sources, targets)`."""
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, learning_rate=0.01, dropout=0.0, hidden_units=64)
    # The first validation pairs of distinct sources (one source can have several
    # translations): a fixed choice (the training split reshuffles).
    chosen, sources = [], set()
    for inputs, labels in data.validation.unbatch():
        if inputs["source"].numpy() not in sources and len(chosen) < 16:
            sources.add(inputs["source"].numpy())
            chosen.append((inputs, labels))
    chosen_pairs = tf.data.Dataset.from_generator(
        lambda: iter(chosen), output_signature=data.validation.unbatch().element_spec)
    inputs, labels = next(iter(chosen_pairs.padded_batch(16)))
    model = app.build_model(config, data)
    batch = tf.data.Dataset.from_tensors((inputs, labels))
    model.fit(batch.repeat(400), verbose=0)
    assert model.evaluate(batch, return_dict=True, verbose=0)["accuracy"] > 0.98
    return model, inputs["source"], inputs["target"]


def _sources(data, count=8):
    inputs, _ = next(iter(data.validation.unbatch().batch(count)))
    return inputs["source"]


# Data and text.

def test_split_keeps_every_test_source_out_of_train():
    pairs = anki.load_anki()["pairs"]
    assert len(pairs) == 118964 and pairs[0] == ("Go.", "Ve.")
    for direction in app.DIRECTIONS:
        config = dataclasses.replace(app.SMOKE, direction=direction)
        oriented = pairs if direction == "eng-spa" else [(s, e) for e, s in pairs]
        splits = anki.split_by_source(oriented, lambda pair: app._source_key(pair[0]),
                                      config.validation_fraction, config.test_fraction)
        train_keys = {app._source_key(source) for source, _ in splits["train"]}
        for split in ("validation", "test"):
            assert splits[split], split
            assert not {app._source_key(s) for s, _ in splits[split]} & train_keys, split
        assert sum(len(part) for part in splits.values()) == len(pairs)
    # A pair's split depends on its source sentence only, not on the rest of the file.
    moved = anki.split_by_source(pairs[::-1], lambda pair: app._source_key(pair[0]), 0.1, 0.1)
    original = anki.split_by_source(pairs, lambda pair: app._source_key(pair[0]), 0.1, 0.1)
    assert sorted(moved["test"]) == sorted(original["test"])


def test_batches_group_pairs_of_similar_length_and_keep_every_pair():
    pairs = anki.load_anki()["pairs"][::25]
    sources, targets = (list(column) for column in zip(*pairs))
    dataset = tf.data.Dataset.from_tensor_slices({"source": sources, "target": targets})

    def longer_side(batch):
        return [max(len(s.split()), len(t.split()))
                for s, t in zip(batch["source"].numpy(), batch["target"].numpy())]

    for buckets in (0, 2, 8):
        batches = list(app.batch_by_length(dataset, 16, buckets))
        seen = sorted((s, t) for batch in batches
                      for s, t in zip(batch["source"].numpy(), batch["target"].numpy()))
        assert seen == sorted((s.encode(), t.encode()) for s, t in pairs)
        assert max(len(batch["source"]) for batch in batches) == 16
    # With 8 groups, a batch's sentences lie between two of the boundaries 4, 6, 8, 11, 16, 23,
    # 32 words; in plain batches they do not.
    bounds = [0, 4, 6, 8, 11, 16, 23, 32, 10 ** 6]
    for batch in app.batch_by_length(dataset, 16, 8):
        lengths = longer_side(batch)
        assert len({next(i for i, b in enumerate(bounds) if n < b) for n in lengths}) == 1
    plain = [longer_side(batch) for batch in app.batch_by_length(dataset, 16, 0)]
    assert any(max(lengths) >= 2 * min(lengths) for lengths in plain)


def test_a_repeated_source_stays_in_one_split():
    pairs = [("I ran.", "Corrí."), ("I ran!", "Me fui corriendo."), ("i ran", "Corría.")]
    pairs += [(f"Sentence {i}.", f"Frase {i}.") for i in range(200)]
    splits = anki.split_by_source(pairs, lambda pair: app._source_key(pair[0]), 0.2, 0.2)
    holding = [name for name, part in splits.items() if ("I ran.", "Corrí.") in part]
    assert all(pair in splits[holding[0]] for pair in pairs[:3])


def test_common_words_keep_the_pairs_made_of_each_language_s_most_common_words():
    pairs = [("I see Tom.", "Veo a Tom."), ("I see.", "Ya veo."), ("Tom, see!", "¡Tom, mira!"),
             ("I see Mary.", "Veo a Mary."), ("See Tom?", "¿Ves a Tom?")]
    # English words counted by hand: "i" 3, "see" 5, "tom" 3, "." 3, "," 1, "!" 1, "mary" 1,
    # "?" 1; the 5 most common are see, i, tom, "." and "," ("," appears before "!", "mary").
    # Spanish: "veo" 3, "a" 3, "tom" 3, "." 3, "ya" 1, ... so its 5 most common are veo, a,
    # tom, "." and "ya".
    assert app.of_common_words(pairs, 5) == [("I see Tom.", "Veo a Tom."),
                                             ("I see.", "Ya veo.")]
    assert app.of_common_words(pairs, 100) == pairs
    kept = app.of_common_words(anki.load_anki()["pairs"][:3000], 300)
    data = app.load_data(dataclasses.replace(app.SMOKE, common_words=300))
    assert 0 < len(kept) < 3000
    assert f"the {len(kept):,} pairs of the 300 most common words:" in data.source
    assert len(data.source_vocabulary) <= 300 + 2  # Padding, "[UNK]" and at most 300 words.


def test_match_shares_compare_words_with_every_reference():
    assert app.word_edit_distance("a b c".split(), "a c".split()) == 1
    assert app.word_edit_distance("a b".split(), "b a".split()) == 2
    assert app.word_edit_distance([], "x y z".split()) == 3
    shares = app.match_shares(
        ["¡Te quiero!", "te amo mucho.", "yo tengo un perro", "no sé"],
        [["Te quiero."], ["Te quiero.", "Te amo."], ["Tengo un gato."], ["Lo sé."]])
    # Exact (case and punctuation aside): the first; within one word: the second (one word
    # more than "te amo") and the fourth (one word replaced); the third is two words away.
    assert shares == {"exact": 25.0, "within_one_word": 75.0}


def test_spanish_to_english_swaps_the_pairs():
    data = app.load_data(dataclasses.replace(app.SMOKE, direction="spa-eng"))
    sources = [source for source, _ in data.test_pairs]
    assert any("¿" in source or "ñ" in source or "é" in source for source in sources)
    assert "the" in data.target_vocabulary and "el" in data.source_vocabulary


def test_standardization_splits_punctuation_and_keeps_accents():
    texts = tf.constant(["¿Dónde ESTÁ el baño?", "Tom’s “car”-park, ¡ya!", "e\u0301"])
    assert app.standardize_sentence(texts).numpy().tolist() == [
        "¿ dónde está el baño ?".encode(), b"tom's car park , \xc2\xa1 ya !",
        "e\u0301".encode()]
    assert app.detokenize(app.standardize_sentence(texts[:1])).numpy()[0].decode() == \
        "¿dónde está el baño?"
    assert app.standardize_target(tf.constant(["Hola."])).numpy()[0] == b"[start] hola . [end]"


def test_teacher_forcing_never_reads_the_end_word():
    ids = tf.constant([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]])  # [start]=2, [end]=3
    inputs, labels = app.teacher_forcing(ids)
    np.testing.assert_array_equal(labels, [[5, 6, 3, 0], [7, 3, 0, 0]])
    np.testing.assert_array_equal(inputs, [[2, 5, 6, 0], [2, 7, 0, 0]])


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="direction must be one of"):
        app.load_data(dataclasses.replace(app.SMOKE, direction="eng-fra"))
    with pytest.raises(ValueError, match="common_words must be 0 .all. or positive"):
        app.load_data(dataclasses.replace(app.SMOKE, common_words=-1))
    with pytest.raises(ValueError, match="validation_fraction and test_fraction"):
        anki.split_by_source([("a", "b")], lambda pair: pair[0], 0.5, 0.6)


def test_reads_a_local_copy_and_says_where_to_put_it(tmp_path, monkeypatch):
    (tmp_path / "anki").mkdir()
    with zipfile.ZipFile(tmp_path / "anki" / "spa-eng.zip", "w") as archive:
        archive.writestr("spa-eng/spa.txt", "Go.\tVe.\nHi.\tHola.\n")
    assert anki.load_anki(tmp_path)["pairs"] == [("Go.", "Ve."), ("Hi.", "Hola.")]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(anki, "URL", (tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(FileNotFoundError, match=r"anki/spa-eng\.zip.*spa\.txt.*downloading"):
        anki.load_anki(empty)
    (empty / "spa-eng").mkdir()
    (empty / "spa-eng" / "spa.txt").write_text("no tab here\n")
    with pytest.raises(ValueError, match="line 1: expected '<English>"):
        anki.load_anki(empty)


# Training.

def test_training_step_changes_every_weight(data):
    model = app.build_model(app.SMOKE, data)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))


def test_loss_falls(data):
    model = app.build_model(dataclasses.replace(app.SMOKE, learning_rate=3e-3), data)
    history = model.fit(data.train, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[0] > losses[1] > losses[2] and losses[2] < 0.92 * losses[0]


def test_loss_and_accuracy_count_only_the_reference_words(model, data):
    inputs, labels = next(iter(data.validation))
    logits = model(inputs)
    words = labels.numpy() != 0
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    expected = float(np.sum(loss.numpy() * words) / words.sum())
    correct = (np.argmax(logits.numpy(), -1) == labels.numpy()) & words
    metrics = model.evaluate(tf.data.Dataset.from_tensors((inputs, labels)), return_dict=True,
                             verbose=0)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(correct.sum() / words.sum(), rel=1e-5)


def test_keras_round_trip(model, data, tmp_path):
    inputs, _ = next(iter(data.validation))
    app_checks.check_keras_round_trip(model, inputs, tmp_path)


# Translating.

def test_exported_overfit_model_translates_its_training_sentences(overfit, tmp_path):
    model, sources, targets = overfit
    served = app_checks.check_export_without_elman(app, model, {"sentence": sources}, tmp_path)
    translations = tf.saved_model.load(str(served)).signatures["serving_default"](
        sentence=sources)["translation"].numpy()
    # The reference as the model can write it: standardized. Rare words are [UNK], which the
    # decoder never writes, so only references without them can come back exactly.
    translator = app.Translator(model)
    expected = translator._to_text(model.get_layer("target_vectorizer")(targets)).numpy()
    writable = np.array([UNKNOWN.encode() not in reference for reference in expected])
    right = translations == expected
    assert writable.sum() >= 8 and right[writable].sum() >= writable.sum() - 1, \
        list(zip(translations, expected))
    assert not any(UNKNOWN.encode() in translation for translation in translations)


def test_beam_width_one_equals_greedy(overfit, model, data):
    for trained, sources in ((overfit[0], overfit[1]), (model, _sources(data, 16))):
        translator = app.Translator(trained)
        beam, _ = translator.beam_search(sources, 1)
        np.testing.assert_array_equal(beam.numpy(), translator.greedy(sources).numpy())


def test_beam_search_scores_are_the_model_log_probabilities(overfit):
    """The log-probability beam search reports for its translation is what the model gives that
    translation (and its "[end]") under teacher forcing."""
    model, sources, _ = overfit
    translations, log_probabilities = app.Translator(model).beam_search(sources, 4)
    app_checks.check_scores_are_teacher_forced_log_probabilities(
        model, {"source": sources, "target": translations}, "target", log_probabilities)


def test_export_signatures_and_awkward_inputs(model, data, tmp_path):
    request = {"sentence": tf.constant([*_sources(data).numpy(), *AWKWARD_SENTENCES.values()])}
    version_dir = app_checks.check_export_without_elman(app, model, request, tmp_path)
    loaded = tf.saved_model.load(str(version_dir))
    assert sorted(loaded.signatures) == ["beam_search", "serving_default"]
    default = loaded.signatures["serving_default"]
    assert list(default.structured_input_signature[1]) == ["sentence"]
    assert list(default.structured_outputs) == ["translation"]
    beam = loaded.signatures["beam_search"]
    assert sorted(beam.structured_input_signature[1]) == ["beam_width", "sentence"]
    outputs = beam(sentence=request["sentence"], beam_width=tf.constant(3))
    assert outputs["translation"].shape == (len(request["sentence"]),)
    assert np.isfinite(outputs["log_probability"].numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="beam_width must be at least 1"):
        beam(sentence=request["sentence"], beam_width=tf.constant(0))
    assert default(sentence=tf.constant([], tf.string))["translation"].shape == (0,)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"tensor sentence \[1,2\] is not compatible with expected shape \[\?\]"):
        default(sentence=tf.constant([["two", "dimensions"]]))


def test_a_gru_reference_trains_and_translates_in_the_same_pipeline(data):
    with pytest.raises(ValueError, match="recurrent_layer must have hidden_units=32 units"):
        app.build_model(app.SMOKE, data, recurrent_layer=keras.layers.GRU(8))
    model = app.build_model(app.SMOKE, data, recurrent_layer=keras.layers.GRU(32))
    assert isinstance(model.get_layer("decoder"), keras.layers.GRU)
    model.fit(data.train.take(2), verbose=0)
    translator = app.Translator(model)
    beam, _ = translator.beam_search(_sources(data), 1)
    np.testing.assert_array_equal(beam.numpy(), translator.greedy(_sources(data)).numpy())


# CLI.

def test_cli_verbs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "translation", "--preset", "smoke", "--set", "epochs=1"]) == 0
    assert main(["evaluate", "translation"]) == 0
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "reference:" in printed
    evaluation = json.loads((tmp_path / "runs" / "translation" / "evaluation.json").read_text())
    report = evaluation["report"]
    assert report["test_sources"] <= report["test_pairs"]
    for decoding in ("greedy", f"beam{app.SMOKE.beam_width}"):
        assert 0.0 <= report[decoding]["bleu"] <= 100.0 and "BLEU|" not in report[decoding]
    translations = (tmp_path / "runs" / "translation" / "translations.tsv").read_text()
    assert len(translations.splitlines()) == report["test_sources"] + 1

    assert main(["export", "translation"]) == 0
    capsys.readouterr()
    assert main(["predict", "translation", "I love you.", ""]) == 0
    assert capsys.readouterr().out.count(" -> ") == 2
    assert main(["translate", "I love you.", "--beam-width", "3"]) == 0
    assert "'I love you.' -> " in capsys.readouterr().out
    assert main(["translate", "I love you.", "--beam-width", "0"]) == 2
    assert "--beam-width must be at least 1" in capsys.readouterr().err
