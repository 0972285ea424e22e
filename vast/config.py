"""One config system: typed dataclasses, YAML presets in ``configs/``, dotted overrides on top.

A config class documents each field with an attribute docstring (the string literal under the
field); ``field_docs`` reads them back for ``--help``. ``from_dict`` builds a dataclass from
plain data and refuses unknown keys and wrong types with the dotted path of the culprit, so a
typo in a preset or on the command line is an error, not a silently ignored setting.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file, preset or override that does not fit its dataclass."""


def preset_path(name_or_file: str) -> Path:
    """Resolve ``demo`` / ``train/tiny`` to a bundled preset, or return an existing YAML file."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    bundled = PRESET_DIR / f"{name_or_file}.yaml"
    if bundled.exists():
        return bundled
    known = sorted(str(p.relative_to(PRESET_DIR).with_suffix("")) for p in PRESET_DIR.rglob("*.yaml"))
    raise ConfigError(f"no config file or preset named {name_or_file!r}; presets: {', '.join(known)}")


def load_yaml(name_or_file: str) -> dict[str, Any]:
    """Read a preset or YAML file; a top-level ``base: OTHER`` key merges OTHER underneath."""
    path = preset_path(name_or_file)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    return merge(load_yaml(base), data) if base else data


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``top`` over ``base`` (mappings merge, everything else replaces)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in nested dicts; a string value is parsed as a YAML scalar."""
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip() else value
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {p} is not a mapping")
    node[leaf] = value


def from_dict(cls: type[T], data: dict[str, Any] | None, path: str = "") -> T:
    """Build dataclass ``cls`` from plain data, recursively, checking keys and types."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - set(fields)
    if unknown:
        where = path or cls.__name__
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(fields)}")
    kwargs = {name: _coerce(hints[name], value, f"{path}{name}") for name, value in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain-data view of a config (what ``from_dict`` reads back)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as e:
                if isinstance(value, dict) and dataclasses.is_dataclass(arg):
                    raise  # the mapping was meant for this dataclass: its own error says what is wrong
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return from_dict(tp, value, path + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(vt, v, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: ``{field: "the string under it"}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Flatten a config class into ``(dotted name, type, doc)`` rows for help text."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tname = getattr(tp, "__name__", str(tp)).replace("typing.", "")
        rows.append((f"{prefix}{f.name}", f"{tname} = {default!r}", docs.get(f.name, "")))
    return rows
