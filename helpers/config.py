"""Typed configuration: dataclass fields with metadata, TOML load/save, layering and validation.

Every stage keeps its own config dataclass beside the code that uses it (``TrainConfig`` in ``training``,
``ExtractConfig`` in ``lora`` ...); this module owns the machinery they share:

- ``option(default, help=..., ...)`` declares a field with its label, help text, unit, range and group;
- ``from_dict(cls, data)`` builds a config from plain data, raising ``ConfigError`` that names the key and
  the expected type or range for anything unknown or wrong;
- ``build_config(cls, template=..., overrides=...)`` layers defaults -> template -> user edits;
- ``load_config`` / ``save_config`` read and write TOML with a ``format_version`` and run the class's
  ``migrate`` hook on older files;
- ``validate(cfg)`` returns per-field problems (forms show them next to the field).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomllib

from helpers.changes import write_text_atomic

FORMAT_VERSION_KEY = "format_version"


class ConfigError(ValueError):
    """A config value is unknown or invalid. ``problems`` maps dotted keys to messages."""

    def __init__(self, problems: dict[str, str], source: str = ""):
        self.problems = dict(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{key}: {msg}" for key, msg in self.problems.items()]
        super().__init__(f"invalid config{where}:\n  " + "\n  ".join(lines))


def option(default: Any = dataclasses.MISSING, *, help: str, label: str | None = None, unit: str | None = None,
           min: float | None = None, max: float | None = None, step: float | None = None,
           group: str = "basic", kind: str | None = None, factory: Any = None) -> Any:
    """A config field with what a form and an error message need.

    ``kind`` refines a ``str`` field: "path" (existence checked in forms), "secret" (password widget, never
    saved), "multiline". ``min``/``max`` are inclusive bounds for numbers. ``group`` names a form section.
    """
    meta = {"help": help, "label": label, "unit": unit, "min": min, "max": max, "step": step,
            "group": group, "kind": kind}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_meta(f: dataclasses.Field) -> dict[str, Any]:
    meta = {"help": "", "label": None, "unit": None, "min": None, "max": None, "step": None,
            "group": "basic", "kind": None}
    meta.update(f.metadata)
    meta["label"] = meta["label"] or f.name.replace("_", " ")
    return meta


def config_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The dataclass fields of ``cls`` with their resolved type annotations."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list of {type_name(inner)}"
    if tp is type(None):
        return "none"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"table [{tp.__name__}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, problems: dict[str, str]) -> Any:
    """Convert plain TOML/JSON data to ``tp``, recording a problem (and returning None) when it does not fit."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            trial: dict[str, str] = {}
            out = _coerce(value, arg, key, trial)
            if not trial:
                return out
        problems[key] = f"expected {type_name(tp)}, got {value!r}"
        return None
    if origin is Literal:
        if value in get_args(tp):
            return value
        problems[key] = f"expected {type_name(tp)}, got {value!r}"
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems[key] = f"expected {type_name(tp)}, got {value!r}"
            return None
        (inner,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            problems[key] = f"expected a table of {tp.__name__} settings, got {value!r}"
            return None
        return _from_dict(tp, value, key + ".", problems)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            problems[key] = f"expected {type_name(tp)}, got {value!r}"
            return None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        if isinstance(value, tp):
            return value
    problems[key] = f"expected {type_name(tp)}, got {value!r}"
    return None


def _check_range(value: Any, meta: dict[str, Any], key: str, problems: dict[str, str]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        problems[key] = f"must be a finite number, got {value!r}"
        return
    lo, hi = meta.get("min"), meta.get("max")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f">= {lo}" if lo is not None else f"<= {hi}")
        problems[key] = f"must be {rng}, got {value!r}"


def _from_dict(cls: type, data: dict[str, Any], prefix: str, problems: dict[str, str]) -> Any:
    fields = {f.name: (f, tp) for f, tp in config_fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + name
        if name == FORMAT_VERSION_KEY and not prefix:
            continue
        if name not in fields:
            close = [n for n in fields if n.replace("_", "") == name.replace("_", "").lower()]
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(sorted(fields))}"
            problems[key] = f"unknown key for {cls.__name__}{hint}"
            continue
        f, tp = fields[name]
        out = _coerce(value, tp, key, problems)
        if key not in problems:
            _check_range(out, field_meta(f), key, problems)
        kwargs[name] = out
    if any(k.startswith(prefix) for k in problems):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # __post_init__ checks of the config class
        problems[prefix.rstrip(".") or cls.__name__] = str(exc)
        return None


def from_dict(cls: type, data: dict[str, Any], source: str = "") -> Any:
    """Build ``cls`` from plain data; every unknown key or wrong value is reported at once."""
    problems: dict[str, str] = {}
    cfg = _from_dict(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def to_dict(cfg: Any, *, only_changed: bool = False, include_secrets: bool = False) -> dict[str, Any]:
    """Plain TOML-ready data for a config; ``only_changed`` keeps what differs from the defaults."""
    out: dict[str, Any] = {}
    defaults = type(cfg)() if only_changed else None
    for f, _tp in config_fields(type(cfg)):
        if field_meta(f)["kind"] == "secret" and not include_secrets:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            sub = to_dict(value, only_changed=only_changed, include_secrets=include_secrets)
            if sub or not only_changed:
                out[f.name] = sub
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):  # an array of tables
            out[f.name] = [to_dict(v, only_changed=only_changed, include_secrets=include_secrets) for v in value]
            continue
        if only_changed and value == getattr(defaults, f.name):
            continue
        if value is None:
            continue  # TOML has no null: an absent key means "default/None"
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def validate(cfg: Any) -> dict[str, str]:
    """Per-field problems of an existing config object (types, ranges, the class's own ``check``)."""
    problems: dict[str, str] = {}
    try:
        from_dict(type(cfg), to_dict(cfg, include_secrets=True))
    except ConfigError as exc:
        problems.update(exc.problems)
    check = getattr(cfg, "check", None)
    if callable(check) and not problems:
        problems.update(check() or {})
    return problems


def merge_dicts(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, anything else in ``update`` replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_dicts(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError({"(file)": f"not valid TOML: {exc}"}, str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError({"(file)": "not UTF-8 text"}, str(path)) from None


def migrate_data(cls: type, data: dict[str, Any], source: str = "") -> dict[str, Any]:
    """Bring saved data to ``cls.format_version`` through the class's ``migrate(data, version)`` hook."""
    current = getattr(cls, "format_version", 1)
    version = data.get(FORMAT_VERSION_KEY, current)
    if not isinstance(version, int) or version < 1:
        raise ConfigError({FORMAT_VERSION_KEY: f"expected a positive integer, got {version!r}"}, source)
    if version > current:
        raise ConfigError({FORMAT_VERSION_KEY: f"file is format {version}, this tunebook reads up to "
                           f"{current}: update tunebook (git pull)"}, source)
    data = dict(data)
    migrate = getattr(cls, "migrate", None)
    while version < current:
        if migrate is None:
            raise ConfigError({FORMAT_VERSION_KEY: f"no migration from format {version}"}, source)
        data = migrate(data, version)
        version += 1
    data.pop(FORMAT_VERSION_KEY, None)
    return data


def load_config(cls: type, path: str | os.PathLike) -> Any:
    """Read a saved TOML config (any older format is migrated)."""
    data = migrate_data(cls, read_toml(path), str(path))
    return from_dict(cls, data, str(path))


def build_config(cls: type, template: str | os.PathLike | dict | None = None,
                 overrides: dict[str, Any] | None = None) -> Any:
    """Defaults -> template (a name in ``templates/``, a path or a dict) -> user edits."""
    data: dict[str, Any] = {}
    source = ""
    if template is not None:
        if isinstance(template, dict):
            tdata = template
        else:
            from helpers import templates as templates_mod

            path = templates_mod.template_path(template)
            source = str(path)
            tdata = read_toml(path)
        data = merge_dicts(data, migrate_data(cls, tdata, source))
    if overrides:
        data = merge_dicts(data, overrides)
    return from_dict(cls, data, source)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(data: dict[str, Any], _prefix: str = "") -> str:
    """A small TOML writer for config data (scalars, lists, nested tables, arrays of tables)."""
    def is_tables(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)

    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and not is_tables(v)]
    for key, value in data.items():
        if isinstance(value, dict):
            name = f"{_prefix}{key}"
            lines += ["", f"[{name}]", dumps_toml(value, name + ".").rstrip("\n")]
    for key, value in data.items():
        if is_tables(value):  # [[key]] blocks, after the plain tables
            name = f"{_prefix}{key}"
            for item in value:
                lines += ["", f"[[{name}]]", dumps_toml(item, name + ".").rstrip("\n")]
    return "\n".join(line for line in lines) + "\n"


def save_config(cfg: Any, path: str | os.PathLike, *, only_changed: bool = False) -> Path:
    """Write a config as TOML (atomically) with its ``format_version``; secrets are never written."""
    data = {FORMAT_VERSION_KEY: getattr(type(cfg), "format_version", 1)}
    data.update(to_dict(cfg, only_changed=only_changed))
    return write_text_atomic(path, dumps_toml(data))
