"""The shared core: configs, the atomic exporter and the resumable tuner."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest

from elman import export, tuning
from elman.apps import get_app
from elman.cli import main
from elman.config import apply_overrides, load_config, save_config


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    units: int = 8
    rate: float = 0.1
    name: str = "toy"
    flag: bool = False
    limit: int | None = None


# Configs.

def test_overrides_convert_to_the_field_types():
    config = apply_overrides(ToyConfig(), ["units=16", "rate=1e-3", "name=a=b", "flag=true",
                                           "limit=none"])
    assert config == ToyConfig(units=16, rate=0.001, name="a=b", flag=True, limit=None)
    assert apply_overrides(ToyConfig(), ["limit=5"]).limit == 5
    assert apply_overrides(ToyConfig(), ["rate=2"]).rate == 2.0


@pytest.mark.parametrize("assignment,message", [
    ("unit=3", "unknown config key 'unit' for ToyConfig; valid keys: units, rate"),
    ("units=3.5", "units expects int, received units='3.5'"),
    ("flag=maybe", "flag expects bool, received flag='maybe'"),
    ("limit=lots", "limit expects int or NoneType, received limit='lots'"),
    ("units", "--set expects key=value, received 'units'"),
])
def test_bad_overrides_fail_loudly(assignment, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(ToyConfig(), [assignment])


def test_config_file_round_trip_and_checks(tmp_path):
    config = ToyConfig(units=3, rate=0.5, flag=True)
    save_config(config, tmp_path / "config.json", "toy", score=0.9)
    assert load_config(ToyConfig, tmp_path / "config.json", "toy") == config
    with pytest.raises(ValueError, match="is for the app 'toy', not 'imdb'"):
        load_config(ToyConfig, tmp_path / "config.json", "imdb")
    (tmp_path / "bad.json").write_text(json.dumps({"units": "three"}))
    with pytest.raises(ValueError, match="units expects int"):
        load_config(ToyConfig, tmp_path / "bad.json", "toy")
    with pytest.raises(ValueError, match="config file not found"):
        load_config(ToyConfig, tmp_path / "missing.json", "toy")


# The exporter.

@pytest.fixture(scope="module")
def imdb_model():
    app = get_app("imdb")
    return app, app.build_model(app.SMOKE, app.load_data(app.SMOKE))


def test_export_versions_are_integers_and_never_overwritten(tmp_path, imdb_model):
    app, model = imdb_model
    (tmp_path / "imdb" / "notes").mkdir(parents=True)  # Not a version: ignored.
    assert export.export(app, model, tmp_path).name == "1"
    assert export.export(app, model, tmp_path, version=5).name == "5"
    assert export.export(app, model, tmp_path).name == "6"
    with pytest.raises(ValueError, match="already exists"):
        export.export(app, model, tmp_path, version=5)
    with pytest.raises(ValueError, match="version must be a positive integer"):
        export.export(app, model, tmp_path, version=0)
    assert export.versions(tmp_path / "imdb") == [1, 5, 6]


def test_a_failed_export_leaves_no_version_behind(tmp_path, imdb_model, monkeypatch):
    app, model = imdb_model

    def write_half_then_fail(self, path, **kwargs):
        os.makedirs(path)
        open(os.path.join(path, "saved_model.pb"), "wb").write(b"half")
        raise OSError("disk full")

    # ExportArchive() returns an instance of a backend-specific subclass: patch that class.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        export.export(app, model, tmp_path)
    assert os.listdir(tmp_path / "imdb") == []


# The tuner.

def test_search_of_two_trials_runs_and_resumes(tmp_path, monkeypatch):
    app = get_app("imdb")
    config = dataclasses.replace(app.SMOKE, epochs=1)
    data = app.load_data(config)
    tuning.tune(app, config, tmp_path, max_trials=1, data=data, verbose=0)
    first = json.loads((tmp_path / "trials.json").read_text())
    assert len(first) == 1
    trial_file = next((tmp_path / "search").glob("trial_*/trial.json"))
    stamp = trial_file.stat().st_mtime_ns

    # Run again with room for two trials: only the missing one is run.
    best = tuning.tune(app, config, tmp_path, max_trials=2, data=data, verbose=0)
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert len(trials) == 2 and trials[0]["trial"] == first[0]["trial"]
    assert trial_file.stat().st_mtime_ns == stamp
    assert all(trial["status"] == "COMPLETED" for trial in trials)

    # The best trial is a config that `elman train --config` accepts.
    best_file = tmp_path / "best_config.json"
    assert load_config(app.Config, best_file, "imdb", base=config) == best
    assert best.hidden_units in (32, 64, 128)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "imdb", "--config", str(best_file), "--set", "epochs=1",
                 "--set", "hidden_units=4", "--run-dir", "from-best"]) == 0
    trained = load_config(app.Config, tmp_path / "from-best" / "config.json", "imdb")
    assert trained.learning_rate == best.learning_rate and trained.hidden_units == 4


@pytest.mark.parametrize("name", ["imdb", "translation", "nextframe"])
def test_every_search_space_gives_a_config_that_trains(name):
    """A trial's config (the search space's first values) builds a model that takes a step."""
    import keras_tuner

    app = get_app(name)
    data = app.load_data(app.SMOKE)
    config = app.search_space(keras_tuner.HyperParameters(), app.SMOKE)
    assert isinstance(config, app.Config) and config != app.SMOKE
    model = tuning.AppHyperModel(app, app.SMOKE, data).build(keras_tuner.HyperParameters())
    batch = next(iter(data.train))  # (inputs, targets), or the next-frame app's centers
    loss = model.train_on_batch(*(batch if isinstance(batch, tuple) else (batch,)))
    assert np.isfinite(loss if np.isscalar(loss) else loss[0])


def test_registered_names_are_unique_across_apps():
    """Keras's registry maps `elman>Name` to one object: two apps registering the same name
    would load each other's functions from `.keras` files."""
    import importlib
    import inspect

    from elman.apps import APP_MODULES

    modules = [importlib.import_module(name) for name in APP_MODULES.values()]
    for module in modules:
        for name, value in vars(module).items():
            if (inspect.isfunction(value) or inspect.isclass(value)) and \
                    value.__module__ == module.__name__:
                registered = keras.saving.get_registered_object(f"elman>{name}")
                if registered is not None:
                    assert registered is value, f"elman>{name} is registered twice"


