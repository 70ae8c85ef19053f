"""Gateway configuration: the example parses; every bad value names its key and expectation."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "gateway.toml"


def _doc(**sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"gateway": {"id": "gw-01", "state_dir": "/tmp/x"}}
    for name, table in sections.items():
        doc.setdefault(name, {}).update(table)
    return doc


def test_example_config_parses_with_documented_defaults(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    assert config.gateway_id == "gw-01"
    assert config.identity == Path("/var/lib/iomt-gateway/identity.key")
    assert config.db_path == Path("/var/lib/iomt-gateway/vitals.sqlite3")
    assert config.mqtt.receive_maximum == 1000
    assert config.client_id == "iomt-gateway-gw-01"
    # The example shows every default: parsing it equals parsing an empty config.
    minimal = parse_config(_doc(), tmp_path)
    assert minimal.mqtt == config.mqtt
    assert minimal.sessions == config.sessions
    assert minimal.store == config.store
    assert minimal.uplink == config.uplink
    assert minimal.learning == config.learning


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "g.toml").write_text('[gateway]\nid = "gw-9"\nstate_dir = "state"\n')
    config = load_config(tmp_path / "g.toml")
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.registry == tmp_path.resolve() / "state" / "registry.json"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"mqtt": {"port": 70000}}, "mqtt.port = 70000 is invalid: expected a TCP port"),
        ({"mqtt": {"port": "1883"}}, "mqtt.port = '1883'"),
        ({"mqtt": {"keepalive": True}}, "mqtt.keepalive = True"),
        ({"mqtt": {"host": ""}}, "mqtt.host = '' is invalid"),
        ({"mqtt": {"hots": "x"}}, "unknown key mqtt.hots"),
        ({"sessions": {"max_sessions": 0}}, "sessions.max_sessions = 0"),
        ({"store": {"batch_interval": 0}}, "store.batch_interval = 0"),
        ({"log": {"level": "loud"}}, "log.level = 'loud' is invalid: expected one of"),
        ({"extra": {}}, "unknown section [extra]"),
        ({"gateway": {"id": "bad id"}}, "gateway.id"),
        ({"gateway": {"colour": 1}}, "unknown key gateway.colour"),
    ],
)
def test_bad_values_are_named(sections: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_doc(**sections), tmp_path)
    assert message in str(info.value)


def test_missing_gateway_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing section \[gateway\]"):
        parse_config({}, tmp_path)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_every_example_key_is_known() -> None:
    doc = tomllib.loads(EXAMPLE.read_text())
    assert set(doc) == {
        "gateway",
        "mqtt",
        "sessions",
        "store",
        "log",
        "uplink",
        "learning",
        "metrics",
    }
