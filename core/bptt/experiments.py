"""Long-range experiments: which Elman settings can BPTT train, and how far back?

`elman bptt experiment adding` (or `copy`) trains one small Elman network per (setting, sequence
length), on the synthetic tasks of `elman.bptt.tasks`, the same way and for the same number of
steps, then writes into its output folder:

    results.json      every run: final test MSE or accuracy, loss curve, gradient norms
    results.csv       the table printed at the end (one row per setting, one column per length)
    score_vs_length.png        test MSE (adding) or recall accuracy (copy) against length
    gradient_norms.png         ||dL/ds_t|| against steps back, at initialization and trained
    loss_curves.png            training loss with and without gradient clipping

Finished runs are kept in `results.json`: an interrupted experiment resumes where it stopped.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from elman import bptt
from elman.bptt import tasks
from elman.bptt.settings import EXPERIMENTS, SETTINGS, ExperimentConfig  # noqa: F401
from elman.layers import ElmanCell, TruncatedBackprop


def build_model(experiment, setting, sequence_length, config):
    """The Elman network for one run, compiled.

    adding: `(batch, time, 2)` -> `o_T` `(batch, 1)`, linear g, MSE loss.
    copy: `(batch, time, 10)` -> `o_t` `(batch, time, 10)`, softmax g, cross-entropy at every step.
    """
    copy = experiment == "copy"
    features = tasks.COPY_CLASSES if copy else 2
    cell = ElmanCell(
        config.units, activation=setting.activation,
        output_units=tasks.COPY_CLASSES if copy else 1,
        output_activation="softmax" if copy else None,
        recurrent_initializer=(keras.initializers.Identity() if setting.identity_init
                               else keras.initializers.Orthogonal(seed=config.seed)),
        kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed + 1),
        output_initializer=keras.initializers.GlorotUniform(seed=config.seed + 2))
    if setting.truncate:
        cell = TruncatedBackprop(cell, setting.truncate)
    model = keras.Sequential([
        keras.Input((sequence_length, features)),
        keras.layers.RNN(cell, return_sequences=copy, name="elman"),
    ], name=f"{experiment}_elman")
    optimizer = keras.optimizers.Adam(config.learning_rate, clipnorm=setting.clipnorm)
    loss = "sparse_categorical_crossentropy" if copy else "mse"
    model.compile(optimizer, loss, jit_compile=config.jit_compile)
    return model


def make_data(experiment, length, count, seed):
    if experiment == "adding":
        return tasks.adding_problem(count, length, seed)
    return tasks.copy_memory(count, length, seed)


def _score(experiment, model, inputs, targets):
    predictions = model.predict(inputs, batch_size=256, verbose=0)
    if experiment == "adding":
        return float(np.mean((predictions - targets) ** 2))
    return tasks.copy_accuracy(targets, predictions)


def _gradient_norms(model, inputs, targets):
    report = bptt.inspect(model, inputs, targets)[0]
    return [float(v) for v in report.gradient_norms], report.spectral_radius


def run_one(experiment, setting_name, length, config):
    """Trains and scores one (setting, length); returns a JSON-ready dict."""
    setting = SETTINGS[setting_name]
    keras.utils.set_random_seed(config.seed)
    train_inputs, train_targets = make_data(experiment, length, config.train_sequences,
                                            config.seed)
    test_inputs, test_targets = make_data(experiment, length, config.test_sequences,
                                          config.seed + 1)
    model = build_model(experiment, setting, train_inputs.shape[1], config)
    probe = slice(0, 64)
    initial_norms, initial_radius = _gradient_norms(model, test_inputs[probe],
                                                    test_targets[probe])
    # 20 "epochs" of steps/20 optimizer steps each give the loss curve its points.
    epochs = 20
    steps_per_epoch = max(1, config.steps // epochs)
    data = (tf.data.Dataset.from_tensor_slices((train_inputs, train_targets))
            .shuffle(len(train_inputs), seed=config.seed).repeat()
            .batch(config.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    started = time.perf_counter()
    history = model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=0,
                        shuffle=False,  # The dataset shuffles.
                        callbacks=[keras.callbacks.TerminateOnNaN()])
    seconds = time.perf_counter() - started
    losses = [float(v) for v in history.history["loss"]]
    diverged = not all(math.isfinite(v) for v in losses)
    score = float("nan") if diverged else _score(experiment, model, test_inputs, test_targets)
    if diverged or not math.isfinite(score):
        final_norms, final_radius = [], float("nan")
    else:
        final_norms, final_radius = _gradient_norms(model, test_inputs[probe],
                                                    test_targets[probe])
    return {"experiment": experiment, "setting": setting_name, "length": length,
            "sequence_steps": int(train_inputs.shape[1]),
            "score": score, "metric": "test_mse" if experiment == "adding" else "recall_accuracy",
            "diverged": diverged, "losses": losses, "seconds": seconds,
            "optimizer_steps": steps_per_epoch * len(losses),
            "initial_gradient_norms": initial_norms, "final_gradient_norms": final_norms,
            "initial_spectral_radius": initial_radius, "final_spectral_radius": final_radius}


def _key(setting, length):
    return f"{setting}@{length}"


def run_experiment(experiment, config, output_dir, log=print):
    """Runs every (setting, length) not yet in `output_dir/results.json`, then writes the table
    and the plots. Returns the results dict keyed by `"setting@length"`."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of {EXPERIMENTS}")
    unknown = [name for name in config.settings if name not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    if any(length < 2 for length in config.lengths):
        raise ValueError(f"lengths must be integers >= 2, received {config.lengths}")
    for name in ("steps", "units", "batch_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be a positive integer, "
                             f"received {name}={getattr(config, name)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "results.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    # Runs can be added (more lengths or settings) but not mixed with another training recipe.
    recipe = {key: value for key, value in dataclasses.asdict(config).items()
              if key not in ("lengths", "settings")}
    previous = {key: value for key, value in saved.get("config", recipe).items()
                if key not in ("lengths", "settings")}
    if previous != recipe:
        raise ValueError(f"{path} holds runs made with another config ({previous}); use "
                         "another --output folder or delete it")
    results = saved.get("runs", {})
    todo = [(s, n) for s in config.settings for n in config.lengths if _key(s, n) not in results]
    # Each run builds a new model, so tf.function retraces by design: silence its warning.
    tf.get_logger().setLevel("ERROR")
    log(f"[elman bptt] {experiment}: {len(results)} runs done, {len(todo)} to go; "
        f"results in {output_dir}")
    for index, (setting, length) in enumerate(todo, 1):
        result = run_one(experiment, setting, length, config)
        results[_key(setting, length)] = result
        config_record = dict(recipe, lengths=list(config.lengths),
                             settings=list(config.settings))
        # Written after every run, atomically, so an interruption loses at most one run.
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps({"config": config_record, "runs": results}, indent=1))
        temporary.replace(path)
        status = "diverged" if result["diverged"] else f"{result['metric']} {result['score']:.4f}"
        log(f"  [{index}/{len(todo)}] {setting:12s} length {length:4d}: {status} "
            f"({result['seconds']:.0f} s)")
    selected = {key: value for key, value in results.items()
                if value["setting"] in config.settings and value["length"] in config.lengths}
    table = format_table(experiment, selected, config)
    (output_dir / "results.csv").write_text(table_csv(selected, config))
    log(table)
    plot_results(experiment, selected, config, output_dir)
    log(f"[elman bptt] plots: {', '.join(sorted(p.name for p in output_dir.glob('*.png')))}")
    return selected


def _cell(result):
    if result["diverged"]:
        return "diverged"
    return f"{result['score']:.4f}"


def _row(results, setting, config, missing):
    """One setting's cells, one per length."""
    return [_cell(results[_key(setting, n)]) if _key(setting, n) in results else missing
            for n in config.lengths]


def format_table(experiment, results, config):
    """The results as a text table: settings as rows, lengths as columns."""
    metric = ("test MSE (always answering 1: 0.167)" if experiment == "adding"
              else "recall accuracy (guessing: 0.125)")
    lines = [f"{experiment}: {metric}, {config.steps} steps of {config.batch_size}, "
             f"{config.units} units",
             f"{'setting':14s}" + "".join(f"{'T=' + str(n):>10s}" for n in config.lengths)]
    for setting in config.settings:
        lines.append(f"{setting:14s}" + "".join(f"{c:>10s}"
                                                for c in _row(results, setting, config, "-")))
    return "\n".join(lines)


def table_csv(results, config):
    rows = ["setting,description," + ",".join(str(n) for n in config.lengths)]
    for setting in config.settings:
        rows.append(f"{setting},{SETTINGS[setting].description},"
                    + ",".join(_row(results, setting, config, "")))
    return "\n".join(rows) + "\n"


def plot_results(experiment, results, config, output_dir):
    """Writes the three PNGs described in the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    output_dir = Path(output_dir)
    adding = experiment == "adding"
    colors = dict(zip(SETTINGS, pyplot.rcParams["axes.prop_cycle"].by_key()["color"]))

    figure, axes = pyplot.subplots(figsize=(7, 4.5), constrained_layout=True)
    for setting in config.settings:
        points = [(n, results[_key(setting, n)]["score"]) for n in config.lengths
                  if _key(setting, n) in results and not results[_key(setting, n)]["diverged"]]
        if points:
            axes.plot(*zip(*points), "o-", label=setting, color=colors[setting])
    if adding:
        axes.axhline(tasks.ADDING_BASELINE_MSE, color="gray", ls="--", label="always 1")
        axes.set_yscale("log")
    else:
        axes.axhline(1 / tasks.SYMBOLS, color="gray", ls="--", label="guessing")
    axes.set(xscale="log", xlabel="sequence length" if adding else "delay",
             ylabel="test MSE (lower is better)" if adding else "recall accuracy",
             title=f"{experiment}: after {config.steps} steps (diverged runs omitted)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(output_dir / "score_vs_length.png", dpi=110)
    pyplot.close(figure)

    longest = max(config.lengths)
    figure, panels = pyplot.subplots(1, 2, figsize=(12, 4.5), sharey=True,
                                     constrained_layout=True)
    for panel, stage in zip(panels, ("initial", "final")):
        for setting in config.settings:
            result = results.get(_key(setting, longest))
            norms = np.asarray(result[f"{stage}_gradient_norms"]) if result else np.array([])
            if norms.size:
                steps_back = np.arange(norms.size)[::-1]
                panel.semilogy(steps_back, np.maximum(norms, 1e-30), label=setting,
                               color=colors[setting])
        panel.set(xlabel="steps back from the last step (T - t)",
                  title=("at initialization" if stage == "initial" else "after training")
                  + f", T={longest}")
        panel.invert_xaxis()
        panel.grid(True, which="both", alpha=0.3)
    panels[0].set_ylabel("||dL/ds_t|| (mean over 64 test sequences)")
    panels[0].legend(fontsize="small")
    figure.savefig(output_dir / "gradient_norms.png", dpi=110)
    pyplot.close(figure)

    pairs = [(a, b) for a, b in (("tanh", "tanh-noclip"), ("relu", "relu-noclip"),
                                 ("irnn", "irnn-noclip"))
             if a in config.settings and b in config.settings]
    if pairs:
        figure, panels = pyplot.subplots(1, len(pairs), figsize=(5 * len(pairs), 4),
                                         constrained_layout=True, squeeze=False)
        for panel, pair in zip(panels[0], pairs):
            for setting in pair:
                result = results.get(_key(setting, longest))
                if result:
                    losses = np.asarray(result["losses"], dtype=float)
                    steps = np.arange(1, losses.size + 1) * (config.steps // 20)
                    style = "-" if setting == pair[0] else "--"
                    label = setting + (" (diverged)" if result["diverged"] else "")
                    panel.plot(steps, losses, style, label=label, color=colors[setting])
            panel.set(yscale="log", xlabel="optimizer steps", ylabel="training loss",
                      title=f"T={longest}: {pair[0]} with / without clipping")
            panel.grid(True, which="both", alpha=0.3)
            panel.legend(fontsize="small")
        figure.savefig(output_dir / "loss_curves.png", dpi=110)
        pyplot.close(figure)
