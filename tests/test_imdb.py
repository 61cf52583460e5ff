"""The IMDB app on its shipped sample: shared checks, robustness, data sources, CLI verbs."""

import argparse
import csv
import dataclasses
import gzip
import importlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import app_checks
from elman import training
from elman.apps import get_app
from elman.cli import main
from elman.datasets import imdb as imdb_data

app = get_app("imdb")

AWKWARD_REVIEWS = {
    "empty": b"",
    "one word": b"terrible",
    "one megabyte": b"good " * 210_000,
    "non-ASCII": "¡Qué película tan maravillosa! 素晴らしい映画 ÉTÉ".encode(),
    "invalid UTF-8": b"great \xff\xfe movie \xc3",
    "only punctuation": b"!!! ??? <br /><br />",
}


@pytest.fixture(scope="module")
def data():
    return app.load_data(app.SMOKE)


@pytest.fixture(scope="module")
def model(data):
    keras.utils.set_random_seed(0)
    return app.build_model(app.SMOKE, data)


def _reviews(data, count=8):
    texts, _ = next(iter(data.validation.unbatch().batch(count)))
    return texts


def test_sample_splits(data):
    train = sum(int(batch[1].shape[0]) for batch in data.train)
    validation = sum(int(batch[1].shape[0]) for batch in data.validation)
    test = sum(int(batch[1].shape[0]) for batch in data.test)
    # The sample: 300 training reviews, of which validation_fraction (10%) are held out, and 200
    # test reviews.
    assert (train, validation, test) == (270, 30, 200)
    assert validation == round(300 * app.SMOKE.validation_fraction)
    assert "sample" in data.source
    assert data.vocabulary[:2] == ["", "[UNK]"] and len(data.vocabulary) == app.SMOKE.vocabulary_size


@pytest.mark.parametrize("layers", [1, 2])
def test_training_step_changes_every_weight(data, layers):
    model = app.build_model(dataclasses.replace(app.SMOKE, recurrent_layers=layers), data)
    recurrent = [layer for layer in model.layers if isinstance(layer, keras.layers.Bidirectional)]
    assert len(recurrent) == layers
    # Stacked, the second layer reads the first one's states in both directions.
    assert recurrent[-1].forward_layer.cell.kernel.shape == (
        (app.SMOKE.embedding_dim if layers == 1 else 2 * app.SMOKE.hidden_units),
        app.SMOKE.hidden_units)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))


def test_stacked_reference_layers_are_fresh_copies(data):
    config = dataclasses.replace(app.SMOKE, recurrent_layers=2)
    model = app.build_model(config, data, recurrent_layer=keras.layers.SimpleRNN(
        5, return_sequences=True, name="simple"))
    first, second = [layer for layer in model.layers
                     if isinstance(layer, keras.layers.Bidirectional)]
    assert first.forward_layer is not second.forward_layer
    assert second.forward_layer.cell.kernel.shape == (10, 5)


