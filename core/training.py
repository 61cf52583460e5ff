"""Training and evaluation, written once for every app.

A run directory holds everything a run produces:

    config.json        the resolved config and the preset it started from (`elman train
                       --config` accepts it)
    command.txt        the command line that started the run
    backup/            BackupAndRestore's state: an interrupted run resumes from its last epoch
    best.keras         the best model so far by the monitored metric (`monitor`)
    model.keras        the final model (the best weights when early stopping restored them)
    training.csv       one row of metrics per epoch (appended across resumes)
    tensorboard/       TensorBoard logs: `tensorboard --logdir RUN_DIR/tensorboard`
    metrics.json       the metrics of the best epoch (the weights saved), epochs run, time
    evaluation.json    the test metrics written by `elman evaluate`

A run is repeatable: the same config (seed included) on the same machine gives the same
weights, bit for bit (`make_repeatable`).
"""

import contextlib
import json
import shlex
import sys
import time
from pathlib import Path

import keras

from elman.config import save_config


def write_run_record(run_dir, app, config, command=None, preset="default"):
    """Writes the resolved config, the preset it started from and the command line (default:
    `sys.argv`) into the run directory."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.json", app.NAME, preset=preset)
    (run_dir / "command.txt").write_text(shlex.join(command or sys.argv) + "\n")


def make_repeatable(seed):
    """Seeds Python, NumPy, TensorFlow and Keras with `seed`. Every random draw of a run (initial
    weights, dropout, shuffling) follows from it, in an order that depends only on the code, so
    the same run twice on the same machine gives the same weights, bit for bit (tested across
    processes; on the full IMDB data too, where `tf.config.experimental.enable_op_determinism`
    changed no bit and so is not used). Another machine (another CPU, other oneDNN kernels)
    may round differently and end elsewhere: figures are reported over several seeds."""
    keras.utils.set_random_seed(seed)


def monitor(app, config=None):
    """The validation metric that checkpoints, early stopping, the best epoch and the tuner go
    by: the config's `monitor` where the app's config has that field and it is set, else the
    app's MONITOR."""
    return getattr(config, "monitor", "") or app.MONITOR


def monitor_mode(app, config=None):
    """`"min"` when the monitored metric is a loss, else `"max"`: the one rule for every
    callback, the tuner's objective and the best epoch."""
    return "min" if "loss" in monitor(app, config) else "max"


def _callbacks(app, config, run_dir, model, chief=True, state_dir=None):
    """The run's callbacks. On a worker of a multi-worker run other than the chief (`chief`
    false) only those that must run everywhere: the backup (kept in `state_dir`), weight
    averaging and early stopping (every worker stops at the same epoch, from the same
    all-reduced validation metrics)."""
    metric, mode = monitor(app, config), monitor_mode(app, config)
    # With an optimizer that keeps an average of the weights (`use_ema`, as IMDB's weight
    # averaging does), validation, the best checkpoint and early stopping see the averaged
    # weights, and the model keeps them at the end. Listed after BackupAndRestore, so that the
    # backup holds the raw weights a resumed run goes on from.
    averaging = ([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)]
                 if getattr(model.optimizer, "use_ema", False) else [])
    backup = keras.callbacks.BackupAndRestore(str(Path(state_dir or run_dir) / "backup"))
    stopping = keras.callbacks.EarlyStopping(monitor=metric, mode=mode, patience=config.patience,
                                             restore_best_weights=True)
    if not chief:
        return [backup, *averaging, stopping]
    return [
        backup,
        *averaging,
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=metric, mode=mode,
                                        save_best_only=True),
        stopping,
        keras.callbacks.CSVLogger(str(run_dir / "training.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard")),
    ]


def train(app, config, run_dir, data=None, model=None, extra_callbacks=(), verbose="auto",
          command=None, preset="default", recurrent_layer=None, strategy=None):
    """Trains `app` with `config`, writing everything into `run_dir`.

    Running the same command again after an interruption resumes from the last completed epoch.

    Args:
        app: the app module.
        config: the app's `Config`.
        run_dir: the run directory (created if missing).
        data: the app's data, if already loaded (else `app.load_data(config)`).
        model: a compiled model to train instead of `app.build_model(config, data)`.
        extra_callbacks: more Keras callbacks, e.g. the BPTT monitor.
        verbose: Keras's progress bar setting.
        command: the command line to record (default: `sys.argv`).
        preset: the name of the preset the config started from, recorded in config.json.
        recurrent_layer: passed to `app.build_model` (a benchmark's reference layer); the
            model is built exactly as `elman train` builds it, in the same order of random
            draws, so that a benchmark's figures are those of `elman train`.
        strategy: a `tf.distribute` strategy to build and train the model under
            (`elman.distribute.make_strategy`); the config's batch size is the global one.
            In a multi-worker run only the chief writes the run directory.

    Returns:
        `(model, history)`: the trained model and the Keras `History` of the fit.
    """
    from elman import distribute

    run_dir = Path(run_dir)
    chief = distribute.is_chief(strategy)
    if chief:
        write_run_record(run_dir, app, config, command, preset)
    state_dir = distribute.worker_dir(run_dir, strategy)
    make_repeatable(config.seed)
    if data is None:
        data = app.load_data(config)
    print(f"[elman] {app.NAME}: data from {data.source}")
    if model is None:
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = app.build_model(config, data, recurrent_layer=recurrent_layer)
    print(f"[elman] {app.NAME}: {model.count_params():,} parameters; run directory {run_dir}"
          + (f"; {strategy.num_replicas_in_sync} replicas in sync"
             + ("" if chief else f" (a worker: it writes only {state_dir})")
             if strategy else ""))
    started = time.perf_counter()
    try:
        history = model.fit(
            data.train, validation_data=data.validation, epochs=config.epochs,
            shuffle=False,  # The app's tf.data pipeline shuffles.
            callbacks=[*_callbacks(app, config, run_dir, model, chief, state_dir),
                       *extra_callbacks],
            verbose=verbose)
    except KeyboardInterrupt:
        print(f"\n[elman] interrupted: completed epochs are kept in {run_dir / 'backup'}; "
              "run the same command again to resume.", file=sys.stderr)
        raise
    # Early stopping restored the best epoch's weights, so its metrics describe the model.
    scores = history.history.get(monitor(app, config)) or [0.0]
    best = scores.index(min(scores) if monitor_mode(app, config) == "min" else max(scores))
    final = {key: float(values[best]) for key, values in history.history.items()}
    final.update(best_epoch=history.epoch[best] if history.epoch else None,
                 epochs_run=len(history.epoch),
                 training_seconds=time.perf_counter() - started)
    if chief:
        (run_dir / "metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        model.save(run_dir / "model.keras")
    return model, history


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
