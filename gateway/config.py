"""The gateway's configuration: one typed, validated object built from TOML at start.

Errors name the key, the bad value and what was expected; unknown keys are errors too."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from pqlink import check_identifier
from servicekit.config import (
    ConfigError,
    Range,
    Rules,
    check_known,
    parse_section,
    read_toml,
    resolve_path,
)
from servicekit.mqtt_tls import MqttTls, MqttTlsError, set_groups

__all__ = ["ConfigError", "GatewayConfig", "load_config", "parse_config"]

#: Names of the power models gateway.energy knows (kept here so config loading stays light).
POWER_MODEL_NAMES: Final = ("raspberry-pi-4", "raspberry-pi-5")


@dataclass(frozen=True)
class MqttConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    client_id: str | None = None  # default: "iomt-gateway-<gateway id>"
    keepalive: int = 30
    receive_maximum: int = 1000  # unacknowledged QoS 1 messages the broker may send us
    topic_prefix: str = "iomt"
    session_expiry: int = 7 * 24 * 3600  # seconds the broker keeps our queue while we are down
    reconnect_max_delay: float = 30.0
    # TLS to the broker, off unless tls_ca is set (paths relative to the configuration file).
    tls_ca: str | None = None  # the broker's CA certificate(s), PEM
    tls_cert: str | None = None  # client certificate (PEM), with tls_key
    tls_key: str | None = None
    tls_groups: str | None = None  # e.g. "X25519MLKEM768" (needs OpenSSL >= 3.5)

    @property
    def tls(self) -> MqttTls | None:
        if self.tls_ca is None:
            return None
        return MqttTls(
            Path(self.tls_ca),
            Path(self.tls_cert) if self.tls_cert else None,
            Path(self.tls_key) if self.tls_key else None,
            self.tls_groups,
        )


@dataclass(frozen=True)
class SessionsConfig:
    max_sessions: int = 5000
    unconfirmed_timeout: float = 60.0
    idle_timeout: float = 900.0
    max_clock_skew: float = 120.0
    rekey_records: int = 1 << 16
    rekey_seconds: float = 3600.0
    device_records_per_second: float = 100.0  # token bucket per device: flood protection
    device_burst: int = 400
    device_handshakes_per_minute: float = 12.0
    max_record_bytes: int = 512


@dataclass(frozen=True)
class StoreConfig:
    path: str = "vitals.sqlite3"  # relative to state_dir
    batch_max: int = 500
    batch_interval: float = 0.05
    retention_days: float = 30.0
    max_rows: int = 5_000_000


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    journal: str = "auto"  # auto | yes | no


@dataclass(frozen=True)
class UplinkConfig:
    amqp_url: str | None = None  # None: federated learning is off
    aggregator_public: str = "aggregator.pub"  # relative to state_dir
    # the aggregator's registry of gateway identities, handed out at enrolment: a secure
    # round's participants are checked against it (relative to state_dir)
    gateway_registry: str = "gateways.json"
    reconnect_max_delay: float = 30.0


@dataclass(frozen=True)
class LearningConfig:
    backend: str = "auto"  # auto | litert | numpy
    task: str = "vitals"  # vitals (synthetic vitals, alerts) | rhythm (RR beats, 3 rhythms)
    model: str | None = None  # default: the task's packaged model
    balanced_sampling: bool = False  # class-balanced batches (the rhythm task's NSR dominates)
    restricted_softmax: bool = False  # leave classes absent from the local data out (FedRS)
    max_samples_per_device: int = 20_000
    max_windows: int = 2_000  # windows trained per round, shared between devices
    min_windows: int = 4
    power_model: str = "raspberry-pi-4"  # raspberry-pi-4 | raspberry-pi-5
    min_battery_percent: float = 30.0
    min_battery_percent_when_deadline_near: float = 15.0
    max_cpu_load: float = 0.8
    max_temperature_c: float = 75.0
    min_free_memory_mb: float = 100.0
    require_ac_power: bool = False
    defer_check_interval: float = 5.0


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"  # where Prometheus scrapes /metrics
    port: int = 0  # 0: no metrics endpoint


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark-only switches. Never enable in a deployment: they turn security off."""

    plaintext_records: bool = False
    plaintext_envelopes: bool = False  # model updates and global models unsealed


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    state_dir: Path
    identity: Path
    registry: Path
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    log: LogConfig = field(default_factory=LogConfig)
    uplink: UplinkConfig = field(default_factory=UplinkConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def spool_path(self) -> Path:
        return self.state_dir / "uplink.sqlite3"

    @property
    def aggregator_public_path(self) -> Path:
        p = Path(self.uplink.aggregator_public)
        return p if p.is_absolute() else self.state_dir / p

    @property
    def gateway_registry_path(self) -> Path:
        p = Path(self.uplink.gateway_registry)
        return p if p.is_absolute() else self.state_dir / p

    @property
    def db_path(self) -> Path:
        p = Path(self.store.path)
        return p if p.is_absolute() else self.state_dir / p

    @property
    def status_path(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"iomt-gateway-{self.gateway_id}"

    def topic(self, kind: str, device: str) -> str:
        """Topic layout: <prefix>/<gateway>/<kind>/<device>; kind is hs, hsr or rec."""
        return f"{self.mqtt.topic_prefix}/{self.gateway_id}/{kind}/{device}"


# --- validation -----------------------------------------------------------------------------

_RULES: Final = Rules(
    ranges={
        "mqtt.port": Range(1, 65535, "a TCP port 1-65535"),
        "mqtt.keepalive": Range(5, 3600, "seconds, 5-3600"),
        "mqtt.receive_maximum": Range(1, 65535, "an integer 1-65535"),
        "mqtt.session_expiry": Range(0, 2**32 - 1, "seconds, >= 0"),
        "mqtt.reconnect_max_delay": Range(0.1, 3600, "seconds, 0.1-3600"),
        "sessions.max_sessions": Range(1, 1_000_000, "an integer 1-1000000"),
        "sessions.unconfirmed_timeout": Range(1, 86400, "seconds, 1-86400"),
        "sessions.idle_timeout": Range(1, 7 * 86400, "seconds, 1-604800"),
        "sessions.max_clock_skew": Range(1, 3600, "seconds, 1-3600"),
        "sessions.rekey_records": Range(1, 2**32, "an integer >= 1"),
        "sessions.rekey_seconds": Range(1, 7 * 86400, "seconds, 1-604800"),
        "sessions.device_records_per_second": Range(0.01, 1e6, "a rate > 0"),
        "sessions.device_burst": Range(1, 1_000_000, "an integer >= 1"),
        "sessions.device_handshakes_per_minute": Range(0.01, 1e4, "a rate > 0"),
        "sessions.max_record_bytes": Range(64, 16 * 1024 + 34, "bytes, 64-16418"),
        "store.batch_max": Range(1, 100_000, "an integer 1-100000"),
        "store.batch_interval": Range(0.001, 10, "seconds, 0.001-10"),
        "store.retention_days": Range(0.001, 36500, "days > 0"),
        "store.max_rows": Range(1000, 10**10, "an integer >= 1000"),
        "metrics.port": Range(0, 65535, "a TCP port 1-65535, or 0 for no endpoint"),
        "uplink.reconnect_max_delay": Range(0.1, 3600, "seconds, 0.1-3600"),
        "learning.max_samples_per_device": Range(30, 10**8, "an integer >= 30"),
        "learning.min_windows": Range(1, 10**6, "an integer >= 1"),
        "learning.max_windows": Range(1, 10**6, "an integer 1-1000000"),
        "learning.min_battery_percent": Range(0, 100, "percent, 0-100"),
        "learning.min_battery_percent_when_deadline_near": Range(0, 100, "percent, 0-100"),
        "learning.max_cpu_load": Range(0.01, 1.0, "a fraction 0.01-1"),
        "learning.max_temperature_c": Range(20, 120, "degrees C, 20-120"),
        "learning.min_free_memory_mb": Range(0, 1e6, "megabytes >= 0"),
        "learning.defer_check_interval": Range(0.01, 3600, "seconds, 0.01-3600"),
    },
    choices={
        "log.level": ("debug", "info", "warning", "error"),
        "log.journal": ("auto", "yes", "no"),
        "learning.backend": ("auto", "litert", "numpy"),
        "learning.power_model": POWER_MODEL_NAMES,
        "learning.task": ("vitals", "rhythm"),
    },
)


def _mqtt_tls(mqtt: MqttConfig, base_dir: Path) -> MqttConfig:
    """Resolve the TLS paths and check the TLS keys go together and the groups exist here."""
    if mqtt.tls_ca is None:
        for key in ("tls_cert", "tls_key", "tls_groups"):
            if getattr(mqtt, key) is not None:
                raise ConfigError(
                    f"mqtt.{key} is set but mqtt.tls_ca is not: TLS needs the CA", key=f"mqtt.{key}"
                )
        return mqtt
    if (mqtt.tls_cert is None) != (mqtt.tls_key is None):
        raise ConfigError(
            "mqtt.tls_cert and mqtt.tls_key go together: set both or neither", key="mqtt.tls_cert"
        )
    if mqtt.tls_groups is not None:
        try:
            set_groups(ssl.create_default_context(), mqtt.tls_groups)
        except MqttTlsError as exc:
            raise ConfigError(
                f"mqtt.tls_groups = {mqtt.tls_groups!r} is invalid: {exc}", key="mqtt.tls_groups"
            ) from None

    def resolve(value: str | None) -> str | None:
        return None if value is None else str(base_dir / value)  # an absolute value stays

    return replace(
        mqtt,
        tls_ca=resolve(mqtt.tls_ca),
        tls_cert=resolve(mqtt.tls_cert),
        tls_key=resolve(mqtt.tls_key),
    )


def _learning_model(learning: LearningConfig, base_dir: Path) -> LearningConfig:
    """A model file given relative to the configuration file, as every other path setting."""
    if learning.model is None:
        return learning
    return replace(learning, model=str(base_dir / learning.model))  # an absolute value stays


def parse_config(doc: dict[str, Any], base_dir: Path) -> GatewayConfig:
    """Validate a parsed TOML document; relative paths are relative to `base_dir`."""
    allowed = {
        "gateway",
        "mqtt",
        "sessions",
        "store",
        "log",
        "uplink",
        "learning",
        "metrics",
        "bench",
    }
    check_known("", doc, allowed)
    gw = doc.get("gateway")
    if not isinstance(gw, dict):
        raise ConfigError("missing section [gateway] (it needs at least id and state_dir)")
    check_known("gateway", gw, ("id", "state_dir", "identity", "registry"))
    gateway_id = gw.get("id")
    if not isinstance(gateway_id, str) or not gateway_id:
        raise ConfigError.invalid("gateway.id", gateway_id, "a non-empty string")

    try:
        check_identifier(gateway_id)
    except ValueError as exc:
        raise ConfigError(f"gateway.id: {exc}", key="gateway.id") from None

    def path(key: str) -> Path:
        return resolve_path(gw.get(key), f"gateway.{key}", base_dir)

    state_dir = path("state_dir")
    identity = gw.get("identity")
    registry = gw.get("registry")
    return GatewayConfig(
        gateway_id=gateway_id,
        state_dir=state_dir,
        identity=path("identity") if identity is not None else state_dir / "identity.key",
        registry=path("registry") if registry is not None else state_dir / "registry.json",
        mqtt=_mqtt_tls(parse_section(MqttConfig, "mqtt", doc.get("mqtt", {}), _RULES), base_dir),
        sessions=parse_section(SessionsConfig, "sessions", doc.get("sessions", {}), _RULES),
        store=parse_section(StoreConfig, "store", doc.get("store", {}), _RULES),
        log=parse_section(LogConfig, "log", doc.get("log", {}), _RULES),
        uplink=parse_section(UplinkConfig, "uplink", doc.get("uplink", {}), _RULES),
        learning=_learning_model(
            parse_section(LearningConfig, "learning", doc.get("learning", {}), _RULES), base_dir
        ),
        metrics=parse_section(MetricsConfig, "metrics", doc.get("metrics", {}), _RULES),
        bench=parse_section(BenchConfig, "bench", doc.get("bench", {}), _RULES),
    )


def load_config(path: str | Path) -> GatewayConfig:
    doc, base_dir = read_toml(path)
    return parse_config(doc, base_dir)
