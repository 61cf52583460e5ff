"""Training and evaluation, written once for every app.

A run directory holds everything a run produces:

    config.json        the resolved config (`elman train --config` accepts it)
    command.txt        the command line that started the run
    backup/            BackupAndRestore's state: an interrupted run resumes from its last epoch
    best.keras         the best model so far by the monitored metric (`monitor`)
    model.keras        the final model (the best weights when early stopping restored them)
    training.csv       one row of metrics per epoch (appended across resumes)
    tensorboard/       TensorBoard logs: `tensorboard --logdir RUN_DIR/tensorboard`
    metrics.json       the metrics of the best epoch (the weights saved), epochs run, time
                       (an app callback that replaced the weights after the fit, such as
                       `MemberSelection`, writes the figures of the model it left)
    refit.csv          with `refit` set: the epochs of the fresh model trained on training +
                       validation data for the best epoch's count (it becomes model.keras)
    evaluation.json    the test metrics written by `elman evaluate`
"""

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import keras

from elman.config import save_config


def write_run_record(run_dir, app, config, command=None):
    """Writes the resolved config and the command line (default: `sys.argv`) into the run
    directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json", app.NAME)
    (run_dir / "command.txt").write_text(shlex.join(command or sys.argv) + "\n")


def monitor(app, config=None):
    """The validation metric that checkpoints, early stopping, the best epoch and the tuner go
    by: the config's `monitor` where the app's config has that field and it is set, else the
    app's MONITOR."""
    return getattr(config, "monitor", "") or app.MONITOR


def monitor_mode(app, config=None):
    """`"min"` when the monitored metric is a loss, else `"max"`: the one rule for every
    callback, the tuner's objective and the best epoch."""
    return "min" if "loss" in monitor(app, config) else "max"