def test_learning_rate_decays_along_a_cosine_and_survives_saving(data, tmp_path):
    config = dataclasses.replace(app.SMOKE, learning_rate=2e-3, learning_rate_decay_epochs=2)
    model = app.build_model(config, data)
    steps = 2 * sum(1 for _ in data.train)
    for step in (0, steps // 4, steps // 2, steps, 2 * steps):
        model.optimizer.iterations.assign(step)
        expected = 2e-3 * 0.5 * (1 + np.cos(np.pi * min(step, steps) / steps))
        assert float(model.optimizer.learning_rate) == pytest.approx(expected, abs=1e-9), step
    assert expected == 0
    restored = app_checks.check_keras_round_trip(model, _reviews(data), tmp_path)
    restored.optimizer.iterations.assign(steps // 2)
    assert float(restored.optimizer.learning_rate) == pytest.approx(1e-3)


def test_keras_round_trip(model, data, tmp_path):
    app_checks.check_keras_round_trip(model, _reviews(data), tmp_path)


def test_export_serves_without_elman(model, data, tmp_path):
    request = {"review": tf.constant([*_reviews(data).numpy(), *AWKWARD_REVIEWS.values()])}
    version_dir = app_checks.check_export_without_elman(app, model, request, tmp_path)
    loaded = tf.saved_model.load(str(version_dir))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["review"]
    assert sorted(signature.structured_outputs) == ["label", "probability"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"tensor review \[\] is not compatible with expected shape \[\?\]"):
        signature(review=tf.constant("a scalar review"))


@pytest.mark.parametrize("name", sorted(AWKWARD_REVIEWS))
def test_awkward_reviews_give_a_probability(model, name):
    outputs = app.export_signatures(model)["serving_default"](
        tf.constant([AWKWARD_REVIEWS[name]]))
    probability = outputs["probability"].numpy()
    assert probability.shape == (1,) and np.isfinite(probability).all()
    assert 0.0 <= probability[0] <= 1.0
    assert outputs["label"].numpy()[0] in (b"positive", b"negative")


def test_standardize_review():
    cleaned = app.standardize_review(tf.constant(["Great<br />MOVIE!!", "ÉTÉ, café", "\xff"
                                                  .encode("latin-1")]))
    assert [text.decode() for text in cleaned.numpy()] == ["great movie ", "été café", " "]
    kept = app.standardize_review_keeping_marks(tf.constant(["Great<br />MOVIE!!", "Why?!? No."]))
    assert [text.decode() for text in kept.numpy()] == ["great movie ! ", "why ? no "]


def test_keeping_marks_puts_them_in_the_vocabulary():
    config = dataclasses.replace(app.SMOKE, keep_marks=True)
    vocabulary = app.load_data(config).vocabulary
    assert "!" in vocabulary and "?" in vocabulary
    assert "!" not in app.load_data(app.SMOKE).vocabulary


def test_learns_the_sample(data):
    """Without dropout the model fits the 240 sample reviews: loss falls, accuracy climbs."""
    keras.utils.set_random_seed(0)
    config = dataclasses.replace(app.SMOKE, learning_rate=0.01, dropout=0.0,
                                 embedding_dropout=0.0, word_dropout=0.0)
    model = app.build_model(config, data)
    history = model.fit(data.train, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.9


# Data sources.

def _write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "rating", "label", "text"])
        writer.writerows(rows)


def test_reads_a_local_copy_in_the_shared_csv_layout(tmp_path):
    _write_csv(tmp_path / "imdb" / "imdb_train.csv.gz", [(1, 9, 1, "good, film"), (2, 2, 0, "bad")])
    _write_csv(tmp_path / "imdb" / "imdb_test.csv.gz", [(3, 8, 1, "nice")])
    splits = imdb_data.load_imdb(tmp_path)
    assert splits["train"][0] == ["good, film", "bad"]
    assert splits["train"][1].tolist() == [1, 0]
    assert splits["test"][0] == ["nice"]
    assert splits["review_ids"]["train"].tolist() == [1, 2]
    assert splits["ratings"]["train"].tolist() == [9, 2]
    assert splits["ratings"]["test"].tolist() == [8]


def test_reads_the_canonical_aclimdb_folder(tmp_path):
    for split, polarity, name, text in [("train", "pos", "0_9.txt", "loved it"),
                                        ("train", "neg", "1_2.txt", "hated it"),
                                        ("test", "pos", "2_8.txt", "fine"),
                                        ("test", "neg", "3_1.txt", "awful")]:
        folder = tmp_path / "aclImdb" / split / polarity
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    splits = imdb_data.load_imdb(tmp_path, download=False)
    assert splits["train"][0] == ["hated it", "loved it"]
    assert splits["train"][1].tolist() == [0, 1]
    assert splits["review_ids"]["train"].tolist() == [1, 0]
    assert splits["review_ids"]["test"].tolist() == [3, 2]
    assert splits["ratings"]["train"].tolist() == [2, 9]
    assert splits["ratings"]["test"].tolist() == [1, 8]


def test_validation_holds_out_the_last_ids_of_each_label():
    # Two labels with ids 0-9 each, shuffled as in a file; ids of one movie are consecutive.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    review_ids = np.tile(np.arange(10), 2)
    order = rng.permutation(20)
    labels, review_ids = labels[order], review_ids[order]
    train, validation = app.validation_indices(labels, review_ids, 0.2, seed=0)
    held_out = sorted(zip(labels[validation].tolist(), review_ids[validation].tolist()))
    assert held_out == [(0, 8), (0, 9), (1, 8), (1, 9)]
    assert sorted([*train, *validation]) == list(range(20))
    # Without ids (the shipped sample): a seeded random share, the same for the same seed.
    _, first = app.validation_indices(labels, None, 0.25, seed=3)
    _, second = app.validation_indices(labels, None, 0.25, seed=3)
    assert len(first) == 5 and first.tolist() == second.tolist()
    with pytest.raises(ValueError, match="validation_fraction must leave reviews in both"):
        app.validation_indices(labels, review_ids, 0.01, seed=0)


def test_missing_data_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setattr(imdb_data, "URL", (tmp_path / "nowhere.tar.gz").as_uri())
    with pytest.raises(FileNotFoundError, match=r"imdb_train\.csv\.gz.*aclImdb.*downloading"):
        imdb_data.load_imdb(tmp_path)
    monkeypatch.setenv("ELMAN_DATA_DIR", str(tmp_path / "does-not-exist"))
    with pytest.raises(ValueError, match="ELMAN_DATA_DIR must name an existing directory"):
        imdb_data.load_imdb()


def test_rating_targets_move_milder_ratings_toward_one_half():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    ratings = np.array([1, 2, 3, 4, 7, 8, 9, 10])
    targets = app.rating_targets(labels, ratings, 0.3)
    np.testing.assert_allclose(targets, [0, 0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 1], atol=1e-6)
    np.testing.assert_array_equal(app.rating_targets(labels, ratings, 0.0), labels)
    with pytest.raises(ValueError, match=r"ratings must be 1-4 .*received \[5\]"):
        app.rating_targets(np.array([0]), np.array([5]), 0.3)
    with pytest.raises(ValueError, match="rating_smoothing must be in"):
        app.rating_targets(labels, ratings, 0.5)


def test_rating_smoothing_trains_on_soft_targets_and_counts_their_labels(tmp_path):
    rows = [(i, rating, int(rating > 5), f"review {i} " + ("good" if rating > 5 else "bad"))
            for i, rating in enumerate([1, 4, 7, 10] * 5)]
    _write_csv(tmp_path / "imdb" / "imdb_train.csv.gz", rows)
    _write_csv(tmp_path / "imdb" / "imdb_test.csv.gz", rows[:4])
    config = dataclasses.replace(app.SMOKE, data_dir=str(tmp_path), rating_smoothing=0.3,
                                 validation_fraction=0.2)
    data = app.load_data(config)
    targets = np.concatenate([labels.numpy() for _, labels in data.train])
    np.testing.assert_allclose(sorted(set(targets.tolist())), [0, 0.3, 0.7, 1], atol=1e-6)
    validation_labels = np.concatenate([labels.numpy() for _, labels in data.validation])
    assert set(validation_labels.tolist()) == {0.0, 1.0}  # Validation keeps the labels.
    # The accuracy metric compares the side of 0.5, so soft targets count as their labels.
    accuracy = app.label_accuracy(np.array([0.3, 0.7, 0.7]), np.array([[0.1], [0.9], [0.2]]))
    assert keras.ops.convert_to_numpy(accuracy).ravel().tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="rating_smoothing needs the star ratings.*sample"):
        app.load_data(dataclasses.replace(app.SMOKE, rating_smoothing=0.3))


