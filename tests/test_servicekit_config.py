"""The shared config checks: numeric keys accepted at both ends of their range and refused one
past, integer and number kinds kept apart, booleans, closed choices, strings and optional
strings, unknown keys and sections, non-table sections and path settings; every refusal is a
ConfigError whose message and `key` name the setting, the bad value and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servicekit.config import (
    ConfigError,
    Range,
    Rules,
    check_known,
    check_value,
    parse_section,
    read_toml,
    resolve_path,
)


@dataclass(frozen=True)
class _Section:
    count: int = 3
    ratio: float = 0.5
    share: float = 50.0
    label: str = "x"
    note: str | None = None
    flag: bool = False
    mode: str = "a"
    stamp: float = 0.0  # no rule: a float key must have a range


RULES = Rules(
    ranges={
        "s.count": Range(1, 10),
        "s.ratio": Range(0.25, 2.5),
        "s.share": Range(0, 100, "percent, 0-100"),
    },
    choices={"s.mode": ("a", "b")},
)


def _refused(key: str, value: object, annotation: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_value(key, value, annotation, RULES)
    return info.value


# --- Range.describe ---------------------------------------------------------------------------


def test_a_range_without_wording_describes_its_kind_and_bounds() -> None:
    assert Range(1, 10).describe(True) == "an integer in [1, 10]"
    assert Range(1, 10).describe(False) == "a number in [1, 10]"
    assert Range(0.25, 2.5).describe(False) == "a number in [0.25, 2.5]"
    assert Range(1e-3, 1e6).describe(False) == "a number in [0.001, 1e+06]"


def test_a_range_with_wording_uses_it_for_either_kind() -> None:
    assert Range(0, 100, "percent, 0-100").describe(True) == "percent, 0-100"
    assert Range(0, 100, "percent, 0-100").describe(False) == "percent, 0-100"


# --- check_value: ranges ----------------------------------------------------------------------


def test_an_integer_key_is_accepted_at_both_ends_and_refused_one_past() -> None:
    for value in (1, 10):
        checked = check_value("s.count", value, "int", RULES)
        assert checked == value
        assert type(checked) is int
    for value in (0, 11):
        error = _refused("s.count", value, "int")
        assert str(error) == f"s.count = {value} is invalid: expected an integer in [1, 10]"
        assert error.key == "s.count"


def test_an_integer_key_refuses_numbers_strings_and_booleans() -> None:
    for value, shown in ((2.0, "2.0"), ("3", "'3'"), (True, "True")):
        error = _refused("s.count", value, "int")
        assert str(error) == f"s.count = {shown} is invalid: expected an integer in [1, 10]"
        assert error.key == "s.count"


def test_a_number_key_is_accepted_at_both_ends_and_refused_one_past() -> None:
    for value in (0.25, 2.5):
        assert check_value("s.ratio", value, "float", RULES) == value
    # an integer in range is a number, converted to float
    one = check_value("s.ratio", 1, "float", RULES)
    assert one == 1.0
    assert type(one) is float
    for value in (0.24, 2.51):
        error = _refused("s.ratio", value, "float")
        assert str(error) == f"s.ratio = {value} is invalid: expected a number in [0.25, 2.5]"
        assert error.key == "s.ratio"
    for bad in (False, "1.0", float("nan"), float("inf")):
        assert _refused("s.ratio", bad, "float").key == "s.ratio"


def test_a_worded_range_names_its_wording() -> None:
    assert check_value("s.share", 0, "float", RULES) == 0.0
    assert check_value("s.share", 100, "float", RULES) == 100.0
    error = _refused("s.share", 100.5, "float")
    assert str(error) == "s.share = 100.5 is invalid: expected percent, 0-100"
    assert _refused("s.share", -1, "float").key == "s.share"


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_an_integer_key_accepts_exactly_its_range(value: int) -> None:
    if 1 <= value <= 10:
        assert check_value("s.count", value, "int", RULES) == value
    else:
        with pytest.raises(ConfigError):
            check_value("s.count", value, "int", RULES)


# --- check_value: choices, booleans, strings --------------------------------------------------


def test_a_choice_key_takes_only_its_listed_values() -> None:
    assert check_value("s.mode", "a", "str", RULES) == "a"
    assert check_value("s.mode", "b", "str", RULES) == "b"
    for bad, shown in (("c", "'c'"), ("A", "'A'"), ("", "''")):
        error = _refused("s.mode", bad, "str")
        assert str(error) == f"s.mode = {shown} is invalid: expected one of ('a', 'b')"
        assert error.key == "s.mode"


def test_a_boolean_key_takes_only_true_or_false() -> None:
    assert check_value("s.flag", True, "bool", RULES) is True
    assert check_value("s.flag", False, "bool", RULES) is False
    for bad, shown in ((1, "1"), (0, "0"), ("true", "'true'")):
        error = _refused("s.flag", bad, "bool")
        assert str(error) == f"s.flag = {shown} is invalid: expected true or false"
        assert error.key == "s.flag"


def test_a_string_key_takes_only_a_non_empty_string() -> None:
    assert check_value("s.label", "y", "str", RULES) == "y"
    for bad, shown in (("", "''"), (5, "5"), (None, "None")):
        error = _refused("s.label", bad, "str")
        assert str(error) == f"s.label = {shown} is invalid: expected a non-empty string"
        assert error.key == "s.label"


def test_an_optional_string_key_also_takes_none() -> None:
    assert check_value("s.note", None, "str | None", RULES) is None
    assert check_value("s.note", "y", "str | None", RULES) == "y"
    error = _refused("s.note", "", "str | None")
    assert str(error) == "s.note = '' is invalid: expected a non-empty string"
    assert error.key == "s.note"


def test_a_key_without_a_rule_is_refused() -> None:
    error = _refused("s.stamp", 1.5, "float")
    assert str(error) == "s.stamp = 1.5: no rule to check this key"
    assert error.key == "s.stamp"


# --- check_known ------------------------------------------------------------------------------


def test_known_keys_pass() -> None:
    check_known("s", {}, ("count", "ratio"))
    check_known("s", {"count": 1, "ratio": 2}, ("count", "ratio"))
    check_known("", {"s": {}}, {"s", "t"})


def test_an_unknown_key_names_the_first_in_order_and_lists_the_known() -> None:
    with pytest.raises(ConfigError) as info:
        check_known("s", {"count": 1, "zeta": 2, "beta": 3}, ("ratio", "count"))
    assert str(info.value) == "unknown key s.beta (known: count, ratio)"
    assert info.value.key == "s.beta"


def test_an_unknown_section_is_named_alone() -> None:
    with pytest.raises(ConfigError) as info:
        check_known("", {"s": {}, "zz": {}, "extra": {}}, ("t", "s"))
    assert str(info.value) == "unknown section [extra] (known: s, t)"
    assert info.value.key == "extra"


# --- parse_section ----------------------------------------------------------------------------


def test_an_empty_section_keeps_every_default() -> None:
    assert parse_section(_Section, "s", {}, RULES) == _Section()


def test_a_section_converts_and_checks_each_value() -> None:
    section = parse_section(
        _Section,
        "s",
        {"count": 10, "ratio": 1, "label": "y", "note": "n", "flag": True, "mode": "b"},
        RULES,
    )
    assert section == _Section(count=10, ratio=1.0, label="y", note="n", flag=True, mode="b")
    assert type(section.ratio) is float


def test_a_section_names_its_bad_value_under_the_section() -> None:
    with pytest.raises(ConfigError) as info:
        parse_section(_Section, "s", {"count": 11}, RULES)
    assert str(info.value) == "s.count = 11 is invalid: expected an integer in [1, 10]"
    assert info.value.key == "s.count"
    with pytest.raises(ConfigError) as info:
        parse_section(_Section, "s", {"colour": 1}, RULES)
    assert info.value.key == "s.colour"


@pytest.mark.parametrize(("table", "shown"), [(5, "5"), ("x", "'x'"), ([1], "[1]"), (None, "None")])
def test_a_section_that_is_not_a_table_is_refused(table: object, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_section(_Section, "s", table, RULES)
    assert str(info.value) == f"[s] must be a table, got {shown}"
    assert info.value.key == "s"


# --- resolve_path and read_toml ---------------------------------------------------------------


def test_a_relative_path_is_relative_to_the_base_and_an_absolute_one_stays(
    tmp_path: Path,
) -> None:
    assert resolve_path("a/b.key", "k", tmp_path) == tmp_path / "a" / "b.key"
    assert resolve_path("/etc/x.pem", "k", tmp_path) == Path("/etc/x.pem")


@pytest.mark.parametrize(("value", "shown"), [("", "''"), (5, "5"), (None, "None")])
def test_a_path_must_be_a_non_empty_string(value: object, shown: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_path(value, "s.path", tmp_path)
    assert str(info.value) == f"s.path = {shown} is invalid: expected a path"
    assert info.value.key == "s.path"


def test_read_toml_returns_the_document_and_its_directory(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("[s]\ncount = 4\n")
    doc, base = read_toml(tmp_path / "c.toml")
    assert doc == {"s": {"count": 4}}
    assert base == tmp_path.resolve()
    (tmp_path / "latin.toml").write_bytes(b'[s]\nlabel = "\xe9"\n')
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        read_toml(tmp_path / "latin.toml")
    assert info.value.key is None
