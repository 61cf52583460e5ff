"""Hyperparameter search with keras-tuner, written once for every app.

The search space lives beside each app's config (`app.search_space(hp, config)` returns a config),
so a trial is just a config, and the best trial is written out as a config file that
`elman train APP --config RUN_DIR/best_config.json` accepts.

Distributed search is keras-tuner's own: the same `elman tune` command on a chief and on any
number of workers, each told its part by keras-tuner's environment variables
(`KERASTUNER_TUNER_ID`: "chief" or a worker's name such as "tuner0"; `KERASTUNER_ORACLE_IP` and
`KERASTUNER_ORACLE_PORT`: where the chief listens). The chief runs the oracle, which hands out
the trials (each to one worker, once) and, when all are done, writes `best_config.json` and
`trials.json`; a worker runs trials until the oracle says the search is over, then ends
without asking the chief for anything (it may have exited). The run directory must be shared.
"""

import json
import os
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


class AppTuner(keras_tuner.RandomSearch):
    """keras-tuner's random search, saying which trial this process runs (with several
    workers, each prints the trials it was given)."""

    def run_trial(self, trial, *args, **kwargs):
        print(f"[elman] tune: {self.tuner_id} runs trial {trial.trial_id} "
              f"{trial.hyperparameters.values}", flush=True)
        return super().run_trial(trial, *args, **kwargs)


def tuner_role():
    """"chief", "worker" (keras-tuner's distributed mode, from its environment variables) or
    `None` (a search in one process)."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID")
               if not os.environ.get(name)]
    if missing:
        raise ValueError(f"KERASTUNER_ORACLE_IP is set (distributed search), so "
                         f"{' and '.join(missing)} must be too: KERASTUNER_TUNER_ID=chief on the "
                         "chief, a name of its own (tuner0, tuner1, ...) on each worker")
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def tune(app, config, run_dir, max_trials=10, executions_per_trial=1, data=None,
         verbose="auto", command=None, preset="default"):
    """Runs (or resumes) a random search; returns the best config.

    The search state lives in `RUN_DIR/search/`: running the same command again skips the
    trials already done and runs the rest, up to `max_trials` in all. `preset` names the preset
    the base config started from (recorded in config.json and best_config.json).

    Returns:
        The best trial's config, also written to `RUN_DIR/best_config.json` with its score; on
        a worker of a distributed search, `None` (the chief writes the results).
    """
    run_dir = Path(run_dir)
    role = tuner_role()
    if role != "worker":
        write_run_record(run_dir, app, config, command, preset)
    make_repeatable(config.seed)
    if data is None:
        data = app.load_data(config)
    metric, mode = monitor(app, config), monitor_mode(app, config)
    tuner = AppTuner(
        AppHyperModel(app, config, data),
        objective=keras_tuner.Objective(metric, direction=mode),
        max_trials=max_trials, executions_per_trial=executions_per_trial, seed=config.seed,
        directory=str(run_dir), project_name="search", overwrite=False)
    tuner.search(data.train, validation_data=data.validation, epochs=config.epochs,
                 callbacks=[keras.callbacks.EarlyStopping(metric, mode=mode,
                                                          patience=config.patience)],
                 verbose=verbose)
    if role == "worker":
        return None
    best_trial = tuner.oracle.get_best_trials(1)[0]
    best_config = app.search_space(best_trial.hyperparameters, config)
    save_config(best_config, run_dir / "best_config.json", app.NAME, preset=preset,
                trial=best_trial.trial_id, score=best_trial.score, monitor=metric)
    trials = [{"trial": trial.trial_id, "status": str(trial.status), "score": trial.score,
               "values": trial.hyperparameters.values}
              for trial in tuner.oracle.trials.values()]
    (run_dir / "trials.json").write_text(json.dumps(trials, indent=2, default=str) + "\n")
    return best_config