def test_language_model_targets_are_the_next_word_in_reading_order():
    word_ids = tf.constant([[5, 6, 7, 0], [8, 0, 0, 0]])
    predicts, next_words = app.language_model_targets(word_ids)
    assert predicts.numpy().tolist() == [[True, True, False, False], [False] * 4]
    assert next_words.numpy().tolist() == [6, 7]
    # Read backwards, the states come last word first: [0, 7, 6, 5] predicts 6, then 5.
    predicts, next_words = app.language_model_targets(word_ids, go_backwards=True)
    assert predicts.numpy().tolist() == [[False, True, True, False], [False] * 4]
    assert next_words.numpy().tolist() == [6, 5]


@pytest.mark.parametrize("reference", [False, True])
def test_pretraining_trains_the_encoder_as_a_language_model(data, tmp_path, reference):
    config = dataclasses.replace(app.SMOKE, pretrain_epochs=3, learning_rate=0.01)
    keras.utils.set_random_seed(0)
    # Any recurrent layer that returns sequences, as the benchmark's references.
    layer = keras.layers.SimpleRNN(8, return_sequences=True) if reference else None
    model = app.build_model(config, data, recurrent_layer=layer)
    before = {weight.path: weight.numpy().copy() for weight in model.weights}
    losses = app.pretrain(model, data, config, tmp_path)
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1
    for weight in model.weights:
        changed = not np.array_equal(weight.numpy(), before[weight.path])
        # The embedding and both directions learn; the classifier is left for the fit.
        assert changed == (not weight.path.startswith("probability")), weight.path
    # A rerun (after an interrupted training) loads the result instead of training again.
    pretrained = [weight.numpy() for weight in model.weights]
    fresh = app.build_model(config, data, recurrent_layer=layer.__class__.from_config(
        layer.get_config()) if reference else None)
    assert app.pretrain(fresh, data, config, tmp_path) is None
    for weight, expected in zip(fresh.weights, pretrained):
        np.testing.assert_array_equal(weight.numpy(), expected)