def _callbacks(app, config, run_dir, model):
    metric, mode = monitor(app, config), monitor_mode(app, config)
    # With an optimizer that keeps an exponential moving average of the weights (`use_ema`),
    # validation, the best checkpoint and early stopping see the averaged weights, and the
    # model keeps them at the end. Listed after BackupAndRestore, so that the backup holds the
    # raw weights a resumed run goes on from.
    averaging = ([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
                 if getattr(model.optimizer, "use_ema", False) else [])
    return [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        *averaging,
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=metric, mode=mode,
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor=metric, mode=mode, patience=config.patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(str(run_dir / "training.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard")),
    ]


def train(app, config, run_dir, data=None, model=None, extra_callbacks=(), verbose="auto",
          command=None):
    """Trains `app` with `config`, writing everything into `run_dir`.

    Running the same command again after an interruption resumes from the last completed epoch.
    An app may define `pretrain(model, data, config, run_dir)` (run before the fit, its time
    counted in the training time) and `training_callbacks(model, data, config, run_dir)` (more
    Keras callbacks for the fit on the training split, listed after the core's).

    Args:
        app: the app module.
        config: the app's `Config`.
        run_dir: the run directory (created if missing).
        data: the app's data, if already loaded (else `app.load_data(config)`).
        model: a compiled model to train instead of `app.build_model(config, data)`.
        extra_callbacks: more Keras callbacks, e.g. the BPTT monitor.
        verbose: Keras's progress bar setting.
        command: the command line to record (default: `sys.argv`).

    Returns:
        `(model, history)`: the trained model and the Keras `History` of the fit on the
        training split (None when a run resumed in its refit).
    """
    run_dir = Path(run_dir)
    write_run_record(run_dir, app, config, command)
    keras.utils.set_random_seed(config.seed)
    if data is None:
        data = app.load_data(config)
    print(f"[elman] {app.NAME}: data from {data.source}")
    if model is None:
        model = app.build_model(config, data)
    print(f"[elman] {app.NAME}: {model.count_params():,} parameters; run directory {run_dir}")
    refit = getattr(config, "refit", False)
    if refit and (run_dir / REFIT_BACKUP).is_dir() and (run_dir / "metrics.json").is_file():
        # An interrupted refit: the epochs were chosen already; go on with the refit.
        history, final = None, json.loads((run_dir / "metrics.json").read_text())
    else:
        # An app may prepare the model before the fit (e.g. unsupervised pretraining): its
        # time counts in the training time.
        started = time.perf_counter()
        if hasattr(app, "pretrain"):
            app.pretrain(model, data, config, run_dir)
        pretrain_seconds = time.perf_counter() - started
        history, final = _fit_with_validation(app, config, run_dir, data, model, verbose,
                                              extra_callbacks, pretrain_seconds)
    if refit:
        started = time.perf_counter()
        model = _refit(app, config, run_dir, data, model, final["best_epoch"] + 1, verbose,
                       extra_callbacks)
        final.update(refit_epochs=final["best_epoch"] + 1,
                     refit_seconds=time.perf_counter() - started)
        final["training_seconds"] += final["refit_seconds"]
        _write_metrics(run_dir, final)
    model.save(run_dir / "model.keras")
    return model, history


def _fit_with_validation(app, config, run_dir, data, model, verbose, extra_callbacks,
                         pretrain_seconds=0.0):
    """Fits on the training split with early stopping on the validation split; writes and
    returns the best epoch's metrics: `(history, metrics)`, whose `training_seconds` include
    `pretrain_seconds`."""
    started = time.perf_counter()
    # An app's own callbacks come after the core's, so that their `on_train_end` sees the
    # weights early stopping restored (and may replace them, as ensemble member selection does).
    app_callbacks = (list(app.training_callbacks(model, data, config, run_dir))
                     if hasattr(app, "training_callbacks") else [])
    try:
        history = model.fit(
            data.train, validation_data=data.validation, epochs=config.epochs,
            shuffle=False,  # The app's tf.data pipeline shuffles.
            callbacks=[*_callbacks(app, config, run_dir, model), *app_callbacks,
                       *extra_callbacks],
            verbose=verbose)
    except KeyboardInterrupt:
        _say_how_to_resume(run_dir / "backup")
        raise
    # Early stopping restored the best epoch's weights, so its metrics describe the model.
    scores = history.history.get(monitor(app, config)) or [0.0]
    best = scores.index(min(scores) if monitor_mode(app, config) == "min" else max(scores))
    final = {key: float(values[best]) for key, values in history.history.items()}
    final.update(best_epoch=history.epoch[best] if history.epoch else None,
                 epochs_run=len(history.epoch), pretrain_seconds=pretrain_seconds,
                 training_seconds=time.perf_counter() - started + pretrain_seconds)
    # A callback that changed the weights after the fit describes the model it left instead.
    for callback in app_callbacks:
        final.update(getattr(callback, "final_metrics", None) or {})
    _write_metrics(run_dir, final)
    return history, final


REFIT_BACKUP = "refit-backup"


def _write_metrics(run_dir, metrics):
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def _say_how_to_resume(backup_dir):
    print(f"\n[elman] interrupted: completed epochs are kept in {backup_dir}; "
          "run the same command again to resume.", file=sys.stderr)


def _refit(app, config, run_dir, data, model, epochs, verbose, extra_callbacks=()):
    """Trains a fresh copy of `model` (same layers and compile settings, new weights) on the
    training and validation data together for `epochs` epochs: the number of epochs early
    stopping chose on the validation split, now with more data to learn from. Nothing is
    validated: the validation examples are part of its training data."""
    if getattr(data, "train_and_validation", None) is None:
        raise ValueError(f"{app.NAME} cannot refit: its data has no train_and_validation split; "
                         "set refit=false")
    print(f"[elman] {app.NAME}: refitting a fresh model on training + validation data for "
          f"{epochs} epochs (the best epoch on validation)")
    keras.utils.set_random_seed(config.seed)
    # The same architecture with new weights (`clone_model` cannot copy every layer argument,
    # such as a text standardization function; serialization can).
    fresh = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    fresh.compile_from_config(model.get_compile_config())
    backup_dir = run_dir / REFIT_BACKUP
    backup_dir.mkdir(exist_ok=True)  # Marks the refit as started, for a resumed run.
    try:
        fresh.fit(data.train_and_validation, epochs=epochs, shuffle=False, verbose=verbose,
                  callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir)),
                             keras.callbacks.CSVLogger(str(run_dir / "refit.csv"), append=True),
                             keras.callbacks.TensorBoard(str(run_dir / "tensorboard" / "refit")),
                             *extra_callbacks])
    except KeyboardInterrupt:
        _say_how_to_resume(backup_dir)
        raise
    shutil.rmtree(backup_dir, ignore_errors=True)
    return fresh


def load_run_config(app, run_dir, data_dir=None):
    """The config a run was trained with (`RUN_DIR/config.json`), with another data directory
    if `data_dir` is given."""
    from elman.config import apply_overrides, load_config

    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config at {path}: train first with "
                                f"`elman train {app.NAME} --run-dir {run_dir}`")
    config = load_config(app.Config, path, app.NAME)
    return apply_overrides(config, [f"data_dir={data_dir}"]) if data_dir else config


def load_trained_model(app, run_dir):
    """Loads `RUN_DIR/model.keras`, with a clear error when the run has not finished."""
    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}: run `elman train {app.NAME} "
                                f"--run-dir {run_dir}` first")
    return keras.saving.load_model(path)


def evaluate(app, model, data, run_dir=None, config=None):
    """Evaluates on the test split; writes `evaluation.json` into `run_dir` if given.

    Besides the compiled metrics, an app may define `evaluation_report(model, data, run_dir,
    config)` returning more figures (BLEU for translation, SSIM for frames...); they are added
    under the key `report`.
    """
    metrics = model.evaluate(data.test, return_dict=True, verbose=0)
    metrics = {key: float(value) for key, value in metrics.items()}
    if hasattr(app, "evaluation_report"):
        metrics["report"] = app.evaluation_report(model, data, run_dir, config)
    if run_dir is not None:
        (Path(run_dir) / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def format_metrics(metrics):
    """`key=value` for the numeric metrics of `evaluate`, for one line of console output."""
    return ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()
                     if isinstance(value, float))
