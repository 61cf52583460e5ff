"""The IMDB app on its shipped sample: shared checks, robustness, data sources, CLI verbs."""

import argparse
import csv
import dataclasses
import gzip
import importlib
import json
import os
import subprocess
import sys
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
from elman.layers import AveragingAdam

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
    # The sample: 5,000 training reviews, of which validation_fraction (10%) are held out, and
    # 1,000 test reviews, half of each label.
    assert (train, validation, test) == (4500, 500, 1000)
    assert validation == round(5000 * app.SMOKE.validation_fraction)
    assert "sample" in data.source
    assert data.vocabulary[:2] == ["", "[UNK]"] and len(data.vocabulary) == app.SMOKE.vocabulary_size


def test_training_step_changes_every_weight(data):
    model = app.build_model(app.SMOKE, data)
    recurrent = model.get_layer("bidirectional_elman")
    assert recurrent.forward_layer.cell.kernel.shape == (app.SMOKE.embedding_dim,
                                                         app.SMOKE.hidden_units)
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))


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


def test_the_ensemble_preset_goes_through_the_shared_checks(data, tmp_path):
    """The kept variant, at the smoke preset's sizes: three members with weight averaging."""
    sizes = {key: getattr(app.SMOKE, key) for key in ("vocabulary_size", "sequence_length",
                                                      "embedding_dim", "hidden_units",
                                                      "batch_size")}
    config = dataclasses.replace(app.PRESETS["ensemble"], **sizes)
    keras.utils.set_random_seed(0)
    model = app.build_model(config, data)
    assert isinstance(model.optimizer, AveragingAdam) and model.get_layer("ensemble")
    app_checks.check_training_step_changes_every_weight(model, next(iter(data.train)))
    reviews = _reviews(data)
    app_checks.check_keras_round_trip(model, reviews, tmp_path)
    app_checks.check_export_without_elman(app, model, {"review": reviews}, tmp_path)


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


@pytest.mark.parametrize("averaging_start", [0, 1])
def test_validation_checkpoints_and_final_model_use_the_averaged_weights(tmp_path, data,
                                                                          averaging_start):
    config = dataclasses.replace(app.SMOKE, epochs=3, patience=3,
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
    assert same == (averaging_start == 0 or best < averaging_start)
    with pytest.raises(ValueError, match="weight_averaging_start_epoch must be >= 0"):
        app.build_model(dataclasses.replace(config, weight_averaging_start_epoch=-1), data)


def test_a_run_is_repeatable_in_another_process(tmp_path):
    """The same command twice, as two `elman train` processes: the same weights, bit for bit."""
    weights = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "elman.cli", "train", "imdb", "--preset", "smoke",
                        "--run-dir", str(tmp_path / name)], check=True, capture_output=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        model = keras.saving.load_model(tmp_path / name / "model.keras")
        weights.append([weight.numpy() for weight in model.weights])
        assert json.loads((tmp_path / name / "config.json").read_text())["preset"] == "smoke"
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)


def test_cli_verbs_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "imdb", "--preset", "smoke", "--set", "epochs=1", "--set", "hidden_units=4"]) == 0
    saved = json.loads((tmp_path / "runs" / "imdb" / "config.json").read_text())
    assert saved["app"] == "imdb" and saved["config"]["hidden_units"] == 4
    assert "train imdb --preset smoke" in (tmp_path / "runs" / "imdb" / "command.txt").read_text()
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
    assert main(["train", "imdb", "--preset", "smoke", "--set", "hiden_units=4"]) == 2
    assert "unknown config key 'hiden_units'" in capsys.readouterr().err
    assert main(["train", "imdb", "--preset", "smoke", "--set", "hidden_units=many"]) == 2
    assert "hidden_units expects int, received hidden_units='many'" in capsys.readouterr().err
    assert main(["predict", "imdb", "text"]) == 2
    assert "elman export imdb" in capsys.readouterr().err
    assert main(["evaluate", "imdb"]) == 2
    assert "elman train imdb" in capsys.readouterr().err


# Length buckets and ensembles.

@pytest.mark.parametrize("buckets", [0, 4, 8])
def test_length_buckets_batch_similar_reviews_and_keep_every_one(buckets):
    # The sample's reviews have up to 296 words (the full data's, up to 2,470), so buckets save
    # less than the 2.8 times of the full data.
    plain_config = dataclasses.replace(app.SMOKE, sequence_length=300, batch_size=8,
                                       length_buckets=0)
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
    with pytest.raises(ValueError, match="ensemble_members must be at least 1"):
        app.build_model(dataclasses.replace(config, ensemble_members=0), data)


def test_benchmark_reports_the_best_epoch(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent.parent / "benchmarks"))
    common = importlib.import_module("common")
    config = dataclasses.replace(app.SMOKE, ensemble_members=2)
    args = argparse.Namespace(only=["elman"], runs_dir=tmp_path)
    results = common.run_models(app, config, {"elman": None, "other": None}, args,
                                lambda metrics: {"test_accuracy": metrics["accuracy"]})
    assert list(results) == ["elman"]
    record = json.loads((tmp_path / "elman" / "metrics.json").read_text())
    assert results["elman"]["best_epoch"] == record["best_epoch"] + 1
    assert json.loads((tmp_path / "results.json").read_text()) == results


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