def test_pretraining_can_bound_the_largest_singular_value_of_W(data):
    config = dataclasses.replace(app.SMOKE, pretrain_epochs=2, learning_rate=0.05,
                                 pretrain_max_singular_value=0.8)
    keras.utils.set_random_seed(0)
    model = app.build_model(config, data)
    app.pretrain(model, data, config, None)
    kernels = [weight.numpy() for weight in model.weights if "recurrent_kernel" in weight.path]
    assert len(kernels) == 2
    for kernel in kernels:
        assert np.linalg.norm(kernel, 2) <= 0.8 + 1e-4
    # Unbounded, the same pretraining takes them past it.
    keras.utils.set_random_seed(0)
    free = dataclasses.replace(config, pretrain_max_singular_value=0.0)
    model = app.build_model(free, data)
    app.pretrain(model, data, free, None)
    assert max(np.linalg.norm(weight.numpy(), 2) for weight in model.weights
               if "recurrent_kernel" in weight.path) > 1.0  # Orthogonal at first: 1.


def test_training_counts_the_pretraining_time(tmp_path, data):
    config = dataclasses.replace(app.SMOKE, pretrain_epochs=1, epochs=1)
    training.train(app, config, tmp_path, data=data, verbose=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["pretrain_seconds"] < metrics["training_seconds"]
    assert (tmp_path / app.PRETRAINED_WEIGHTS).is_file()


# Training runs, CLI verbs.

class _InterruptAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_interrupted_training_resumes(tmp_path, data):
    config = app.SMOKE
    with pytest.raises(KeyboardInterrupt):
        training.train(app, config, tmp_path, data=data, verbose=0,
                       extra_callbacks=[_InterruptAfterFirstEpoch()])
    assert (tmp_path / "backup").is_dir() and not (tmp_path / "model.keras").exists()
    training.train(app, config, tmp_path, data=data, verbose=0)
    epochs = [row["epoch"] for row in csv.DictReader(open(tmp_path / "training.csv"))]
    assert epochs == ["0", "1"]  # The second run started at epoch 1, not again at 0.
    assert (tmp_path / "model.keras").is_file() and not (tmp_path / "backup").exists()


class _AveragingState(keras.callbacks.Callback):
    """Records the trained weights and their average: when an epoch ends, after the average
    has been swapped into the model (`interrupt_at`: then interrupts), or when training
    begins, after `BackupAndRestore` has restored the state of an interrupted run."""

    def __init__(self, interrupt_at=None):
        super().__init__()
        self.interrupt_at, self.states = interrupt_at, []

    def _record(self, trained, averaged):
        self.states.append(([weight.numpy().copy() for weight in trained],
                            [weight.numpy().copy() for weight in averaged]))

    def on_train_begin(self, logs=None):
        if self.interrupt_at is None:
            self._record(self.model.trainable_weights,
                         self.model.optimizer._model_variables_moving_average)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.interrupt_at:  # SwapEMAWeights has put the average in the model.
            self._record(self.model.optimizer._model_variables_moving_average,
                         self.model.trainable_weights)
            raise KeyboardInterrupt


def test_interrupted_weight_averaging_resumes_with_its_average(tmp_path, data):
    config = dataclasses.replace(app.SMOKE, epochs=3, weight_averaging_start_epoch=1)
    interrupted, resumed = _AveragingState(interrupt_at=1), _AveragingState()
    with pytest.raises(KeyboardInterrupt):
        training.train(app, config, tmp_path, data=data, verbose=0,
                       extra_callbacks=[interrupted])
    training.train(app, config, tmp_path, data=data, verbose=0, extra_callbacks=[resumed])
    (trained, averaged), (restored_trained, restored_averaged) = (interrupted.states[0],
                                                                  resumed.states[0])
    assert not all(np.array_equal(a, b) for a, b in zip(trained, averaged))
    for before, after in zip(trained + averaged, restored_trained + restored_averaged):
        np.testing.assert_array_equal(after, before)


class _RawWeightsAtEpochEnd(keras.callbacks.Callback):
    """The weights the optimizer trained, before any averaging is swapped in for validation."""

    def on_train_begin(self, logs=None):
        self.weights = []

    def on_train_batch_end(self, batch, logs=None):
        self.last = [weight.numpy().copy() for weight in self.model.trainable_weights]

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.last)


