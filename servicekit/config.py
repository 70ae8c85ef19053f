"""TOML configuration helpers both daemons build their typed config objects with: one
`ConfigError` that names the key, the bad value and what was expected."""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; `key` names the setting
    (None for the file as a whole)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    @classmethod
    def invalid(cls, key: str, value: object, expected: str) -> ConfigError:
        return cls(f"{key} = {value!r} is invalid: expected {expected}", key=key)


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of a numeric key; `expected` words them for the error message."""

    lo: float
    hi: float
    expected: str = ""

    def describe(self, integer: bool) -> str:
        if self.expected:
            return self.expected
        kind = "an integer" if integer else "a number"
        return f"{kind} in [{self.lo:g}, {self.hi:g}]"


@dataclass(frozen=True, slots=True)
class Rules:
    """How to check each key of a config file: numeric ranges and closed sets of choices."""

    ranges: Mapping[str, Range]
    choices: Mapping[str, tuple[str, ...]]


def read_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """The parsed document and the directory relative paths in it are relative to."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return doc, p.parent.resolve()


def check_known(where: str, table: Mapping[str, Any], known: Collection[str]) -> None:
    """Unknown keys are errors: a typo must not silently fall back to a default."""
    unknown = sorted(set(table) - set(known))
    if not unknown:
        return
    if where:
        key = f"{where}.{unknown[0]}"
        raise ConfigError(f"unknown key {key} (known: {', '.join(sorted(known))})", key=key)
    raise ConfigError(
        f"unknown section [{unknown[0]}] (known: {', '.join(sorted(known))})", key=unknown[0]
    )


def check_value(key: str, value: Any, annotation: str, rules: Rules) -> Any:
    """`value` checked against the key's rule or its annotation, converted to its type."""
    if key in rules.ranges:
        rule = rules.ranges[key]
        integer = annotation.startswith("int")
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or not rule.lo <= value <= rule.hi:
            raise ConfigError.invalid(key, value, rule.describe(integer))
        return int(value) if integer else float(value)
    if key in rules.choices:
        if value not in rules.choices[key]:
            raise ConfigError.invalid(key, value, f"one of {rules.choices[key]}")
        return value
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ConfigError.invalid(key, value, "true or false")
        return value
    if "str" in annotation:
        if value is None and "None" in annotation:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError.invalid(key, value, "a non-empty string")
        return value
    raise ConfigError(f"{key} = {value!r}: no rule to check this key", key=key)


def parse_section(cls: type[T], name: str, table: object, rules: Rules) -> T:
    """One `[name]` table as the frozen dataclass `cls`; absent keys keep their defaults."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table, got {table!r}", key=name)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]  # cls is a dataclass
    check_known(name, table, known)
    values = {
        key: check_value(f"{name}.{key}", value, str(known[key].type), rules)
        for key, value in table.items()
    }
    return cls(**values)


def resolve_path(value: object, key: str, base_dir: Path) -> Path:
    """A path setting; relative paths are relative to the config file's directory."""
    if not isinstance(value, str) or not value:
        raise ConfigError.invalid(key, value, "a path")
    return base_dir / value  # an absolute value stays as it is
