"""The aggregator's configuration (coordinator and workers share one file): a typed, validated
object built from TOML at start; errors name the key, the value and what was expected."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_INITIAL_WEIGHTS = (
    Path(__file__).resolve().parents[1] / "gateway" / "assets" / "vitals_mlp_init.npz"
)


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class AmqpConfig:
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    prefetch: int = 64
    heartbeat: int = 30


@dataclass(frozen=True)
class RoundsConfig:
    quorum_fraction: float = 1.0  # of enrolled gateways
    min_participants: int = 1
    round_timeout: float = 30.0
    max_rounds: int = 0  # 0: run until stopped
    keep_rounds: int = 1000  # closed rounds kept in the database and rounds.jsonl; 0: all


@dataclass(frozen=True)
class TrainingConfig:
    """Sent to the gateways with each global model."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    prox_mu: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping
    noise_multiplier: float = 0.0


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"
    norm_bound: float = 0.0  # 0: no bound
    trim_fraction: float = 0.1


@dataclass(frozen=True)
class ValidationConfig:
    max_update_norm: float = 1000.0
    max_envelope_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class WorkerConfig:
    batch_max: int = 64
    batch_wait: float = 0.01


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # 0: no metrics endpoint (the cluster manifests use 9102)
    host: str = "0.0.0.0"  # noqa: S104 -- scraped by Prometheus from other pods


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark-only: never in a deployment (updates and global models are not protected)."""

    plaintext_envelopes: bool = False


@dataclass(frozen=True)
class AggregatorConfig:
    aggregator_id: str
    state_dir: Path
    identity: Path
    registry: Path
    initial_weights: Path
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "coordinator.sqlite3"


_RANGES: dict[str, tuple[float, float]] = {
    "amqp.prefetch": (1, 65535),
    "amqp.heartbeat": (0, 3600),
    "rounds.quorum_fraction": (0.0, 1.0),
    "rounds.min_participants": (1, 100_000),
    "rounds.round_timeout": (0.1, 86400),
    "rounds.max_rounds": (0, 10**9),
    "rounds.keep_rounds": (0, 10**9),
    "training.epochs": (1, 1000),
    "training.batch_size": (1, 4096),
    "training.learning_rate": (1e-6, 10),
    "training.prox_mu": (0, 100),
    "training.clip_norm": (0, 1e6),
    "training.noise_multiplier": (0, 100),
    "strategy.norm_bound": (0, 1e6),
    "strategy.trim_fraction": (0, 0.49),
    "validation.max_update_norm": (1e-6, 1e9),
    "validation.max_envelope_bytes": (1024, 1 << 30),
    "worker.batch_max": (1, 10_000),
    "worker.batch_wait": (0, 60),
    "metrics.port": (0, 65535),
}
_CHOICES = {"strategy.name": ("fedavg", "trimmed_mean", "median")}


def _check(key: str, value: Any, default: Any) -> Any:
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ConfigError(f"{key} = {value!r} is invalid: expected one of {_CHOICES[key]}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is invalid: expected true or false")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} = {value!r} is invalid: expected a non-empty string")
        return value
    lo, hi = _RANGES[key]
    want_int = isinstance(default, int)
    ok = isinstance(value, int) if want_int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if want_int else "a number"
        raise ConfigError(f"{key} = {value!r} is invalid: expected {kind} in [{lo:g}, {hi:g}]")
    return type(default)(value)


def _section(cls: type, name: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key} (known: {', '.join(sorted(known))})")
    defaults = cls()
    return cls(**{k: _check(f"{name}.{k}", v, getattr(defaults, k)) for k, v in table.items()})


def parse_config(doc: dict[str, Any], base_dir: Path) -> AggregatorConfig:
    sections = {
        "aggregator",
        "amqp",
        "rounds",
        "training",
        "strategy",
        "validation",
        "worker",
        "metrics",
        "bench",
    }
    for name in doc:
        if name not in sections:
            raise ConfigError(f"unknown section [{name}] (known: {', '.join(sorted(sections))})")
    agg = doc.get("aggregator")
    if not isinstance(agg, dict):
        raise ConfigError("missing section [aggregator] (it needs at least id and state_dir)")
    for key in agg:
        if key not in {"id", "state_dir", "identity", "registry", "initial_weights"}:
            raise ConfigError(f"unknown key aggregator.{key}")
    ident = agg.get("id")
    if not isinstance(ident, str) or not ident:
        raise ConfigError(f"aggregator.id = {ident!r} is invalid: expected a non-empty string")

    def path(key: str, default: Path | None) -> Path:
        value = agg.get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"aggregator.{key} is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"aggregator.{key} = {value!r} is invalid: expected a path")
        p = Path(value)
        return p if p.is_absolute() else base_dir / p

    state_dir = path("state_dir", None)
    return AggregatorConfig(
        aggregator_id=ident,
        state_dir=state_dir,
        identity=path("identity", state_dir / "identity.key"),
        registry=path("registry", state_dir / "gateways.json"),
        initial_weights=path("initial_weights", DEFAULT_INITIAL_WEIGHTS),
        amqp=_section(AmqpConfig, "amqp", doc.get("amqp", {})),
        rounds=_section(RoundsConfig, "rounds", doc.get("rounds", {})),
        training=_section(TrainingConfig, "training", doc.get("training", {})),
        strategy=_section(StrategyConfig, "strategy", doc.get("strategy", {})),
        validation=_section(ValidationConfig, "validation", doc.get("validation", {})),
        worker=_section(WorkerConfig, "worker", doc.get("worker", {})),
        metrics=_section(MetricsConfig, "metrics", doc.get("metrics", {})),
        bench=_section(BenchConfig, "bench", doc.get("bench", {})),
    )


def load_config(path: str | Path) -> AggregatorConfig:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return parse_config(doc, p.parent.resolve())