@pytest.mark.parametrize("ema_momentum, averaging_start", [(0.0, 0), (0.9, 0), (0.0, 1)])
def test_validation_checkpoints_and_final_model_use_the_averaged_weights(tmp_path, data,
                                                                          ema_momentum,
                                                                          averaging_start):
    config = dataclasses.replace(app.SMOKE, epochs=3, patience=3, ema_momentum=ema_momentum,
                                 weight_averaging_start_epoch=averaging_start)
    raw = _RawWeightsAtEpochEnd()
    model, history = training.train(app, config, tmp_path, data=data, verbose=0,
                                    extra_callbacks=[raw])
    best = int(np.argmax(history.history["val_accuracy"]))
    # The final model is the one validated at the best epoch...
    validation = model.evaluate(data.validation, return_dict=True, verbose=0)
    assert validation["loss"] == pytest.approx(history.history["val_loss"][best], rel=1e-4)
    best_checkpoint = keras.saving.load_model(tmp_path / "best.keras")
    for saved, final in zip(best_checkpoint.trainable_weights, model.trainable_weights):
        np.testing.assert_allclose(saved.numpy(), final.numpy(), rtol=1e-6)
    # ... which is the average of the trained weights, not the last of them, with averaging on.
    final = [weight.numpy() for weight in model.trainable_weights]
    same = all(np.array_equal(a, b) for a, b in zip(final, raw.weights[best]))
    # Weight averaging starts from the end of its start epoch: before that, the weights.
    assert same == (ema_momentum == 0 and (averaging_start == 0 or best < averaging_start))
    if averaging_start:
        with pytest.raises(ValueError, match="ema_momentum and weight_averaging_start_epoch"):
            app.build_model(dataclasses.replace(config, ema_momentum=0.9), data)


