"""The coordinator's statistics-round settings: bounded like every key, and refused where the
round would not pool what it says (a secure unweighted mean, plain-mode noise, small bounds)."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.coordinator import CoordinatorService
from pqlink import Identity, Registry, Role, save_registry
from servicekit.config import ConfigError


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _service(tmp_path: Path, **sections: Mapping[str, object]) -> CoordinatorService:
    doc: dict[str, object] = {"aggregator": {"id": "aggregator", "state_dir": str(tmp_path)}}
    doc |= sections
    config = parse_config(doc, tmp_path)
    save_registry(Registry(), config.registry)
    return CoordinatorService(
        config, Identity.generate("aggregator", Role.AGGREGATOR), threading.Event()
    )


def test_statistics_features_are_bounded(tmp_path: Path) -> None:
    base = {"aggregator": {"id": "aggregator", "state_dir": str(tmp_path)}}
    ok = parse_config({**base, "statistics": {"features": 4096}}, tmp_path)
    assert ok.statistics.features == 4096
    with pytest.raises(
        ConfigError,
        match=_exactly("statistics.features = 4097 is invalid: expected an integer in [0, 4096]"),
    ):
        parse_config({**base, "statistics": {"features": 4097}}, tmp_path)
    low = parse_config({**base, "statistics": {"feature_bound": 1e-3}}, tmp_path)
    assert low.statistics.feature_bound == 1e-3
    with pytest.raises(
        ConfigError,
        match=_exactly(
            "statistics.feature_bound = 0.0009 is invalid: expected a number in [0.001, 1e+06]"
        ),
    ):
        parse_config({**base, "statistics": {"feature_bound": 0.0009}}, tmp_path)


def test_the_coordinator_refuses_statistics_it_could_not_pool(tmp_path: Path) -> None:
    secure: dict[str, object] = {"clip_norm": 1.0, "secure_aggregation": True}
    cases: list[tuple[dict[str, Mapping[str, object]], str]] = [
        (
            {"statistics": {"features": 4}, "training": secure},
            "a secure statistics round needs privacy.weight_cap > 0 (a weighted mean)",
        ),
        (
            {"statistics": {"features": 4}, "training": {"noise_multiplier": 0.5}},
            "statistics rounds with noise need secure aggregation",
        ),
        (
            {"statistics": {"features": 4}, "strategy": {"norm_bound": 0.99}},
            "statistics rounds need strategy.norm_bound 0 or >= 1, not 0.99",
        ),
    ]
    for n, (sections, message) in enumerate(cases):
        with pytest.raises(ValueError, match=_exactly(message)):
            _service(tmp_path / str(n), **sections)
    # each at its limit is accepted
    service = _service(
        tmp_path / "ok",
        statistics={"features": 4},
        training=secure,
        privacy={"weight_cap": 1},
        strategy={"norm_bound": 1.0},
    )
    try:
        assert service.statistics_pending
        settings = service.round_settings()
        assert (settings.feature_stats, settings.feature_bound) == (4, 10.0)
    finally:
        service.rounds.close()
        service.privacy.close()