def test_presets_are_named_configs_listed_by_the_cli(tmp_path, capsys, monkeypatch):
    from elman.apps import APP_MODULES, describe_presets

    for name in APP_MODULES:
        app = get_app(name)
        # The defaults are the best recipe measured; smoke is the tiny one of the tests.
        assert app.PRESETS["default"] == app.Config() and app.PRESETS["smoke"] is app.SMOKE
        assert all(isinstance(config, app.Config) for config in app.PRESETS.values())
    imdb = get_app("imdb")
    lines = describe_presets(imdb)
    assert lines[0] == "default: the defaults"
    assert any(line.startswith("ensemble: ") and "ensemble_members=3" in line for line in lines)
    assert main(["presets", "imdb"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble: " in printed and "weight_averaging_start_epoch=1" in printed
    # `elman train --help` lists every app's presets.
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    printed = capsys.readouterr().out
    assert "imdb: default, ensemble, demo, smoke" in printed
    assert "nextframe: default, demo, smoke" in printed
    monkeypatch.chdir(tmp_path)
    assert main(["train", "imdb", "--preset", "huge"]) == 2
    assert "unknown preset 'huge' for imdb; choose one of: default, ensemble, demo, smoke" in \
        capsys.readouterr().err
    # A run records the preset it started from; the overrides apply on top of it.
    assert main(["train", "imdb", "--preset", "smoke", "--set", "epochs=1",
                 "--set", "hidden_units=4"]) == 0
    saved = json.loads((tmp_path / "runs" / "imdb" / "config.json").read_text())
    assert saved["preset"] == "smoke" and saved["config"]["hidden_units"] == 4
    assert saved["config"]["vocabulary_size"] == imdb.SMOKE.vocabulary_size
