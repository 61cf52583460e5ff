"""The elman applications, one per recurrent topology.

An app is a module with a small explicit contract (see `elman.apps.imdb.model`): `NAME`, a frozen
dataclass `Config` whose defaults are the best recipe measured, `PRESETS` (name -> Config:
"default", "smoke" for tests, "demo" for `elman demo`, and any variant worth keeping), `SMOKE`,
`MONITOR`, `load_data(config)`, `build_model(config, data)`, `search_space(hp, config)`,
`export_signatures(model)`, `prediction_request(inputs)`, `warmup_requests()` (example inputs
of every signature, which TF Serving replays on loading),
`describe_prediction(inputs, outputs)` and `headline(metrics)` (the result of a test evaluation
and a trivial baseline, for `elman demo`'s summary).
"""

import dataclasses
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


def get_preset(app, name):
    """The app's preset `name` (a `Config`), or a clear error listing the presets."""
    if name not in app.PRESETS:
        raise ValueError(f"unknown preset {name!r} for {app.NAME}; choose one of: "
                         f"{', '.join(app.PRESETS)} (`elman presets {app.NAME}` shows them)")
    return app.PRESETS[name]


def describe_presets(app):
    """One line per preset of the app: its name and the settings where it differs from the
    defaults."""
    default = app.Config()
    lines = []
    for name, config in app.PRESETS.items():
        changes = [f"{field.name}={getattr(config, field.name)!r}"
                   for field in dataclasses.fields(config)
                   if getattr(config, field.name) != getattr(default, field.name)]
        lines.append(f"{name}: " + (" ".join(changes) if changes else "the defaults"))
    return lines
