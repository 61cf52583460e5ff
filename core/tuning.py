"""Hyperparameter search with keras-tuner, written once for every app.

The search space lives beside each app's config (`app.search_space(hp, config)` returns a config),
so a trial is just a config, and the best trial is written out as a config file that
`elman train APP --config RUN_DIR/best_config.json` accepts.
"""

import json
from pathlib import Path

import keras
import keras_tuner

from elman.config import save_config
from elman.training import make_repeatable, monitor, monitor_mode, write_run_record


class AppHyperModel(keras_tuner.HyperModel):
    """Adapts an app to keras-tuner: each trial builds `app.build_model` from a searched config.

    Args:
        app: the app module.
        config: the base config; the search space replaces some of its values.
        data: the app's loaded data, shared by all trials.
    """

    def __init__(self, app, config, data):
        super().__init__(name=app.NAME)
        self.app, self.config, self.data = app, config, data

    def build(self, hp):
        return self.app.build_model(self.app.search_space(hp, self.config), self.data)


def tune(app, config, run_dir, max_trials=10, executions_per_trial=1, data=None,
         verbose="auto", command=None, preset="default"):
    """Runs (or resumes) a random search; returns the best config.

    The search state lives in `RUN_DIR/search/`: running the same command again skips the
    trials already done and runs the rest, up to `max_trials` in all. `preset` names the preset
    the base config started from (recorded in config.json and best_config.json).

    Returns:
        The best trial's config, also written to `RUN_DIR/best_config.json` with its score.
    """
    run_dir = Path(run_dir)
    write_run_record(run_dir, app, config, command, preset)
    make_repeatable(config.seed)
    if data is None:
        data = app.load_data(config)
    metric, mode = monitor(app, config), monitor_mode(app, config)
    tuner = keras_tuner.RandomSearch(
        AppHyperModel(app, config, data),
        objective=keras_tuner.Objective(metric, direction=mode),
        max_trials=max_trials, executions_per_trial=executions_per_trial, seed=config.seed,
        directory=str(run_dir), project_name="search", overwrite=False)
    tuner.search(data.train, validation_data=data.validation, epochs=config.epochs,
                 callbacks=[keras.callbacks.EarlyStopping(metric, mode=mode,
                                                          patience=config.patience)],
                 verbose=verbose)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_config = app.search_space(best_trial.hyperparameters, config)
    save_config(best_config, run_dir / "best_config.json", app.NAME, preset=preset,
                trial=best_trial.trial_id, score=best_trial.score, monitor=metric)
    trials = [{"trial": trial.trial_id, "status": str(trial.status), "score": trial.score,
               "values": trial.hyperparameters.values}
              for trial in tuner.oracle.trials.values()]
    (run_dir / "trials.json").write_text(json.dumps(trials, indent=2, default=str) + "\n")
    return best_config
