"""Every gateway setting, field by field: each numeric key accepted at both ends of its range
and refused one past, each choice, switch and string key, every section reaching the config
(and a non-table section refused under its own name), the [gateway] identifier and paths, and
the MQTT TLS settings resolved and checked together. Refusals are ConfigErrors whose message and
`key` name the setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from servicekit.mqtt_tls import MqttTls

BASE = Path("/etc/iomt-gateway")


def _doc(**sections: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {"gateway": {"id": "gw-01", "state_dir": "/var/lib/gw"}}
    for name, table in sections.items():
        doc.setdefault(name, {}).update(table)
    return doc


def _parse(**sections: dict[str, Any]) -> GatewayConfig:
    return parse_config(_doc(**sections), BASE)


def _refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, BASE)
    assert type(info.value) is ConfigError
    return info.value


def _setting(config: GatewayConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


# --- numeric limits ---------------------------------------------------------------------------

# key, lowest and highest accepted, expected wording (one past is one below and one above)
INTEGER_LIMITS: list[tuple[str, int, int, str]] = [
    ("mqtt.port", 1, 65535, "a TCP port 1-65535"),
    ("mqtt.keepalive", 5, 3600, "seconds, 5-3600"),
    ("mqtt.receive_maximum", 1, 65535, "an integer 1-65535"),
    ("mqtt.session_expiry", 0, 4_294_967_295, "seconds, >= 0"),
    ("sessions.max_sessions", 1, 1_000_000, "an integer 1-1000000"),
    ("sessions.rekey_records", 1, 4_294_967_296, "an integer >= 1"),
    ("sessions.device_burst", 1, 1_000_000, "an integer >= 1"),
    ("sessions.max_record_bytes", 64, 16418, "bytes, 64-16418"),
    ("store.batch_max", 1, 100_000, "an integer 1-100000"),
    ("store.max_rows", 1000, 10_000_000_000, "an integer >= 1000"),
    ("metrics.port", 0, 65535, "a TCP port 1-65535, or 0 for no endpoint"),
    ("learning.max_samples_per_device", 30, 100_000_000, "an integer >= 30"),
    ("learning.min_windows", 1, 1_000_000, "an integer >= 1"),
    ("learning.max_windows", 1, 1_000_000, "an integer 1-1000000"),
]

# key, lowest accepted, just below it, highest accepted, just above it, expected wording
NUMBER_LIMITS: list[tuple[str, float, float, float, float, str]] = [
    ("mqtt.reconnect_max_delay", 0.1, 0.09, 3600, 3600.01, "seconds, 0.1-3600"),
    ("sessions.unconfirmed_timeout", 1, 0.99, 86400, 86400.01, "seconds, 1-86400"),
    ("sessions.idle_timeout", 1, 0.99, 604800, 604800.01, "seconds, 1-604800"),
    ("sessions.max_clock_skew", 1, 0.99, 3600, 3600.01, "seconds, 1-3600"),
    ("sessions.rekey_seconds", 1, 0.99, 604800, 604800.01, "seconds, 1-604800"),
    ("sessions.device_records_per_second", 0.01, 0.009, 1e6, 1000000.01, "a rate > 0"),
    ("sessions.device_handshakes_per_minute", 0.01, 0.009, 1e4, 10000.01, "a rate > 0"),
    ("store.batch_interval", 0.001, 0.0009, 10, 10.001, "seconds, 0.001-10"),
    ("store.retention_days", 0.001, 0.0009, 36500, 36500.01, "days > 0"),
    ("uplink.reconnect_max_delay", 0.1, 0.09, 3600, 3600.01, "seconds, 0.1-3600"),
    ("learning.min_battery_percent", 0, -0.01, 100, 100.01, "percent, 0-100"),
    (
        "learning.min_battery_percent_when_deadline_near",
        0,
        -0.01,
        100,
        100.01,
        "percent, 0-100",
    ),
    ("learning.max_cpu_load", 0.01, 0.009, 1.0, 1.001, "a fraction 0.01-1"),
    ("learning.max_temperature_c", 20, 19.99, 120, 120.01, "degrees C, 20-120"),
    ("learning.min_free_memory_mb", 0, -0.01, 1e6, 1000000.01, "megabytes >= 0"),
    ("learning.defer_check_interval", 0.01, 0.009, 3600, 3600.01, "seconds, 0.01-3600"),
]


def _with(key: str, value: object) -> dict[str, Any]:
    section, name = key.split(".")
    return _doc(**{section: {name: value}})


@pytest.mark.parametrize(("key", "lo", "hi", "expected"), INTEGER_LIMITS)
def test_integer_settings_at_their_limits(key: str, lo: int, hi: int, expected: str) -> None:
    for value in (lo, hi):
        got = _setting(parse_config(_with(key, value), BASE), key)
        assert got == value
        assert type(got) is int
    for bad in (lo - 1, hi + 1, float(lo)):
        error = _refused(_with(key, bad))
        assert str(error) == f"{key} = {bad!r} is invalid: expected {expected}"
        assert error.key == key


@pytest.mark.parametrize(("key", "lo", "below", "hi", "above", "expected"), NUMBER_LIMITS)
def test_number_settings_at_their_limits(
    key: str, lo: float, below: float, hi: float, above: float, expected: str
) -> None:
    for value in (lo, hi):
        got = _setting(parse_config(_with(key, value), BASE), key)
        assert got == value
        assert type(got) is float
    for bad in (below, above, True, "1"):
        error = _refused(_with(key, bad))
        assert str(error) == f"{key} = {bad!r} is invalid: expected {expected}"
        assert error.key == key


# --- choices, switches, strings ---------------------------------------------------------------

CHOICES: list[tuple[str, tuple[str, ...]]] = [
    ("log.level", ("debug", "info", "warning", "error")),
    ("log.journal", ("auto", "yes", "no")),
    ("learning.backend", ("auto", "litert", "numpy")),
    ("learning.power_model", ("raspberry-pi-4", "raspberry-pi-5")),
    ("learning.task", ("vitals", "rhythm")),
]


@pytest.mark.parametrize(("key", "values"), CHOICES)
def test_choice_settings_take_only_their_values(key: str, values: tuple[str, ...]) -> None:
    for value in values:
        assert _setting(parse_config(_with(key, value), BASE), key) == value
    for bad in ("other", values[0].upper()):
        error = _refused(_with(key, bad))
        assert str(error) == f"{key} = {bad!r} is invalid: expected one of {values!r}"
        assert error.key == key


SWITCHES = [
    "learning.balanced_sampling",
    "learning.restricted_softmax",
    "learning.require_ac_power",
    "bench.plaintext_records",
    "bench.plaintext_envelopes",
]


@pytest.mark.parametrize("key", SWITCHES)
def test_switches_are_off_by_default_and_take_only_booleans(key: str) -> None:
    assert _setting(_parse(), key) is False
    assert _setting(parse_config(_with(key, True), BASE), key) is True
    for bad in (1, "true"):
        error = _refused(_with(key, bad))
        assert str(error) == f"{key} = {bad!r} is invalid: expected true or false"
        assert error.key == key


STRINGS = [
    "mqtt.host",
    "mqtt.username",
    "mqtt.password",
    "mqtt.client_id",
    "mqtt.topic_prefix",
    "store.path",
    "uplink.amqp_url",
    "uplink.aggregator_public",
    "uplink.gateway_registry",
    "metrics.host",
]


@pytest.mark.parametrize("key", STRINGS)
def test_string_settings_take_only_non_empty_strings(key: str) -> None:
    assert _setting(parse_config(_with(key, "v-1"), BASE), key) == "v-1"
    for bad in ("", 5):
        error = _refused(_with(key, bad))
        assert str(error) == f"{key} = {bad!r} is invalid: expected a non-empty string"
        assert error.key == key


def test_a_model_file_is_relative_to_the_configuration_file() -> None:
    assert _parse().learning.model is None
    assert _parse(learning={"model": "models/m.tflite"}).learning.model == str(
        BASE / "models" / "m.tflite"
    )
    assert _parse(learning={"model": "/opt/m.tflite"}).learning.model == "/opt/m.tflite"
    for bad in ("", 5):
        error = _refused(_doc(learning={"model": bad}))
        assert str(error) == f"learning.model = {bad!r} is invalid: expected a non-empty string"
        assert error.key == "learning.model"


# --- sections ---------------------------------------------------------------------------------


def test_every_section_reaches_the_config() -> None:
    config = _parse(
        uplink={
            "amqp_url": "amqp://gw-01:s@agg:5672/%2F",
            "aggregator_public": "keys/agg.pub",
            "gateway_registry": "/srv/gateways.json",
            "reconnect_max_delay": 5,
        },
        learning={
            "backend": "numpy",
            "task": "rhythm",
            "model": "/opt/m.tflite",
            "balanced_sampling": True,
            "max_windows": 64,
            "min_windows": 2,
        },
        metrics={"host": "0.0.0.0", "port": 9101},
        bench={"plaintext_records": True, "plaintext_envelopes": True},
        store={"path": "/data/v.sqlite3"},
    )
    assert config.uplink.amqp_url == "amqp://gw-01:s@agg:5672/%2F"
    assert config.uplink.reconnect_max_delay == 5.0
    # uplink files are relative to state_dir; an absolute one stays
    assert config.aggregator_public_path == Path("/var/lib/gw/keys/agg.pub")
    assert config.gateway_registry_path == Path("/srv/gateways.json")
    assert config.db_path == Path("/data/v.sqlite3")
    assert config.learning.backend == "numpy"
    assert config.learning.task == "rhythm"
    assert config.learning.model == "/opt/m.tflite"
    assert config.learning.balanced_sampling is True
    assert (config.learning.min_windows, config.learning.max_windows) == (2, 64)
    assert config.learning.restricted_softmax is False
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9101)
    assert config.bench.plaintext_records is True
    assert config.bench.plaintext_envelopes is True


def test_defaults_of_an_empty_configuration() -> None:
    config = _parse()
    assert config.uplink.amqp_url is None
    assert config.aggregator_public_path == Path("/var/lib/gw/aggregator.pub")
    assert config.gateway_registry_path == Path("/var/lib/gw/gateways.json")
    assert config.learning.task == "vitals"
    assert config.learning.max_windows == 2000
    assert (config.metrics.host, config.metrics.port) == ("127.0.0.1", 0)
    assert config.bench.plaintext_records is False
    assert config.mqtt.tls is None


SECTIONS = ["mqtt", "sessions", "store", "log", "uplink", "learning", "metrics", "bench"]


@pytest.mark.parametrize("section", SECTIONS)
def test_a_section_that_is_not_a_table_is_named(section: str) -> None:
    doc = _doc()
    doc[section] = "on"
    error = _refused(doc)
    assert str(error) == f"[{section}] must be a table, got 'on'"
    assert error.key == section


@pytest.mark.parametrize("section", SECTIONS)
def test_an_unknown_key_is_named_under_its_section(section: str) -> None:
    error = _refused(_doc(**{section: {"colour": 1}}))
    assert str(error).startswith(f"unknown key {section}.colour (known: ")
    assert error.key == f"{section}.colour"


def test_an_unknown_section_is_named() -> None:
    doc = _doc()
    doc["extra"] = {}
    error = _refused(doc)
    assert str(error) == (
        "unknown section [extra] (known: bench, gateway, learning, log, metrics, mqtt, "
        "sessions, store, uplink)"
    )
    assert error.key == "extra"


# --- [gateway] --------------------------------------------------------------------------------


def test_the_gateway_section_must_be_a_table() -> None:
    for doc in ({}, {"gateway": "gw-01"}):
        error = _refused(doc)
        assert str(error) == "missing section [gateway] (it needs at least id and state_dir)"
        assert error.key is None


@pytest.mark.parametrize(("value", "shown"), [(None, "None"), ("", "''"), (5, "5")])
def test_the_gateway_id_must_be_a_non_empty_string(value: object, shown: str) -> None:
    gateway: dict[str, Any] = {"state_dir": "/var/lib/gw"}
    if value is not None:
        gateway["id"] = value
    error = _refused({"gateway": gateway})
    assert str(error) == f"gateway.id = {shown} is invalid: expected a non-empty string"
    assert error.key == "gateway.id"


def test_the_gateway_id_is_an_identifier_of_at_most_64_characters() -> None:
    longest = "g" * 64
    assert _parse(gateway={"id": longest}).gateway_id == longest
    for bad in ("g" * 65, "bad id", "-gw"):
        error = _refused(_doc(gateway={"id": bad}))
        assert str(error).startswith(f"gateway.id: identifier {bad!r} is invalid: expected 1-64")
        assert error.key == "gateway.id"


@pytest.mark.parametrize(("value", "shown"), [(None, "None"), ("", "''"), (5, "5")])
def test_the_state_dir_must_be_a_path(value: object, shown: str) -> None:
    gateway: dict[str, Any] = {"id": "gw-01"}
    if value is not None:
        gateway["state_dir"] = value
    error = _refused({"gateway": gateway})
    assert str(error) == f"gateway.state_dir = {shown} is invalid: expected a path"
    assert error.key == "gateway.state_dir"


def test_identity_and_registry_default_into_the_state_dir() -> None:
    config = _parse(gateway={"state_dir": "state"})
    assert config.state_dir == BASE / "state"
    assert config.identity == BASE / "state" / "identity.key"
    assert config.registry == BASE / "state" / "registry.json"


def test_identity_and_registry_are_relative_to_the_configuration_file() -> None:
    config = _parse(gateway={"identity": "keys/gw.key", "registry": "/srv/registry.json"})
    assert config.identity == BASE / "keys" / "gw.key"
    assert config.registry == Path("/srv/registry.json")
    config = _parse(gateway={"identity": "/srv/gw.key", "registry": "reg.json"})
    assert config.identity == Path("/srv/gw.key")
    assert config.registry == BASE / "reg.json"


@pytest.mark.parametrize("key", ["identity", "registry"])
@pytest.mark.parametrize(("value", "shown"), [("", "''"), (5, "5")])
def test_identity_and_registry_must_be_paths(key: str, value: object, shown: str) -> None:
    error = _refused(_doc(gateway={key: value}))
    assert str(error) == f"gateway.{key} = {shown} is invalid: expected a path"
    assert error.key == f"gateway.{key}"


# --- MQTT TLS ---------------------------------------------------------------------------------


def test_tls_paths_are_relative_to_the_configuration_file() -> None:
    mqtt = _parse(mqtt={"tls_ca": "pki/ca.pem", "tls_cert": "gw.pem", "tls_key": "/k/gw.key"}).mqtt
    assert mqtt.tls_ca == str(BASE / "pki" / "ca.pem")
    assert mqtt.tls_cert == str(BASE / "gw.pem")
    assert mqtt.tls_key == "/k/gw.key"
    assert mqtt.tls_groups is None
    assert mqtt.tls == MqttTls(BASE / "pki" / "ca.pem", BASE / "gw.pem", Path("/k/gw.key"))
    mqtt = _parse(mqtt={"tls_ca": "/pki/ca.pem", "tls_cert": "/c/gw.pem", "tls_key": "gw.key"}).mqtt
    assert mqtt.tls == MqttTls(Path("/pki/ca.pem"), Path("/c/gw.pem"), BASE / "gw.key")


def test_tls_with_the_ca_alone() -> None:
    mqtt = _parse(mqtt={"tls_ca": "/pki/ca.pem", "port": 8883}).mqtt
    assert (mqtt.tls_ca, mqtt.tls_cert, mqtt.tls_key, mqtt.tls_groups) == (
        "/pki/ca.pem",
        None,
        None,
        None,
    )
    assert mqtt.port == 8883
    assert mqtt.tls == MqttTls(Path("/pki/ca.pem"))


def test_tls_groups_known_to_openssl_are_kept() -> None:
    mqtt = _parse(mqtt={"tls_ca": "ca.pem", "tls_groups": "X25519"}).mqtt
    assert mqtt.tls == MqttTls(BASE / "ca.pem", None, None, "X25519")


def test_tls_groups_unknown_to_openssl_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_doc(mqtt={"tls_ca": "ca.pem", "tls_groups": "NO-SUCH-GROUP"}), BASE)
    assert str(info.value).startswith(
        "mqtt.tls_groups = 'NO-SUCH-GROUP' is invalid: TLS groups 'NO-SUCH-GROUP' are not "
        "supported on "
    )
    assert info.value.key == "mqtt.tls_groups"


@pytest.mark.parametrize("key", ["tls_cert", "tls_key", "tls_groups"])
def test_tls_settings_without_the_ca_are_refused(key: str) -> None:
    error = _refused(_doc(mqtt={key: "X25519"}))
    assert str(error) == f"mqtt.{key} is set but mqtt.tls_ca is not: TLS needs the CA"
    assert error.key == f"mqtt.{key}"


@pytest.mark.parametrize("key", ["tls_cert", "tls_key"])
def test_the_client_certificate_and_key_go_together(key: str) -> None:
    error = _refused(_doc(mqtt={"tls_ca": "ca.pem", key: "gw.pem"}))
    assert str(error) == "mqtt.tls_cert and mqtt.tls_key go together: set both or neither"
    assert error.key == "mqtt.tls_cert"