class _InterruptTheRefit(keras.callbacks.Callback):
    """Interrupts the second fit (the refit) after its first epoch."""

    def __init__(self):
        super().__init__()
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.fits == 2:
            raise KeyboardInterrupt


def test_refit_trains_a_fresh_model_on_all_training_reviews_and_resumes(tmp_path):
    config = dataclasses.replace(app.SMOKE, epochs=4, patience=4, learning_rate=0.01,
                                 refit=True)
    # Fresh data: the shared fixture's shuffling depends on the tests that ran before, and so
    # would the epoch that early stopping chooses.
    data = app.load_data(config)
    with pytest.raises(KeyboardInterrupt):
        training.train(app, config, tmp_path, data=data, verbose=0,
                       extra_callbacks=[_InterruptTheRefit()])
    chosen = json.loads((tmp_path / "metrics.json").read_text())["best_epoch"] + 1
    assert chosen >= 2  # So that the refit has epochs left after the interruption.
    model, _ = training.train(app, config, tmp_path, data=data, verbose=0)
    # The epochs on the training split ran once; the refit resumed after its first epoch.
    assert len(list(csv.DictReader(open(tmp_path / "training.csv")))) == 4
    refit_epochs = [row["epoch"] for row in csv.DictReader(open(tmp_path / "refit.csv"))]
    assert refit_epochs == [str(epoch) for epoch in range(chosen)]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["refit_epochs"] == chosen and not (tmp_path / "refit-backup").exists()
    # The final model is the refit one, trained on all 300 training reviews of the sample, not
    # the best checkpoint.
    saved = keras.saving.load_model(tmp_path / "model.keras")
    best = keras.saving.load_model(tmp_path / "best.keras")
    assert not np.array_equal(saved.get_layer("embed").embeddings.numpy(),
                              best.get_layer("embed").embeddings.numpy())
    np.testing.assert_array_equal(saved.get_layer("embed").embeddings.numpy(),
                                  model.get_layer("embed").embeddings.numpy())
    assert sum(int(batch[1].shape[0]) for batch in data.train_and_validation) == 300


