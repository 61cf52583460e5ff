"""Shared test set-up: quiet TensorFlow, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests run on the shipped samples, whatever the developer's shell has set.
os.environ.pop("ELMAN_DATA_DIR", None)

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture(scope="session")
def smoke_exports(tmp_path_factory):
    """Every app's SMOKE model (untrained: serving is what is tested), exported once per test
    process into a `saved_models` folder."""
    import tensorflow as tf

    from elman import export
    from elman.apps import APP_MODULES, get_app

    base = tmp_path_factory.mktemp("serving") / "saved_models"
    for name in APP_MODULES:
        app = get_app(name)
        tf.keras.utils.set_random_seed(0)
        model = app.build_model(app.SMOKE, app.load_data(app.SMOKE))
        export.export(app, model, base)
    return base
