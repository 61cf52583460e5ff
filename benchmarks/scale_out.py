"""Two localhost workers against one: `elman train APP --strategy multi-worker` on two processes
of this machine, then the same command without a strategy, and their training times.

    python benchmarks/scale_out.py imdb [--preset smoke] [--set epochs=4 ...]

Both runs use the same global batch (the config's) and seed; the figures are the training time
of each run (metrics.json's `training_seconds`, the first epoch's tracing included) and the
final losses. On one machine the two workers share its cores, so this measures the cost of the
machinery more than a speed-up (docs/scale-out.md says what to expect on separate machines).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="elman-scale-out-"))
    command = [sys.executable, "-m", "elman.cli", "train", args.app, "--preset", args.preset]
    for override in args.overrides:
        command += ["--set", override]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {}

    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(args.workers)]}
    started = time.perf_counter()
    processes = [subprocess.Popen(
        command + ["--strategy", "multi-worker", "--run-dir", str(base / "workers")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": index}})})
        for index in range(args.workers)]
    codes = [process.wait(timeout=3600) for process in processes]
    if codes != [0] * args.workers:
        raise SystemExit(f"the workers failed: return codes {codes}")
    results[f"{args.workers} workers"] = (base / "workers", time.perf_counter() - started)

    started = time.perf_counter()
    subprocess.run(command + ["--run-dir", str(base / "one")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results["1 worker"] = (base / "one", time.perf_counter() - started)

    print(f"{args.app} --preset {args.preset} {' '.join(args.overrides)}, {os.cpu_count()} CPUs")
    for name, (run_dir, wall) in results.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        print(f"{name:10s} training {metrics['training_seconds']:6.1f} s "
              f"({metrics['epochs_run']} epochs; {wall:5.1f} s with start-up), "
              f"final loss {metrics['loss']:.4f}, val_loss {metrics['val_loss']:.4f}")
    one = json.loads((results["1 worker"][0] / "metrics.json").read_text())["training_seconds"]
    many = json.loads((results[f"{args.workers} workers"][0] / "metrics.json").read_text())[
        "training_seconds"]
    print(f"speed-up of {args.workers} workers: {one / many:.2f}x")


if __name__ == "__main__":
    main()
