"""The aggregator's TOML configuration key by key: the exact defaults of a minimal file, every
section and key reaching the config object, every numeric limit accepted at its exact value
and refused one step past it, and each bad value refused with a ConfigError naming its key."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import (
    AggregatorConfig,
    AmqpConfig,
    BenchConfig,
    ConfigError,
    MetricsConfig,
    PrivacyConfig,
    RoundsConfig,
    StatisticsConfig,
    StrategyConfig,
    TrainingConfig,
    ValidationConfig,
    WorkerConfig,
    load_config,
    parse_config,
)
from wire.model import DEFAULT_INITIAL_WEIGHTS

STATE = "/srv/iomt-aggregator"
SECTIONS = (
    "aggregator, amqp, bench, metrics, privacy, rounds, statistics, strategy, training, "
    "validation, worker"
)
TABLES = (
    "amqp",
    "rounds",
    "training",
    "strategy",
    "validation",
    "worker",
    "metrics",
    "privacy",
    "statistics",
    "bench",
)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _doc(**sections: object) -> dict[str, Any]:
    doc: dict[str, Any] = {"aggregator": {"id": "agg-1", "state_dir": STATE}}
    doc.update(sections)
    return doc


def _refused(doc: dict[str, Any], base_dir: Path = Path("/")) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir)
    assert type(info.value) is ConfigError
    return info.value


# The documented defaults (configs/aggregator.toml states each one), written out by hand.
DEFAULTS: dict[str, Any] = {
    "amqp": {"url": "amqp://guest:guest@127.0.0.1:5672/%2F", "prefetch": 64, "heartbeat": 30},
    "rounds": {
        "quorum_fraction": 1.0,
        "min_participants": 1,
        "round_timeout": 30.0,
        "max_rounds": 0,
        "keep_rounds": 1000,
        "broadcast_epoch_rounds": 20,
    },
    "training": {
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 0.05,
        "prox_mu": 0.0,
        "clip_norm": 0.0,
        "noise_multiplier": 0.0,
        "secure_aggregation": False,
        "precision_bits": 16,
    },
    "strategy": {
        "name": "fedavg",
        "norm_bound": 0.0,
        "trim_fraction": 0.1,
        "server_momentum": 0.0,
        "server_learning_rate": 1.0,
        "lr_final_ratio": 1.0,
    },
    "validation": {"max_update_norm": 1000.0, "max_envelope_bytes": 4194304},
    "worker": {"batch_max": 64, "batch_wait": 0.0},
    "metrics": {"port": 0, "host": "0.0.0.0"},
    "privacy": {
        "delta": 1e-5,
        "budget_epsilon": 0.0,
        "dropout_fraction": 0.3,
        "stage_timeout": 20.0,
        "weight_cap": 0,
    },
    "statistics": {"features": 0, "feature_bound": 10.0},
    "bench": {"plaintext_envelopes": False},
}

# A value other than the default for every key of every section.
CHANGED: dict[str, dict[str, Any]] = {
    "amqp": {"url": "amqps://fl:secret@broker.example:5671/fl", "prefetch": 7, "heartbeat": 0},
    "rounds": {
        "quorum_fraction": 0.5,
        "min_participants": 3,
        "round_timeout": 12.5,
        "max_rounds": 40,
        "keep_rounds": 0,
        "broadcast_epoch_rounds": 5,
    },
    "training": {
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 0.01,
        "prox_mu": 0.25,
        "clip_norm": 1.5,
        "noise_multiplier": 0.75,
        "secure_aggregation": True,
        "precision_bits": 20,
    },
    "strategy": {
        "name": "fedavgm",
        "norm_bound": 4.0,
        "trim_fraction": 0.2,
        "server_momentum": 0.9,
        "server_learning_rate": 0.5,
        "lr_final_ratio": 0.1,
    },
    "validation": {"max_update_norm": 50.0, "max_envelope_bytes": 65536},
    "worker": {"batch_max": 8, "batch_wait": 0.25},
    "metrics": {"port": 9102, "host": "127.0.0.1"},
    "privacy": {
        "delta": 1e-6,
        "budget_epsilon": 8.0,
        "dropout_fraction": 0.5,
        "stage_timeout": 5.0,
        "weight_cap": 500,
    },
    "statistics": {"features": 12, "feature_bound": 4.0},
    "bench": {"plaintext_envelopes": True},
}


def test_a_minimal_file_gets_every_documented_default() -> None:
    config = parse_config(_doc(), Path("/unused"))
    assert type(config) is AggregatorConfig
    assert dataclasses.asdict(config) == {
        "aggregator_id": "agg-1",
        "state_dir": Path(STATE),
        "identity": Path(STATE) / "identity.key",
        "registry": Path(STATE) / "gateways.json",
        "initial_weights": DEFAULT_INITIAL_WEIGHTS,
        **DEFAULTS,
    }
    assert config.db_path == Path(STATE) / "coordinator.sqlite3"
    sections = (
        (config.amqp, AmqpConfig),
        (config.rounds, RoundsConfig),
        (config.training, TrainingConfig),
        (config.strategy, StrategyConfig),
        (config.validation, ValidationConfig),
        (config.worker, WorkerConfig),
        (config.metrics, MetricsConfig),
        (config.privacy, PrivacyConfig),
        (config.statistics, StatisticsConfig),
        (config.bench, BenchConfig),
    )
    for section, cls in sections:
        assert type(section) is cls


def test_the_packaged_initial_model_is_the_default_initial_weights() -> None:
    config = parse_config(_doc(), Path("/"))
    assert config.initial_weights.name == "vitals_mlp_init.npz"
    assert config.initial_weights.is_file()


def test_empty_tables_keep_the_defaults() -> None:
    config = parse_config(_doc(**{name: {} for name in TABLES}), Path("/"))
    assert dataclasses.asdict(config) == dataclasses.asdict(parse_config(_doc(), Path("/")))
    assert dataclasses.asdict(config.amqp) == DEFAULTS["amqp"]


def test_every_key_of_every_section_reaches_the_config(tmp_path: Path) -> None:
    aggregator = {
        "id": "coordinator-east",
        "state_dir": "/data/agg",
        "identity": "/keys/agg.key",
        "registry": "enrolled/gateways.json",
        "initial_weights": "/models/start.npz",
    }
    config = parse_config({"aggregator": aggregator, **CHANGED}, tmp_path)
    assert dataclasses.asdict(config) == {
        "aggregator_id": "coordinator-east",
        "state_dir": Path("/data/agg"),
        "identity": Path("/keys/agg.key"),
        "registry": tmp_path / "enrolled" / "gateways.json",
        "initial_weights": Path("/models/start.npz"),
        **CHANGED,
    }


@pytest.mark.parametrize("name", TABLES)
def test_each_section_alone_reaches_the_config(name: str) -> None:
    config = parse_config(_doc(**{name: CHANGED[name]}), Path("/"))
    assert dataclasses.asdict(getattr(config, name)) == CHANGED[name]
    for other in TABLES:
        if other != name:
            assert dataclasses.asdict(getattr(config, other)) == DEFAULTS[other]


def test_an_unknown_section_is_refused_by_its_name() -> None:
    error = _refused(_doc(amqpp={"url": "amqp://x"}))
    assert error.key == "amqpp"
    assert str(error) == f"unknown section [amqpp] (known: {SECTIONS})"


def test_a_missing_or_scalar_aggregator_section_is_refused() -> None:
    message = "missing section [aggregator] (it needs at least id and state_dir)"
    docs: list[dict[str, Any]] = [
        {},
        {"amqp": {}},
        {"aggregator": "agg-1"},
        {"aggregator": ["agg-1"]},
    ]
    for doc in docs:
        error = _refused(doc)
        assert str(error) == message
        assert error.key is None


def test_an_unknown_aggregator_key_is_refused_by_its_name() -> None:
    error = _refused({"aggregator": {"id": "a", "state_dir": STATE, "identity_key": "k"}})
    assert error.key == "aggregator.identity_key"
    assert str(error) == (
        "unknown key aggregator.identity_key (known: id, identity, initial_weights, registry, "
        "state_dir)"
    )


@pytest.mark.parametrize(
    ("ident", "shown"),
    [(None, "None"), ("", "''"), (7, "7"), (True, "True"), (["agg"], "['agg']")],
)
def test_the_aggregator_id_must_be_a_non_empty_string(ident: object, shown: str) -> None:
    table: dict[str, object] = {"state_dir": STATE}
    if ident is not None:
        table["id"] = ident
    error = _refused({"aggregator": table})
    assert error.key == "aggregator.id"
    assert str(error) == f"aggregator.id = {shown} is invalid: expected a non-empty string"


def test_a_one_character_id_is_accepted() -> None:
    config = parse_config({"aggregator": {"id": "a", "state_dir": STATE}}, Path("/"))
    assert config.aggregator_id == "a"


def test_the_state_dir_is_required() -> None:
    error = _refused({"aggregator": {"id": "agg-1"}})
    assert error.key == "aggregator.state_dir"
    assert str(error) == "aggregator.state_dir is required"


@pytest.mark.parametrize("key", ["state_dir", "identity", "registry", "initial_weights"])
@pytest.mark.parametrize(("value", "shown"), [("", "''"), (5, "5"), (False, "False")])
def test_a_path_must_be_a_non_empty_string(key: str, value: object, shown: str) -> None:
    table: dict[str, object] = {"id": "agg-1", "state_dir": STATE, key: value}
    error = _refused({"aggregator": table})
    assert error.key == f"aggregator.{key}"
    assert str(error) == f"aggregator.{key} = {shown} is invalid: expected a path"


def test_relative_paths_are_relative_to_the_base_dir() -> None:
    base = Path("/etc/iomt")
    table = {
        "id": "agg-1",
        "state_dir": "state",
        "identity": "keys/id.key",
        "registry": "../gateways.json",
        "initial_weights": "init.npz",
    }
    config = parse_config({"aggregator": table}, base)
    assert config.state_dir == Path("/etc/iomt/state")
    assert config.identity == Path("/etc/iomt/keys/id.key")
    assert config.registry == Path("/etc/iomt/../gateways.json")
    assert config.initial_weights == Path("/etc/iomt/init.npz")


def test_a_relative_state_dir_moves_the_default_key_and_registry() -> None:
    config = parse_config({"aggregator": {"id": "a", "state_dir": "run"}}, Path("/opt/agg"))
    assert config.identity == Path("/opt/agg/run/identity.key")
    assert config.registry == Path("/opt/agg/run/gateways.json")
    assert config.db_path == Path("/opt/agg/run/coordinator.sqlite3")


def test_load_config_resolves_paths_against_the_file_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    conf = conf_dir / "aggregator.toml"
    conf.write_text(
        '[aggregator]\nid = "agg-1"\nstate_dir = "state"\n\n'
        "[worker]\nbatch_max = 10000\nbatch_wait = 60\n\n[bench]\nplaintext_envelopes = true\n"
    )
    config = load_config(conf)
    assert config.state_dir == conf_dir.resolve() / "state"
    assert config.identity == conf_dir.resolve() / "state" / "identity.key"
    assert config.worker == WorkerConfig(batch_max=10000, batch_wait=60.0)
    assert type(config.worker.batch_wait) is float
    assert config.bench.plaintext_envelopes is True
    assert load_config(str(conf)) == config


def test_load_config_refuses_a_missing_or_malformed_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^cannot read configuration "):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[aggregator\n")
    with pytest.raises(ConfigError, match=r" is not valid TOML: "):
        load_config(bad)


@pytest.mark.parametrize("name", TABLES)
def test_a_section_that_is_not_a_table_is_refused_by_its_name(name: str) -> None:
    error = _refused(_doc(**{name: 3}))
    assert error.key == name
    assert str(error) == f"[{name}] must be a table, got 3"


@pytest.mark.parametrize("name", TABLES)
def test_an_unknown_key_is_refused_with_its_section(name: str) -> None:
    error = _refused(_doc(**{name: {"typo": 1}}))
    assert error.key == f"{name}.typo"
    assert str(error).startswith(f"unknown key {name}.typo (known: ")


def test_the_bench_switch_must_be_a_boolean() -> None:
    error = _refused(_doc(bench={"plaintext_envelopes": 1}))
    assert error.key == "bench.plaintext_envelopes"
    assert str(error) == "bench.plaintext_envelopes = 1 is invalid: expected true or false"
    assert str(_refused(_doc(bench={"oops": True}))) == (
        "unknown key bench.oops (known: plaintext_envelopes)"
    )


def test_secure_aggregation_needs_a_clip_norm() -> None:
    for training in ({"secure_aggregation": True}, {"secure_aggregation": True, "clip_norm": 0}):
        error = _refused(_doc(training=training))
        assert error.key == "training.clip_norm"
        assert str(error) == "training.clip_norm = 0.0 is invalid: expected > 0 in secure mode"
    smallest = math.nextafter(0.0, 1.0)
    config = parse_config(
        _doc(training={"secure_aggregation": True, "clip_norm": smallest}), Path("/")
    )
    assert (config.training.secure_aggregation, config.training.clip_norm) == (True, smallest)
    # without secure aggregation no clipping is the default
    plain = parse_config(_doc(training={"clip_norm": 0}), Path("/"))
    assert (plain.training.secure_aggregation, plain.training.clip_norm) == (False, 0.0)


def test_the_secure_mode_switch_must_be_a_boolean() -> None:
    error = _refused(_doc(training={"secure_aggregation": "yes", "clip_norm": 1.0}))
    assert error.key == "training.secure_aggregation"
    assert str(error) == "training.secure_aggregation = 'yes' is invalid: expected true or false"


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "trimmed_mean", "median"])
def test_each_strategy_name_is_accepted(name: str) -> None:
    assert parse_config(_doc(strategy={"name": name}), Path("/")).strategy.name == name


@pytest.mark.parametrize("name", ["FedAvg", "krum", "", 1])
def test_other_strategy_names_are_refused(name: object) -> None:
    error = _refused(_doc(strategy={"name": name}))
    assert error.key == "strategy.name"
    assert str(error) == (
        f"strategy.name = {name!r} is invalid: expected one of "
        "('fedavg', 'fedavgm', 'trimmed_mean', 'median')"
    )


@pytest.mark.parametrize(("section", "key"), [("amqp", "url"), ("metrics", "host")])
@pytest.mark.parametrize("value", ["", 5, True])
def test_string_keys_must_be_non_empty_strings(section: str, key: str, value: object) -> None:
    error = _refused(_doc(**{section: {key: value}}))
    assert error.key == f"{section}.{key}"
    assert str(error) == f"{section}.{key} = {value!r} is invalid: expected a non-empty string"


# Every numeric key with its inclusive limits, as documented for each setting.
INT_LIMITS: dict[str, tuple[int, int]] = {
    "amqp.prefetch": (1, 65535),
    "amqp.heartbeat": (0, 3600),
    "rounds.min_participants": (1, 100_000),
    "rounds.max_rounds": (0, 1_000_000_000),
    "rounds.keep_rounds": (0, 1_000_000_000),
    "rounds.broadcast_epoch_rounds": (1, 1_000_000_000),
    "training.epochs": (1, 1000),
    "training.batch_size": (1, 4096),
    "training.precision_bits": (1, 30),
    "validation.max_envelope_bytes": (1024, 1_073_741_824),
    "worker.batch_max": (1, 10_000),
    "metrics.port": (0, 65535),
    "privacy.weight_cap": (0, 1_000_000_000),
    "statistics.features": (0, 4096),
}
FLOAT_LIMITS: dict[str, tuple[float, float]] = {
    "rounds.quorum_fraction": (0.0, 1.0),
    "rounds.round_timeout": (0.1, 86400.0),
    "training.learning_rate": (1e-6, 10.0),
    "training.prox_mu": (0.0, 100.0),
    "training.clip_norm": (0.0, 1e6),
    "training.noise_multiplier": (0.0, 100.0),
    "strategy.norm_bound": (0.0, 1e6),
    "strategy.trim_fraction": (0.0, 0.49),
    "strategy.server_momentum": (0.0, 0.99),
    "strategy.server_learning_rate": (1e-3, 10.0),
    "strategy.lr_final_ratio": (1e-3, 1.0),
    "validation.max_update_norm": (1e-6, 1e9),
    "worker.batch_wait": (0.0, 60.0),
    "privacy.delta": (1e-12, 0.1),
    "privacy.budget_epsilon": (0.0, 1e6),
    "privacy.dropout_fraction": (0.0, 0.9),
    "privacy.stage_timeout": (0.1, 3600.0),
    "statistics.feature_bound": (1e-3, 1e6),
}


def _with(dotted: str, value: object) -> dict[str, Any]:
    section, key = dotted.split(".")
    return _doc(**{section: {key: value}})


def _read(config: AggregatorConfig, dotted: str) -> object:
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def test_every_numeric_key_has_its_limits_listed() -> None:
    numeric = {
        f"{name}.{f.name}"
        for name in TABLES
        for f in dataclasses.fields(type(getattr(parse_config(_doc(), Path("/")), name)))
        if f.type in ("int", "float")
    }
    assert numeric == set(INT_LIMITS) | set(FLOAT_LIMITS)


@pytest.mark.parametrize("dotted", sorted(INT_LIMITS))
def test_integer_keys_accept_their_limits_and_refuse_one_past(dotted: str) -> None:
    lo, hi = INT_LIMITS[dotted]
    for value in (lo, hi):
        got = _read(parse_config(_with(dotted, value), Path("/")), dotted)
        assert type(got) is int
        assert got == value
    expected = f"expected an integer in [{lo:g}, {hi:g}]"
    if dotted == "statistics.features":
        expected = "expected an integer in [0, 4096]"
    for value in (lo - 1, hi + 1):
        error = _refused(_with(dotted, value))
        assert error.key == dotted
        assert str(error) == f"{dotted} = {value} is invalid: {expected}"


@pytest.mark.parametrize("dotted", sorted(INT_LIMITS))
@pytest.mark.parametrize("kind", ["float", "bool", "str"])
def test_integer_keys_refuse_other_types(dotted: str, kind: str) -> None:
    lo, _ = INT_LIMITS[dotted]
    value: object = {"float": float(lo) + 0.5, "bool": True, "str": str(lo)}[kind]
    error = _refused(_with(dotted, value))
    assert error.key == dotted
    assert str(error).startswith(f"{dotted} = {value!r} is invalid: expected an integer")


@pytest.mark.parametrize("dotted", sorted(FLOAT_LIMITS))
def test_number_keys_accept_their_limits_and_refuse_the_next_float(dotted: str) -> None:
    lo, hi = FLOAT_LIMITS[dotted]
    for value in (lo, hi):
        got = _read(parse_config(_with(dotted, value), Path("/")), dotted)
        assert type(got) is float
        assert got == value
    for value in (math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf)):
        error = _refused(_with(dotted, value))
        assert error.key == dotted
        assert (
            str(error) == f"{dotted} = {value!r} is invalid: expected a number in [{lo:g}, {hi:g}]"
        )


@pytest.mark.parametrize("dotted", sorted(FLOAT_LIMITS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "1.0"])
def test_number_keys_refuse_non_numbers(dotted: str, value: object) -> None:
    error = _refused(_with(dotted, value))
    assert error.key == dotted


def test_an_integer_is_accepted_where_a_number_is_expected() -> None:
    config = parse_config(_doc(rounds={"round_timeout": 86400, "quorum_fraction": 0}), Path("/"))
    assert (config.rounds.round_timeout, config.rounds.quorum_fraction) == (86400.0, 0.0)
    assert type(config.rounds.round_timeout) is float
    assert type(config.rounds.quorum_fraction) is float


def test_the_example_file_parses_to_its_documented_values() -> None:
    example = Path(__file__).resolve().parents[1] / "configs" / "aggregator.toml"
    config = load_config(example)
    secure = {"clip_norm": 2.0, "noise_multiplier": 0.5, "secure_aggregation": True}
    assert dataclasses.asdict(config) == {
        "aggregator_id": "aggregator",
        "state_dir": Path("/var/lib/iomt-aggregator"),
        "identity": Path("/var/lib/iomt-aggregator/identity.key"),
        "registry": Path("/var/lib/iomt-aggregator/gateways.json"),
        "initial_weights": DEFAULT_INITIAL_WEIGHTS,
        **DEFAULTS,
        "training": {**DEFAULTS["training"], **secure},
    }