def test_training_is_seeded(tmp_path):
    # Each run loads its data afresh, as separate `elman train` processes do.
    first, _ = training.train(app, app.SMOKE, tmp_path / "a", verbose=0)
    second, _ = training.train(app, app.SMOKE, tmp_path / "b", verbose=0)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_cli_verbs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "imdb", "--smoke", "--set", "epochs=1", "--set", "hidden_units=4"]) == 0
    saved = json.loads((tmp_path / "runs" / "imdb" / "config.json").read_text())
    assert saved["app"] == "imdb" and saved["config"]["hidden_units"] == 4
    assert "train imdb --smoke" in (tmp_path / "runs" / "imdb" / "command.txt").read_text()
    for name in ("training.csv", "best.keras", "model.keras", "metrics.json"):
        assert (tmp_path / "runs" / "imdb" / name).is_file(), name
    metrics = json.loads((tmp_path / "runs" / "imdb" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 0
    assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert any((tmp_path / "runs" / "imdb" / "tensorboard").rglob("*tfevents*"))

    assert main(["evaluate", "imdb"]) == 0
    evaluation = json.loads((tmp_path / "runs" / "imdb" / "evaluation.json").read_text())
    assert 0.0 <= evaluation["accuracy"] <= 1.0

    assert main(["export", "imdb"]) == 0
    assert main(["export", "imdb"]) == 0
    assert sorted(p.name for p in (tmp_path / "saved_models" / "imdb").iterdir()) == ["1", "2"]
    capsys.readouterr()
    assert main(["predict", "imdb", "What a great film", ""]) == 0
    printed = capsys.readouterr().out
    assert "saved_models/imdb/2" in printed and printed.count("p(positive)=") == 2


def test_cli_errors_are_clear(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "imdb", "--smoke", "--set", "hiden_units=4"]) == 2
    assert "unknown config key 'hiden_units'" in capsys.readouterr().err
    assert main(["train", "imdb", "--smoke", "--set", "hidden_units=many"]) == 2
    assert "hidden_units expects int, received hidden_units='many'" in capsys.readouterr().err
    assert main(["predict", "imdb", "text"]) == 2
    assert "elman export imdb" in capsys.readouterr().err
    assert main(["evaluate", "imdb"]) == 2
    assert "elman train imdb" in capsys.readouterr().err


def test_demo_trains_exports_and_predicts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--apps", "imdb"]) == 0
    printed = capsys.readouterr().out
    assert "SMOKE preset on the shipped sample" in printed
    assert (tmp_path / "saved_models" / "imdb" / "1" / "saved_model.pb").is_file()
    assert printed.count("p(positive)=") == len(app.EXAMPLES)
    assert (tmp_path / "runs" / "imdb-demo" / "evaluation.json").is_file()


# Length buckets and ensembles.

@pytest.mark.parametrize("buckets", [0, 4, 8])
def test_length_buckets_batch_similar_reviews_and_keep_every_one(buckets):
    # The sample's reviews have up to 296 words (the full data's, up to 2,470), so buckets save
    # less than the 2.8 times of the full data.
    plain_config = dataclasses.replace(app.SMOKE, sequence_length=300, batch_size=8)
    config = dataclasses.replace(plain_config, length_buckets=buckets)
    data, plain = app.load_data(config), app.load_data(plain_config)
    for split in ("train", "validation", "test"):
        batches = list(getattr(data, split))
        assert len(batches) == int(getattr(data, split).cardinality())
        reviews = sorted(review for texts, _ in batches for review in texts.numpy().tolist())
        assert reviews == sorted(review for texts, _ in getattr(plain, split)
                                 for review in texts.numpy().tolist())
        assert all(len(texts) <= config.batch_size for texts, _ in batches)
    # The steps the recurrent layers run, summed over the batches: buckets cut them.
    def padded(dataset):
        return sum(min(300, int(tf.reduce_max(tf.strings.split(texts).row_lengths())))
                   * len(texts) for texts, _ in dataset)
    if buckets:
        assert padded(data.train) < 0.9 * padded(plain.train)
    else:
        assert padded(data.train) == padded(plain.train)


def test_an_ensemble_serves_the_mean_of_members_that_train_apart(data, tmp_path):
    config = dataclasses.replace(app.SMOKE, ensemble_members=3)
    keras.utils.set_random_seed(0)
    model = app.build_model(config, data)
    assert model.count_params() == 3 * app.build_model(app.SMOKE, data).count_params()
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))
    reviews = _reviews(data)
    members = [keras.Model(model.input, model.get_layer(name).output).predict(reviews, verbose=0)
               for name in ("probability", "probability_member_2", "probability_member_3")]
    assert not np.allclose(members[0], members[1])  # Their own weights and draws.
    np.testing.assert_allclose(model.predict(reviews, verbose=0), np.mean(members, axis=0),
                               rtol=1e-5)
    history = model.fit(data.train, validation_data=data.validation, epochs=1, verbose=0)
    assert 0 <= history.history["accuracy"][0] <= 1
    app_checks.check_keras_round_trip(model, reviews, tmp_path)
    outputs = app.export_signatures(model)["serving_default"](reviews)
    assert outputs["probability"].shape == (len(reviews),)
    with pytest.raises(ValueError, match="pretrain_epochs works with one model"):
        app.pretrain(model, data, dataclasses.replace(config, pretrain_epochs=1), None)
    with pytest.raises(ValueError, match="ensemble_members must be at least 1"):
        app.build_model(dataclasses.replace(config, ensemble_members=0), data)


