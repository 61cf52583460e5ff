"""`elman train --strategy`: the Keras patches (checked against Keras's own functions, so that a
Keras that fixes them is noticed), the global-batch loss under several replicas, TF_CONFIG's
errors, and two localhost workers training IMDB's SMOKE preset through the console script.

Processes bind 127.0.0.1 on free ports, are bounded in time and are ended by the test."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from elman import distribute

TIMEOUT = 420
# The largest weight difference allowed between two workers and one after one epoch of SMOKE:
# float rounding (sums done in another order) carried through an epoch of Adam steps; the
# largest measured, captioning's, was 4.8e-5 (docs/scale-out.md).
TOLERANCE = 1e-4


def run_python(code, timeout=TIMEOUT):
    """Runs `code` in a fresh Python (the logical CPU devices of a MirroredStrategy must be set
    up before TensorFlow starts); returns the completed process."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


TWO_DEVICES = """
    import contextlib, json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from elman import distribute
"""


def test_several_replicas_train_the_model_one_replica_trains():
    # Batches of 5 split 3 + 2 between two replicas: Keras's per-replica mean would weigh the
    # two parts equally; the patched reduction takes the mean over the whole batch.
    result = run_python(TWO_DEVICES + """
    distribute.patch_keras()
    x = np.random.RandomState(0).randn(10, 3).astype("float32")
    y = (x.sum(1) > 0).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    weights = []
    for strategy in (None, tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        keras.utils.set_random_seed(0)
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, "sigmoid")])
            model.compile(keras.optimizers.SGD(0.5), "binary_crossentropy")
        model.fit(data, epochs=3, verbose=0)
        weights.append([w.numpy().tolist() for w in model.weights])
    print(json.dumps(weights))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = json.loads(result.stdout.strip().splitlines()[-1])
    for single, mirrored in zip(one, two):
        np.testing.assert_allclose(mirrored, single, rtol=1e-6, atol=1e-7)


def test_keras_still_has_the_faults_the_patch_replaces():
    # When this fails, Keras has fixed `_maybe_symbolic_build` (a string batch under a
    # strategy): check the multi-worker test without the patch, and retire it.
    result = run_python(TWO_DEVICES + """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    data = tf.data.Dataset.from_tensor_slices((["a good film", "a bad one"] * 4,
                                               [1.0, 0.0] * 4)).batch(4)
    def build():
        vectorize = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=3)
        vectorize.adapt(["a good film", "a bad one"])
        model = keras.Sequential([keras.Input((), dtype="string"), vectorize,
                                  keras.layers.Embedding(10, 2), keras.layers.Flatten(),
                                  keras.layers.Dense(1, "sigmoid")])
        model.compile("sgd", "binary_crossentropy")
        return model
    with strategy.scope():
        model = build()
    try:
        model.fit(data, epochs=1, verbose=0)
        print("KERAS FIT WORKS")
    except Exception as error:
        print("KERAS FAILS", type(error).__name__)
    distribute.patch_keras()
    with strategy.scope():
        model = build()
    model.fit(data, epochs=1, verbose=0)
    print("PATCHED FIT WORKS")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "KERAS FAILS InvalidArgumentError" in result.stdout, result.stdout
    assert "PATCHED FIT WORKS" in result.stdout
    assert distribute.PATCHED_KERAS[0] <= distribute.keras_version() < distribute.PATCHED_KERAS[1]


def test_tf_config_errors_say_what_is_expected(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi-worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON"):
        distribute.cluster_task()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["h:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match="task must be a chief or a worker"):
        distribute.cluster_task()
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.make_strategy("parameter-server")
    assert distribute.make_strategy("none") is None


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def train_command(run_dir, *extra):
    # Dropout off: each replica would draw its own masks, so the runs could not be compared.
    return [sys.executable, "-m", "elman.cli", "train", "imdb", "--preset", "smoke",
            "--set", "word_dropout=0", "--set", "embedding_dropout=0", "--set", "dropout=0",
            "--run-dir", str(run_dir), *extra]


def start_worker(command, cluster, index, log):
    """Worker `index` of `cluster` running `command`, its output in the file `log`."""
    tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                 "TF_CONFIG": tf_config})


