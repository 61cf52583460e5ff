"""The elman applications, one per recurrent topology.

An app is a module with a small explicit contract (see `elman.apps.imdb.model`): `NAME`, a frozen
dataclass `Config`, a `SMOKE` preset, `MONITOR`, `load_data(config)`,
`build_model(config, data)`, `search_space(hp, config)`, `export_signatures(model)`,
`prediction_request(inputs)` and `describe_prediction(inputs, outputs)`; optionally
`pretrain(model, data, config, run_dir)`, which training and the tuner's trials run before the
fit.
"""

import importlib

# An explicit table rather than registration magic: adding an app is one line here.
APP_MODULES = {
    "imdb": "elman.apps.imdb.model",  # many-to-one: review text -> sentiment
    "translation": "elman.apps.translation.model",  # many-to-many: sentence -> sentence
    "nextframe": "elman.apps.nextframe.model",  # many-to-many: frames -> next frames
    "captioning": "elman.apps.captioning.model",  # one-to-many: image -> sentence
}


def get_app(name):
    """Imports and returns the app module called `name`."""
    if name not in APP_MODULES:
        raise ValueError(f"unknown app {name!r}; choose one of: {', '.join(APP_MODULES)}")
    return importlib.import_module(APP_MODULES[name])