def test_member_selection_leaves_the_model_its_metrics_describe(tmp_path, data):
    config = dataclasses.replace(app.SMOKE, ensemble_members=2, member_selection=True,
                                 epochs=3, patience=3, monitor="val_loss", learning_rate=0.01)
    model, _ = training.train(app, config, tmp_path, data=data, verbose=0)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["member_epochs"]) == 2
    assert all(0 <= epoch < 3 for epoch in metrics["member_epochs"])
    assert not (tmp_path / app.MEMBER_WEIGHTS).exists()
    # The saved model is the selected members' ensemble, whose validation figures metrics.json
    # holds (not those of the epoch where the average scored best).
    saved = keras.saving.load_model(tmp_path / "model.keras")
    validation = saved.evaluate(data.validation, return_dict=True, verbose=0)
    assert validation["loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)
    assert validation["accuracy"] == pytest.approx(metrics["val_accuracy"])
    with pytest.raises(ValueError, match="member_selection chooses an epoch for each member"):
        app.build_model(dataclasses.replace(app.SMOKE, member_selection=True), data)
    with pytest.raises(ValueError, match="set member_selection=false or refit=false"):
        app.build_model(dataclasses.replace(config, refit=True), data)


def test_benchmark_reports_the_best_epoch_and_each_members_epoch(tmp_path, capsys,
                                                                 monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    common = importlib.import_module("common")
    config = dataclasses.replace(app.SMOKE, ensemble_members=2, member_selection=True)
    args = argparse.Namespace(only=["elman"], runs_dir=tmp_path)
    results = common.run_models(app, config, {"elman": None, "other": None}, args,
                                lambda metrics: {"test_accuracy": metrics["accuracy"]})
    assert list(results) == ["elman"]
    record = json.loads((tmp_path / "elman" / "metrics.json").read_text())
    assert results["elman"]["best_epoch"] == record["best_epoch"] + 1
    assert json.loads((tmp_path / "results.json").read_text()) == results
    members = [epoch + 1 for epoch in record["member_epochs"]]
    assert f"elman: members' best epochs {members}" in capsys.readouterr().out


def test_monitor_chooses_the_validation_metric_of_the_best_epoch(tmp_path, data):
    config = dataclasses.replace(app.SMOKE, epochs=4, patience=4, monitor="val_loss",
                                 learning_rate=0.01)
    model, history = training.train(app, config, tmp_path, data=data, verbose=0)
    losses = history.history["val_loss"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["best_epoch"] == int(np.argmin(losses))
    assert metrics["val_loss"] == pytest.approx(min(losses))
    # The final model is the best epoch's by the loss, whatever the accuracy said.
    validation = model.evaluate(data.validation, return_dict=True, verbose=0)
    assert validation["loss"] == pytest.approx(min(losses), rel=1e-4)
    for chosen, expected in ((config, ("val_loss", "min")), (app.SMOKE, ("val_accuracy", "max"))):
        callbacks = training._callbacks(app, chosen, tmp_path, model)
        stopping = next(callback for callback in callbacks
                        if isinstance(callback, keras.callbacks.EarlyStopping))
        checkpoint = next(callback for callback in callbacks
                          if isinstance(callback, keras.callbacks.ModelCheckpoint))
        assert (stopping.monitor, checkpoint.monitor) == (expected[0], expected[0])
        assert (stopping.mode, checkpoint.mode) == (expected[1], expected[1])
    with pytest.raises(ValueError, match='monitor must be "val_accuracy", "val_loss"'):
        app.build_model(dataclasses.replace(app.SMOKE, monitor="accuracy"), data)
