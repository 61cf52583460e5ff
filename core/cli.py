"""The `elman` console script: verb first, then the app. It parses and dispatches, nothing more."""

import argparse
import os
import sys
import textwrap
from pathlib import Path

DESCRIPTION = """\
Elman recurrent networks in Keras 3: train, evaluate, tune, export and serve one app per
recurrent topology. Without --data-dir or $ELMAN_DATA_DIR every app runs on the small sample it
ships; with them, on the real dataset.
"""

EPILOG = """\
examples:
  elman demo                                   train every app on its sample, export, predict
  elman presets imdb                           the named configs of an app
  elman train imdb                             the best model measured (needs the data)
  elman train imdb --preset ensemble           a named variant
  elman train imdb --preset smoke              a tiny run, seconds
  elman train imdb --set hidden_units=128      the defaults, with an override
  elman evaluate imdb                          test metrics of runs/imdb
  elman tune imdb --max-trials 8               random search; best config in runs/imdb-tune
  elman train imdb --config runs/imdb-tune/best_config.json
  elman export imdb                            saved_models/imdb/<next version>/
  elman predict imdb "A wonderful film."       run the exported model
  elman serve                                  TF Serving's REST API on 127.0.0.1:8501, and
                                               a page to try the models at its /
  elman train translation --set direction=spa-eng
  elman evaluate translation                   BLEU and chrF, greedy and beam search
  elman translate "Where is the station?" --beam-width 4
  elman train imdb --bptt                      also log BPTT gradient figures to TensorBoard
  elman bptt inspect runs/imdb                 gradient norm per step of a trained run (PNG)
  elman bptt experiment adding                 the adding problem across lengths and settings
"""