def wait_all(processes, timeout=TIMEOUT):
    """The return codes of `processes`; any still running after `timeout`, or when waiting
    fails, is killed."""
    try:
        return [process.wait(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


# Trains every app's SMOKE preset for one epoch, under the strategy named by argv[1], into
# argv[2]/APP. Dropout is off (each replica would draw its own masks), and so is IMDB's
# adversarial perturbation (its size is relative to the norm of a review's embedded words with
# their padding, and each replica pads its part of a batch to its own longest review).
DRIVER = """
import dataclasses, sys
from pathlib import Path
from elman import distribute, training
from elman.apps import APP_MODULES, get_app
strategy = distribute.make_strategy(sys.argv[1])
for name in APP_MODULES:
    app = get_app(name)
    fields = {field.name for field in dataclasses.fields(app.Config)}
    off = {key: 0.0 for key in ("dropout", "word_dropout", "embedding_dropout",
                                "adversarial_epsilon") if key in fields}
    config = dataclasses.replace(app.SMOKE, epochs=1, **off)
    training.train(app, config, Path(sys.argv[2]) / name, verbose=0, strategy=strategy)
"""


def test_two_workers_train_what_one_worker_trains(tmp_path):
    import keras

    from elman.apps import APP_MODULES, get_app

    two, one = tmp_path / "two-workers", tmp_path / "one-worker"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    codes = wait_all([start_worker([sys.executable, "-c", DRIVER, "multi-worker", str(two)],
                                   cluster, index, tmp_path / f"worker-{index}.log")
                      for index in range(2)], timeout=2 * TIMEOUT)
    logs = [(tmp_path / f"worker-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "2 replicas in sync" in logs[0] and "a worker" not in logs[0]
    assert "a worker: it writes only" in logs[1]
    single = subprocess.run([sys.executable, "-c", DRIVER, "none", str(one)],
                            capture_output=True, text=True, timeout=2 * TIMEOUT,
                            env=environment)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]

    for name in APP_MODULES:
        get_app(name)  # Registers the app's classes for loading.
        # The chief writes the run directory; the other worker only its own backup (empty at
        # the end of a finished run).
        assert sorted(path.name for path in (two / name).iterdir()) == sorted(
            path.name for path in (one / name).iterdir()) + ["workers"]
        assert all("worker-1" in str(path) for path in (two / name / "workers").rglob("*"))
        two_model = keras.saving.load_model(two / name / "model.keras")
        one_model = keras.saving.load_model(one / name / "model.keras")
        for two_weight, one_weight in zip(two_model.weights, one_model.weights):
            np.testing.assert_allclose(two_weight.numpy(), one_weight.numpy(), rtol=0,
                                       atol=TOLERANCE,
                                       err_msg=f"{name}: {two_weight.path}")


def test_a_killed_worker_and_its_peers_resume_from_their_backups(tmp_path):
    import time

    run_dir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}

    def start(index, log_name):
        return start_worker(
            train_command(run_dir, "--strategy", "multi-worker", "--set", "epochs=4"),
            cluster, index, tmp_path / log_name)

    processes = [start(index, f"first-{index}.log") for index in range(2)]
    try:
        # Killed once it has backed up its first epoch (the chief has too, at the same step).
        worker_backup = run_dir / "workers" / "worker-1" / "backup"
        deadline = time.monotonic() + TIMEOUT
        while not list(worker_backup.glob("*.json")) and time.monotonic() < deadline:
            assert processes[1].poll() is None, (tmp_path / "first-1.log").read_text()[-3000:]
            time.sleep(0.2)
        processes[1].kill()
    finally:
        # The chief cannot go on without its peer: it fails (or is stopped after 90 s, as a
        # cluster manager would stop it) and the whole job is started again.
        try:
            wait_all(processes, timeout=90)
        except subprocess.TimeoutExpired:
            pass
    codes = wait_all([start(index, f"again-{index}.log") for index in range(2)])
    logs = [(tmp_path / f"again-{index}.log").read_text() for index in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    for log in logs:
        # Resumed after the first epoch: Keras counts on from the backup.
        assert "Epoch 1/4" not in log and "Epoch 4/4" in log
    epochs = np.genfromtxt(run_dir / "training.csv", delimiter=",", names=True)["epoch"]
    assert epochs[-1] == 3 and (run_dir / "model.keras").is_file()


def test_a_chief_and_two_tuner_workers_run_each_trial_once(tmp_path):
    run_dir = tmp_path / "tune"
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "KERASTUNER_ORACLE_IP": "127.0.0.1",
                   "KERASTUNER_ORACLE_PORT": str(free_ports(1)[0])}
    command = [sys.executable, "-m", "elman.cli", "tune", "imdb", "--preset", "smoke",
               "--set", "epochs=1", "--max-trials", "4", "--run-dir", str(run_dir)]
    names = ("chief", "tuner0", "tuner1")
    codes = wait_all([subprocess.Popen(command, stdout=(tmp_path / f"{name}.log").open("w"),
                                       stderr=subprocess.STDOUT,
                                       env={**environment, "KERASTUNER_TUNER_ID": name})
                      for name in names])
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in names}
    assert codes == [0, 0, 0], "\n".join(log[-3000:] for log in logs.values())
    ran = [line.split(" runs trial ")[1].split()[0] for name in names[1:]
           for line in logs[name].splitlines() if " runs trial " in line]
    assert sorted(ran) == ["0", "1", "2", "3"]  # Each trial exactly once, by a worker.
    assert " runs trial " not in logs["chief"]
    for name in names[1:]:
        assert "this worker's trials are done" in logs[name]
    trials = json.loads((run_dir / "trials.json").read_text())
    assert len(trials) == 4 and all(trial["status"].endswith("COMPLETED") for trial in trials)
    best = json.loads((run_dir / "best_config.json").read_text())
    assert best["trial"] in ran
