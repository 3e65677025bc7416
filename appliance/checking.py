"""The generic engine behind appliance/config.py: typed, bounded, documented dataclass fields read from TOML tables.

A section is a dataclass whose fields come from `opt` (default, one-line help, bounds); a config is a dataclass of
sections. `parse_sections` turns a TOML table into one, refusing an unknown key, a wrong type or a value out of
bounds with one line naming the origin, key and value; `describe_sections` and `dumps` write TOML back. Nothing
here knows the appliance's keys: those, and the checks between keys, are config.py's.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file, key and value."""


def opt(default: Any, help: str, lo: float | None = None, hi: float | None = None,
        factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with its default (or `factory`), its one-line `help` and, for numbers, bounds lo..hi."""
    meta = {"help": help, "lo": lo, "hi": hi}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_value(origin: str, key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """`value` converted to the field's type `hint`, or a ConfigError naming the key and value."""
    bad = ConfigError(f"{origin}: {key} = {value!r} is not {describe_type(hint)}")
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return None if value is None else check_value(origin, key, value, inner, meta)
    if typing.get_origin(hint) is Literal:
        if value not in args:
            raise ConfigError(f"{origin}: {key} = {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise bad
        return tuple(check_value(origin, f"{key}[{i}]", v, a, meta)
                     for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint in (int, float):
        # bool is an int to Python, and 2.5 is no whole number: both are refused by name.
        if isinstance(value, bool) or not isinstance(value, int | float) or (hint is int and
                                                                            not isinstance(value, int)):
            raise bad
        if not math.isfinite(value):  # nan compares false with every bound, so it would pass them all
            raise ConfigError(f"{origin}: {key} = {value!r} is not a finite number")
        lo, hi = meta.get("lo"), meta.get("hi")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{origin}: {key} = {value!r} is outside {lo}..{hi}")
        return hint(value)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise bad
        return Path(value).expanduser()
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def describe_type(hint: Any) -> str:
    """What a value of type `hint` must be, in words: "a whole number", "a list of 2 values, each a number"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return describe_type([a for a in typing.get_args(hint) if a is not type(None)][0])
    if origin is tuple:
        return f"a list of {len(typing.get_args(hint))} values, each {describe_type(typing.get_args(hint)[0])}"
    return {bool: "true or false", int: "a whole number", float: "a number", Path: "a path", str: "a string"}.get(
        hint, str(hint))


def section(origin: str, name: str, cls: type[T], table: Any) -> T:
    """The section `cls` from the TOML table `table` of `[name]`; keys it leaves out keep their defaults."""
    if not isinstance(table, dict):
        raise ConfigError(f"{origin}: [{name}] must be a table, not {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    values = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown key [{name}] {key} (known: {', '.join(known)})")
        values[key] = check_value(origin, f"[{name}] {key}", value, hints[key], known[key].metadata)
    return cls(**values)


def _sections(root: type) -> dict[str, type]:
    # Each section field's default_factory is the section's dataclass itself.
    return {f.name: f.default_factory for f in fields(root)}  # type: ignore[misc]


def parse_sections(root: type[T], table: Mapping[str, Any], origin: str) -> T:
    """The config `root` (a dataclass of sections) from a whole TOML document; every section is optional."""
    sections = _sections(root)
    unknown = set(table) - set(sections)
    if unknown:
        raise ConfigError(f"{origin}: unknown section [{sorted(unknown)[0]}] (known: {', '.join(sections)})")
    return root(**{name: section(origin, name, cls, table.get(name, {})) for name, cls in sections.items()})


def _default(f: Field) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[operator]


def describe_sections(root: type) -> str:
    """Every key of `root` with its default and help, as a commented TOML file; unset keys commented out."""
    lines = []
    for name, cls in _sections(root).items():
        lines.append(f"[{name}]")
        for f in fields(cls):
            default = _default(f)
            lines.append(f"# {f.metadata['help']}")
            lines.append(f"# {f.name} = # unset" if default is None else f"{f.name} = {toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """One value as TOML: a bool, number, string or path, or a list or tuple of them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # nan and inf are TOML's own spellings
    if isinstance(v, tuple | list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str | Path):
        # A JSON string is a TOML basic string, except that TOML also wants DEL escaped.
        return json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"no TOML for {v!r}")


def dumps(document: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document of sections, `{"source": {"spec": "x"}}` -> '[source]\\nspec = "x"\\n'; None values are left
    out (TOML has no null, and a key left out keeps its default)."""
    lines = []
    for name, table in document.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items() if value is not None]
        lines.append("")
    return "\n".join(lines)
