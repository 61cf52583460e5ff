"""The README's set-up commands and CI stay in step, and the console script answers --help."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"^    (python3 -m venv .*|pip install .*)$",
                      (ROOT / "README.md").read_text(), flags=re.MULTILINE)


def test_ci_runs_the_readme_test_command():
    main_job, test_command = _readme_commands()[:2]
    assert main_job.endswith("elman demo")
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_console_script_help():
    result = subprocess.run(["elman", "--help"], capture_output=True, text=True, check=True)
    for verb in ("train", "evaluate", "tune", "export", "predict", "demo"):
        assert verb in result.stdout
    result = subprocess.run(["elman", "train", "--help"], capture_output=True, text=True,
                            check=True)
    assert "--set KEY=VALUE" in result.stdout and "imdb" in result.stdout


def test_no_top_level_layers_or_datasets_module_is_installed():
    import importlib.util

    import elman.datasets
    import elman.layers

    for name in ("layers", "datasets"):
        spec = importlib.util.find_spec(name)
        # Either absent, or some other distribution's module: never elman's folder.
        assert spec is None or not str(spec.origin).startswith(str(ROOT / name))
    assert elman.layers.ElmanCell.__module__ == "elman.layers.elman_cell"