def _app_names():
    from elman.apps import APP_MODULES

    return list(APP_MODULES)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose help can end with every app's presets, read only when the help
    is printed (reading them imports TensorFlow)."""

    lists_presets = False

    def format_help(self):
        text = super().format_help()
        if not self.lists_presets:
            return text
        from elman.apps import get_app

        lines = [f"  {name}: {', '.join(get_app(name).PRESETS)}" for name in _app_names()]
        return (text + "\npresets (--preset NAME; `elman presets APP` shows what each "
                "changes):\n" + "\n".join(lines) + "\n")


def _add_config_arguments(parser):
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override one config value; repeatable; unknown keys are an error")
    parser.add_argument("--config", type=Path, help="a config file, e.g. a tuner's "
                        "best_config.json or a run's config.json")
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help="start from this named config of the app (default: %(default)s, the "
                        "best recipe measured; listed below); --config and --set apply on top")
    parser.add_argument("--data-dir", help="data directory (default: $ELMAN_DATA_DIR; "
                        "without either, the shipped sample)")


def _evaluation_overrides(app, config, overrides):
    """`config` with `overrides` applied, where each may change only one of the app's
    `EVALUATION_SETTINGS` (the settings that do not change the trained model)."""
    import dataclasses

    from elman.config import apply_overrides

    allowed = getattr(app, "EVALUATION_SETTINGS", ())
    changed = apply_overrides(config, overrides)
    for field in dataclasses.fields(config):
        if field.name not in allowed and getattr(changed, field.name) != getattr(config,
                                                                                  field.name):
            raise ValueError(f"elman evaluate {app.NAME} --set changes only settings that do "
                             f"not change the trained model ("
                             f"{', '.join(allowed) or 'this app has none'}), received "
                             f"{field.name!r}; retrain with `elman train {app.NAME} --set "
                             f"{field.name}=...` instead")
    return changed


def _add_run_dir(parser, suffix=""):
    parser.add_argument("--run-dir", type=Path,
                        help=f"run directory (default: runs/APP{suffix})")


def _add_base_dir(parser):
    parser.add_argument("--base-dir", type=Path, default=Path("saved_models"),
                        help="folder of the versioned SavedModels (default: saved_models)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="elman", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)
    apps = _app_names()

    train = commands.add_parser("train", help="train an app; rerun to resume an interrupted run",
                                description="Train an app. Checkpoints, logs, TensorBoard and "
                                "the resolved config go into the run directory; running the same "
                                "command again after an interruption resumes it.")
    train.lists_presets = True
    train.add_argument("app", choices=apps)
    _add_config_arguments(train)
    _add_run_dir(train)
    train.add_argument("--bptt", action="store_true",
                       help="log BPTT figures of the first validation batch to TensorBoard "
                       "every epoch (gradient norm per step, spectral radius of W; see "
                       "elman.bptt.BPTTMonitor)")
    train.add_argument("--strategy", choices=("none", "mirrored", "multi-worker"),
                       default="none",
                       help="tf.distribute strategy: mirrored (every device of this machine, or "
                       "--devices), multi-worker (one process per machine, placed by TF_CONFIG; "
                       "start the same command on every worker). The config's batch_size is "
                       "the global one (docs/scale-out.md)")
    train.add_argument("--devices", type=lambda text: [item for item in text.split(",") if item],
                       help="for --strategy mirrored: comma-separated devices, e.g. "
                       "/gpu:0,/gpu:1 (default: all)")

    evaluate = commands.add_parser("evaluate", help="test metrics of a trained run",
                                   description="Evaluate RUN_DIR/model.keras on the test split "
                                   "(with the run's own config) and write evaluation.json.")
    evaluate.add_argument("app", choices=apps)
    evaluate.add_argument("--data-dir", help="data directory (default: the run's)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[],
                          metavar="KEY=VALUE",
                          help="change a setting that does not change the trained model, e.g. "
                          "beam_width=5 or length_penalty=0.3 for captioning and translation")
    _add_run_dir(evaluate)

    tune = commands.add_parser("tune", help="hyperparameter search with keras-tuner",
                               description="Random search over the app's search space. Rerun "
                               "to resume; the best config is written to "
                               "RUN_DIR/best_config.json for `elman train --config`. Distributed: "
                               "the same command on a chief and on workers, with keras-tuner's "
                               "KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
                               "KERASTUNER_ORACLE_PORT (docs/scale-out.md).")
    tune.lists_presets = True
    tune.add_argument("app", choices=apps)
    tune.add_argument("--max-trials", type=int, default=10, help="trials in all (default: 10)")
    _add_config_arguments(tune)
    _add_run_dir(tune, "-tune")

    export = commands.add_parser("export", help="write a versioned SavedModel for TF Serving",
                                 description="Export RUN_DIR/model.keras to "
                                 "BASE_DIR/APP/VERSION/ with named serving signatures.")
    export.add_argument("app", choices=apps)
    export.add_argument("--version", type=int, help="version number (default: the next one)")
    _add_run_dir(export)
    _add_base_dir(export)

    predict = commands.add_parser("predict", help="run the exported SavedModel on inputs",
                                  description="Load the latest (or --version) SavedModel of the "
                                  "app, exactly as TF Serving would, and print its predictions.")
    predict.add_argument("app", choices=apps)
    predict.add_argument("inputs", nargs="+", help="what the app reads, e.g. review texts")
    predict.add_argument("--version", type=int, help="version number (default: the latest)")
    _add_base_dir(predict)

    serve = commands.add_parser(
        "serve", help="serve the exports with TensorFlow Serving's REST API and a page to try "
        "them",
        description="Serve the newest version of every model under --base-dir with TensorFlow "
        "Serving's REST API (POST /v1/models/NAME:predict, GET /v1/models/NAME[/metadata]), "
        "loading new versions as they are exported. A client written for TF Serving works "
        "unchanged; `elman export` also writes the models.config for the tensorflow/serving "
        "docker image (see the README). Open http://127.0.0.1:8501/ in a browser for a page "
        "with one panel per app: type a review or a sentence, drop a photo, play a sequence.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8501,
                       help="port (default: 8501, TF Serving's REST port; 0: a free one)")
    serve.add_argument("--poll-seconds", type=float, default=1.0,
                       help="how often to look for new versions (default: 1)")
    serve.add_argument("--max-request-mb", type=float, default=32.0,
                       help="largest request body accepted, in MiB (default: 32)")
    _add_base_dir(serve)

    translate = commands.add_parser(
        "translate", help="translate sentences with the exported translation model",
        description="Load the latest (or --version) SavedModel of the translation app and "
        "translate each sentence: greedily (signature serving_default), or with beam search "
        "(signature beam_search) when --beam-width is above 1.")
    translate.add_argument("inputs", nargs="+", metavar="sentence")
    translate.add_argument("--beam-width", type=int, default=1,
                           help="1: greedy; more: beam search with that many beams (default: 1)")
    translate.add_argument("--version", type=int, help="version number (default: the latest)")
    _add_base_dir(translate)

    presets = commands.add_parser("presets", help="list an app's named configs",
                                  description="List the app's presets, each with the settings "
                                  "where it differs from the defaults (the best recipe "
                                  "measured).")
    presets.add_argument("app", choices=apps)

    demo = commands.add_parser("demo", help="train, export and predict with every app",
                               description="The main job, in minutes: for every app, train the "
                               "demo preset (on the real data when $ELMAN_DATA_DIR, --data-dir "
                               "or --download gives it, else on the data elman ships or "
                               "generates), evaluate it against a trivial baseline, export a "
                               "SavedModel, show predictions and end with a summary.")
    demo.lists_presets = True
    demo.add_argument("--apps", nargs="+", choices=apps, default=apps)
    demo.add_argument("--preset", metavar="NAME", default="demo",
                      help="the preset of every app (default: demo)")
    demo.add_argument("--data-dir", help="data directory (default: $ELMAN_DATA_DIR)")
    demo.add_argument("--download", action="store_true",
                      help="fetch the canonical data sets (IMDB, Anki, MNIST, Flickr8k: about "
                      f"1.3 GB) into the data directory (default: {DOWNLOAD_DIR}) and run on "
                      "them; without a network, say so and use the shipped data")
    demo.add_argument("--runs-dir", type=Path, default=Path("runs"),
                      help="where the run directories go (default: runs)")
    _add_base_dir(demo)

    bptt = commands.add_parser(
        "bptt", help="backpropagation through time: inspect a run, run long-range experiments",
        description="Look at backpropagation through time: how the gradient of the loss "
        "changes from the last step back to the first, and what tanh, relu, IRNN, clipping and "
        "truncation do to it.")
    bptt_commands = bptt.add_subparsers(dest="bptt_command", required=True, metavar="ACTION")
    inspect = bptt_commands.add_parser(
        "inspect", help="plot ||dL/ds_t|| per step for a trained run",
        description="Load RUN_DIR/model.keras and plot, for a validation batch, the norm of the "
        "loss's gradient at every hidden state and of the product of step Jacobians, per Elman "
        "layer, with the spectral radius and largest singular value of W.")
    inspect.add_argument("run_dir", type=Path, help="a run directory written by elman train")
    inspect.add_argument("--data-dir", help="data directory (default: the run's)")
    inspect.add_argument("--output", type=Path, help="the PNG (default: RUN_DIR/bptt.png)")
    inspect.add_argument("--batch-size", type=int, help="validation examples to use "
                         "(default: the run's batch size)")
    from elman.bptt.settings import EXPERIMENTS, SETTINGS, ExperimentConfig

    defaults = ExperimentConfig()
    experiment = bptt_commands.add_parser(
        "experiment", help="train Elman networks on the adding or copy-memory task",
        description="Train one small Elman network per (setting, sequence length) on a "
        "synthetic long-range task and write a table (results.csv), results.json and plots: "
        "score against length, gradient norm against steps back, loss with and without "
        "clipping. Settings: " + "; ".join(f"{name}: {setting.description}"
                                           for name, setting in SETTINGS.items())
        + ". Rerun the same command to resume an interrupted experiment.")
    experiment.add_argument("name", choices=EXPERIMENTS,
                            help="adding: the adding problem (MSE); copy: copy memory (accuracy)")
    experiment.add_argument("--lengths", type=int, nargs="+", default=list(defaults.lengths),
                            help="sequence lengths (copy: delays) (default: %(default)s)")
    experiment.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                            default=list(defaults.settings), metavar="SETTING",
                            help="any of: %(choices)s (default: all)")
    experiment.add_argument("--steps", type=int, default=defaults.steps,
                            help="optimizer steps per run (default: %(default)s)")
    experiment.add_argument("--units", type=int, default=defaults.units,
                            help="state size (default: %(default)s)")
    experiment.add_argument("--batch-size", type=int, default=defaults.batch_size)
    experiment.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    experiment.add_argument("--seed", type=int, default=defaults.seed)
    experiment.add_argument("--output", type=Path,
                            help="output folder (default: runs/bptt-NAME)")
    return parser


def _resolve_config(app, args):
    from elman.apps import get_preset
    from elman.config import apply_overrides, load_config

    config = get_preset(app, args.preset)
    if args.config is not None:
        config = load_config(app.Config, args.config, app.NAME, base=config)
    config = apply_overrides(config, args.overrides)
    if args.data_dir:
        config = apply_overrides(config, [f"data_dir={args.data_dir}"])
    return config


def _print_prediction(app, inputs, base_dir, version=None, signature="serving_default",
                      **extra):
    from elman import export

    outputs, version = export.predict(app, inputs, base_dir, version, signature, **extra)
    print(f"[elman] {app.NAME}: predictions of {base_dir / app.NAME / str(version)}")
    for line in app.describe_prediction(inputs, outputs):
        print("  " + line)


DOWNLOAD_DIR = Path("~/.elman/data")


def _demo_data_dir(args):
    """The demo's data directory: `--data-dir` or $ELMAN_DATA_DIR; with `--download`, that or
    DOWNLOAD_DIR (created), or None (the shipped data) when no network answers."""
    from elman.datasets import DATA_DIR_VARIABLE, network_problem, resolve_data_dir

    if not args.download:
        return resolve_data_dir(args.data_dir)
    problem = network_problem()
    if problem:
        print(f"[elman] demo: no download, {problem}: using the shipped data")
        return None
    data_dir = Path(args.data_dir or os.environ.get(DATA_DIR_VARIABLE) or DOWNLOAD_DIR)
    data_dir = data_dir.expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"[elman] demo: the data sets missing from {data_dir} are downloaded there first "
          "(once; their loaders show the progress)")
    return data_dir


# Seconds each app's demo preset took on the shipped data, 2 CPU cores, 2026-12-07: what the
# demo's estimate of the time left starts from, scaled by how fast this machine has been.
DEMO_SECONDS = {"imdb": 26, "translation": 118, "nextframe": 30, "captioning": 71}


def _demo_progress(apps, number, elapsed, estimate=True):
    """`"N s so far, about M s left"` before the `number`-th (1-based) of `apps`."""
    if not estimate:
        return f"{elapsed:.0f} s so far"
    done, left = sum(DEMO_SECONDS[name] for name in apps[:number - 1]), \
        sum(DEMO_SECONDS[name] for name in apps[number - 1:])
    pace = elapsed / done if done and elapsed > 0 else 1.0
    return f"{elapsed:.0f} s so far, about {left * pace:.0f} s left"


def _demo_train(app, config, run_dir, args, preset):
    from elman import training

    return training.train(app, config, run_dir, verbose=2, command=args.command_line,
                          preset=preset)[0]


def _demo(args):
    import dataclasses
    import shlex
    import time

    from elman import export, training
    from elman.apps import get_app, get_preset

    data_dir = _demo_data_dir(args)
    preset = args.preset
    started, rows = time.perf_counter(), []
    # The time left is estimated for what was measured: the demo presets on the shipped data.
    estimate = preset == "demo" and not data_dir
    for number, name in enumerate(args.apps, 1):
        app = get_app(name)
        config = get_preset(app, preset)
        if data_dir:
            config = dataclasses.replace(config, data_dir=str(data_dir))
        print(f"\n=== {number}/{len(args.apps)} {name}: the {preset} preset on " + (
            f"the real data ({data_dir})" if data_dir else "the data elman ships or "
            "generates (elman demo --download, or ELMAN_DATA_DIR, for the real data)")
            + f" ({_demo_progress(args.apps, number, time.perf_counter() - started, estimate)})")
        app_started = time.perf_counter()
        run_dir = args.runs_dir / f"{name}-demo"
        print(f"[elman] {name}: step 1/3, reading the data and training")
        # train() reads the data itself, so that the demo trains exactly what `elman train APP
        # --preset demo` trains (the same random draws in the same order).
        try:
            model = _demo_train(app, config, run_dir, args, preset)
        except FileNotFoundError as error:
            if not args.download:
                raise
            # One failed download costs only its own app the real data.
            print(f"[elman] {name}: using the shipped data, as the real data could not be "
                  f"read or downloaded: {error}")
            config = dataclasses.replace(config, data_dir="")
            model = _demo_train(app, config, run_dir, args, preset)
        print(f"[elman] {name}: step 2/3, evaluating on the test split")
        metrics = training.evaluate(app, model, app.load_data(config), run_dir, config)
        print(f"[elman] {name}: test " + training.format_metrics(metrics))
        print(f"[elman] {name}: step 3/3, exporting and predicting")
        path = export.export(app, model, args.base_dir)
        print(f"[elman] {name}: exported {path}")
        _print_prediction(app, app.EXAMPLES, args.base_dir)
        result, baseline = app.headline(metrics)
        # What to look at: plots, contact sheets, translations side by side.
        pictures = sorted(str(picture) for picture in Path(run_dir).iterdir()
                          if picture.suffix in (".png", ".gif", ".html", ".tsv"))
        rows.append((name, result, baseline, str(path), ", ".join(pictures) or "-",
                     f"elman predict {name} {shlex.quote(app.EXAMPLES[0])}",
                     time.perf_counter() - app_started))
    print(f"\n=== summary: {len(rows)} apps in {time.perf_counter() - started:.0f} s")
    for name, result, baseline, path, pictures, command, seconds in rows:
        print(f"{name} ({seconds:.0f} s)\n  result:      {result}\n  baseline:    {baseline}\n"
              f"  SavedModel:  {path}\n  look at:     {pictures}\n  try:         {command}")
    base = "" if args.base_dir == Path("saved_models") else f" --base-dir {args.base_dir}"
    print(f"serve them with TF Serving's REST API: elman serve{base}, then open "
          f"http://127.0.0.1:8501/ to try them in a browser, or e.g.\n"
          f"  curl http://127.0.0.1:8501/v1/models/{rows[0][0]}/metadata   (README: Serving)")


def _bptt(args):
    if args.bptt_command == "inspect":
        from elman import bptt

        reports, path = bptt.inspect_run(args.run_dir, args.data_dir, args.output,
                                         args.batch_size)
        for report in reports:
            print("  " + report.summary())
        print(f"[elman] bptt: plot written to {path}")
        return
    from elman.bptt.experiments import run_experiment
    from elman.bptt.settings import ExperimentConfig

    config = ExperimentConfig(lengths=tuple(args.lengths), settings=tuple(args.settings),
                              steps=args.steps, units=args.units, batch_size=args.batch_size,
                              learning_rate=args.learning_rate, seed=args.seed)
    run_experiment(args.name, config, args.output or Path("runs") / f"bptt-{args.name}")


def dispatch(args):
    if args.command == "demo":
        return _demo(args)
    if args.command == "serve":
        from elman import serving

        return serving.serve(args.base_dir, args.host, args.port, args.poll_seconds,
                             int(args.max_request_mb * 1024 * 1024))
    if args.command == "bptt":
        return _bptt(args)
    if args.command == "translate":
        from elman.apps import get_app

        if args.beam_width < 1:
            raise ValueError(f"--beam-width must be at least 1, received {args.beam_width}")
        if args.beam_width == 1:
            return _print_prediction(get_app("translation"), args.inputs, args.base_dir,
                                     args.version)
        return _print_prediction(get_app("translation"), args.inputs, args.base_dir,
                                 args.version, "beam_search", beam_width=args.beam_width)

    from elman import export, training
    from elman.apps import get_app

    app = get_app(args.app)
    if args.command == "predict":
        return _print_prediction(app, args.inputs, args.base_dir, args.version)
    if args.command == "presets":
        from elman.apps import describe_presets

        print(f"[elman] {app.NAME} presets (--preset NAME), each with what it changes:")
        for line in describe_presets(app):
            print("  " + line)
        return None
    run_dir = args.run_dir or Path("runs") / (app.NAME + ("-tune" if args.command == "tune" else ""))
    if args.command == "train":
        config = _resolve_config(app, args)
        data, callbacks = None, []
        if args.bptt:
            from elman.bptt import BPTTMonitor

            data = app.load_data(config)
            inputs, targets = next(iter(data.validation))
            callbacks.append(BPTTMonitor(inputs, targets, run_dir / "tensorboard"))
        from elman import distribute

        strategy = distribute.make_strategy(args.strategy, args.devices)
        training.train(app, config, run_dir, data=data, extra_callbacks=callbacks,
                       command=args.command_line, preset=args.preset, strategy=strategy)
        if distribute.is_chief(strategy):
            print(f"[elman] {app.NAME}: model saved to {run_dir / 'model.keras'}")
    elif args.command == "evaluate":
        config = training.load_run_config(app, run_dir, args.data_dir)
        config = _evaluation_overrides(app, config, args.overrides)
        model = training.load_trained_model(app, run_dir)
        metrics = training.evaluate(app, model, app.load_data(config), run_dir, config)
        print(f"[elman] {app.NAME}: test " + training.format_metrics(metrics))
    elif args.command == "tune":
        from elman import tuning

        best = tuning.tune(app, _resolve_config(app, args), run_dir, max_trials=args.max_trials,
                           command=args.command_line, preset=args.preset)
        if best is None:
            print(f"[elman] {app.NAME}: this worker's trials are done; the chief writes "
                  f"{run_dir / 'best_config.json'}")
        else:
            print(f"[elman] {app.NAME}: best config written to {run_dir / 'best_config.json'}:")
            print(textwrap.indent(str(best), "  "))
    elif args.command == "export":
        model = training.load_trained_model(app, run_dir)
        path = export.export(app, model, args.base_dir, args.version)
        print(f"[elman] {app.NAME}: exported {path}")


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = ["elman", *argv]
    try:
        dispatch(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"elman: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # A model that rejects its input.
        import tensorflow as tf  # Already loaded by whatever raised it.

        if not isinstance(error, tf.errors.InvalidArgumentError):
            raise
        from elman.export import model_error_message

        print(f"elman: error: the model rejected the input: {model_error_message(error)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
