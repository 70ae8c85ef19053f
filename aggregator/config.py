"""The aggregator's configuration (coordinator and workers share one file): a typed, validated
object built from TOML at start; errors name the key, the value and what was expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from servicekit.config import (
    ConfigError,
    Range,
    Rules,
    check_known,
    parse_section,
    read_toml,
    resolve_path,
)
from wire.fl import SETTING_RANGES
from wire.model import DEFAULT_INITIAL_WEIGHTS

__all__ = ["AggregatorConfig", "ConfigError", "load_config", "parse_config"]


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
    # global-model broadcasts that share one key epoch (one key entry per gateway); a change
    # of the enrolled gateways starts a new epoch sooner
    broadcast_epoch_rounds: int = 20


@dataclass(frozen=True)
class TrainingConfig:
    """Sent to the gateways with each global model."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    prox_mu: float = 0.0
    clip_norm: float = 0.0  # 0: no clipping
    noise_multiplier: float = 0.0
    secure_aggregation: bool = False  # needs clip_norm > 0: the clip bounds each masked input
    precision_bits: int = 16  # quantisation of the clipped update in secure mode


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "fedavg"
    norm_bound: float = 0.0  # 0: no bound
    trim_fraction: float = 0.1
    # fedavgm only (aggregator/momentum.py): server momentum and learning rate, and the share
    # of training.learning_rate the gateways reach by rounds.max_rounds (1: constant)
    server_momentum: float = 0.0
    server_learning_rate: float = 1.0
    lr_final_ratio: float = 1.0


@dataclass(frozen=True)
class ValidationConfig:
    max_update_norm: float = 1000.0
    max_envelope_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class WorkerConfig:
    batch_max: int = 64
    batch_wait: float = 0.0  # 0: fold what has arrived at once, batching only under load


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # 0: no metrics endpoint (the cluster manifests use 9102)
    host: str = "0.0.0.0"  # noqa: S104 -- scraped by Prometheus from other pods


@dataclass(frozen=True)
class PrivacyConfig:
    """Accounting of [training] noise_multiplier (gateway-level DP) and secure rounds' stages."""

    delta: float = 1e-5  # epsilon is stated at this delta
    budget_epsilon: float = 0.0  # 0: accounted, never refused
    dropout_fraction: float = 0.3  # dropouts a secure round is sized to survive
    stage_timeout: float = 20.0  # seconds per secure stage (adverts wait a round_timeout)
    # secure rounds weigh updates by sample count up to this many (0: unweighted mean); the
    # cap bounds one gateway's weight, so the DP sensitivity holds whatever count it has
    weight_cap: int = 0  # unweighted unless configured: see docs/secure-aggregation.md


@dataclass(frozen=True)
class StatisticsConfig:
    """Federated feature standardisation (wire/feature_scaling.py): with `features` d > 0 the
    first round of a fresh coordinator is a statistics round over d features clipped to
    `feature_bound`, and every later global model carries the pooled mean/std."""

    features: int = 0  # 0: no statistics round, gateways keep their fixed scaling
    feature_bound: float = 10.0  # the rhythm and vitals features' own clip (FEATURE_CLIP)


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
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "coordinator.sqlite3"


_RULES: Final = Rules(
    ranges={
        "amqp.prefetch": Range(1, 65535),
        "amqp.heartbeat": Range(0, 3600),
        "rounds.quorum_fraction": Range(0.0, 1.0),
        "rounds.min_participants": Range(1, 100_000),
        "rounds.round_timeout": Range(0.1, 86400),
        "rounds.max_rounds": Range(0, 10**9),
        "rounds.keep_rounds": Range(0, 10**9),
        "rounds.broadcast_epoch_rounds": Range(1, 10**9),
        "strategy.norm_bound": Range(0, 1e6),
        "strategy.trim_fraction": Range(0, 0.49),
        "strategy.server_momentum": Range(0, 0.99),
        "strategy.server_learning_rate": Range(1e-3, 10),
        "strategy.lr_final_ratio": Range(1e-3, 1),
        "validation.max_update_norm": Range(1e-6, 1e9),
        "validation.max_envelope_bytes": Range(1024, 1 << 30),
        "worker.batch_max": Range(1, 10_000),
        "worker.batch_wait": Range(0, 60),
        "metrics.port": Range(0, 65535),
        "privacy.delta": Range(1e-12, 0.1),
        "privacy.budget_epsilon": Range(0, 1e6),
        "privacy.dropout_fraction": Range(0, 0.9),
        "privacy.stage_timeout": Range(0.1, 3600),
        "privacy.weight_cap": Range(0, 10**9),
        "statistics.features": Range(0, 4096, "an integer in [0, 4096]"),
        "statistics.feature_bound": Range(1e-3, 1e6),
        # What gateways accept in a round's settings is what the config may ask for.
        **{f"training.{k}": Range(lo, hi) for k, (lo, hi) in SETTING_RANGES.items()},
    },
    choices={"strategy.name": ("fedavg", "fedavgm", "trimmed_mean", "median")},
)


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
        "privacy",
        "statistics",
        "bench",
    }
    check_known("", doc, sections)
    agg = doc.get("aggregator")
    if not isinstance(agg, dict):
        raise ConfigError("missing section [aggregator] (it needs at least id and state_dir)")
    check_known("aggregator", agg, ("id", "state_dir", "identity", "registry", "initial_weights"))
    ident = agg.get("id")
    if not isinstance(ident, str) or not ident:
        raise ConfigError.invalid("aggregator.id", ident, "a non-empty string")

    def path(key: str, default: Path | None) -> Path:
        value = agg.get(key)
        if value is None:
            if default is None:
                raise ConfigError(f"aggregator.{key} is required", key=f"aggregator.{key}")
            return default
        return resolve_path(value, f"aggregator.{key}", base_dir)

    state_dir = path("state_dir", None)
    training = parse_section(TrainingConfig, "training", doc.get("training", {}), _RULES)
    if training.secure_aggregation and training.clip_norm <= 0:
        # each masked input is bounded only by the gateway's own clip
        raise ConfigError.invalid("training.clip_norm", training.clip_norm, "> 0 in secure mode")
    return AggregatorConfig(
        aggregator_id=ident,
        state_dir=state_dir,
        identity=path("identity", state_dir / "identity.key"),
        registry=path("registry", state_dir / "gateways.json"),
        initial_weights=path("initial_weights", DEFAULT_INITIAL_WEIGHTS),
        amqp=parse_section(AmqpConfig, "amqp", doc.get("amqp", {}), _RULES),
        rounds=parse_section(RoundsConfig, "rounds", doc.get("rounds", {}), _RULES),
        training=training,
        strategy=parse_section(StrategyConfig, "strategy", doc.get("strategy", {}), _RULES),
        validation=parse_section(ValidationConfig, "validation", doc.get("validation", {}), _RULES),
        worker=parse_section(WorkerConfig, "worker", doc.get("worker", {}), _RULES),
        metrics=parse_section(MetricsConfig, "metrics", doc.get("metrics", {}), _RULES),
        privacy=parse_section(PrivacyConfig, "privacy", doc.get("privacy", {}), _RULES),
        statistics=parse_section(StatisticsConfig, "statistics", doc.get("statistics", {}), _RULES),
        bench=parse_section(BenchConfig, "bench", doc.get("bench", {}), _RULES),
    )


def load_config(path: str | Path) -> AggregatorConfig:
    doc, base_dir = read_toml(path)
    return parse_config(doc, base_dir)
