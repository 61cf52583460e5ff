"""App configs: frozen dataclasses, `key=value` overrides that fail loudly, JSON files.

Every app defines a frozen dataclass `Config` with commented defaults. The helpers here are the
only place that turns strings from a command line or a file into a config, so the rules are the
same for every app: unknown keys and values of the wrong type raise a `ValueError` naming the key,
what was expected and what was received.
"""

import dataclasses
import json
import types
import typing
from pathlib import Path

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _field_types(config_class):
    hints = typing.get_type_hints(config_class)
    return {field.name: hints[field.name] for field in dataclasses.fields(config_class)}


def _allowed_types(annotation):
    """The concrete types an annotation admits, `X | None` giving `(X, NoneType)`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _parse(key, text, annotation):
    """Converts `text` (a string from the command line) to the field's type."""
    allowed = _allowed_types(annotation)
    if type(None) in allowed and text.strip().lower() in {"none", "null"}:
        return None
    for kind in allowed:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        elif kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        elif kind is str:
            return text
    names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in allowed)
    raise ValueError(f"{key} expects {names}, received {key}={text!r}")


def _check(key, value, annotation):
    """Checks a value read from JSON against the field's type (ints are accepted as floats)."""
    allowed = _allowed_types(annotation)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (bool, str) and isinstance(value, kind):
            return value
    names = " or ".join(getattr(kind, "__name__", str(kind)) for kind in allowed)
    raise ValueError(f"{key} expects {names}, received {key}={value!r}")


def _unknown_key(config, key):
    valid = ", ".join(field.name for field in dataclasses.fields(config))
    return ValueError(f"unknown config key {key!r} for {type(config).__qualname__}; "
                      f"valid keys: {valid}")


def apply_overrides(config, assignments):
    """Returns a copy of `config` with `key=value` assignments applied.

    Args:
        config: a frozen dataclass instance.
        assignments: iterable of strings such as `"hidden_units=128"`.

    Returns:
        A new config of the same class.

    Example:

    >>> apply_overrides(Config(), ["hidden_units=128", "dropout=0.1"])
    """
    types_by_key = _field_types(type(config))
    changes = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        if not separator:
            raise ValueError(f"--set expects key=value, received {assignment!r}")
        if key not in types_by_key:
            raise _unknown_key(config, key)
        changes[key] = _parse(key, text, types_by_key[key])
    return dataclasses.replace(config, **changes)


def config_to_dict(config):
    return dataclasses.asdict(config)


def config_from_dict(config_class, values, base=None):
    """Builds a config from a dict, checking keys and types; missing keys keep `base`'s values."""
    base = base if base is not None else config_class()
    types_by_key = _field_types(config_class)
    changes = {}
    for key, value in values.items():
        if key not in types_by_key:
            raise _unknown_key(base, key)
        changes[key] = _check(key, value, types_by_key[key])
    return dataclasses.replace(base, **changes)


def save_config(config, path, app_name, **extra):
    """Writes `{"app": ..., "config": {...}, ...extra}` as JSON; `elman train --config` reads it."""
    payload = {"app": app_name, "config": config_to_dict(config), **extra}
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")


def load_config(config_class, path, app_name, base=None):
    """Reads a config written by `save_config` (or a bare dict of keys) for the app `app_name`."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"config file {path} must hold a JSON object")
    if "config" in payload:
        if payload.get("app", app_name) != app_name:
            raise ValueError(f"config file {path} is for the app {payload['app']!r}, "
                             f"not {app_name!r}")
        payload = payload["config"]
    return config_from_dict(config_class, payload, base=base)
