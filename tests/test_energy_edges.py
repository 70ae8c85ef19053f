"""The energy policy at its edges: every threshold of decide() at its value and one step to
either side, the config bounds at min/max and just outside, and readings from pinned values."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import pytest

from gateway.energy import (
    RASPBERRY_PI_5,
    Decision,
    EnergyPolicy,
    EnergyPolicyConfig,
    EnergyReadings,
    ScheduleDecision,
    estimate_energy,
    read_energy,
    readings_from,
)

NOW = 1000.0
AHEAD = NOW + 60  # far from the deadline: a wait is a DEFER
NEAR = NOW + 2  # less than one check interval (5 s) left: a wait is a SKIP


def _r(**kw: object) -> EnergyReadings:
    base: dict[str, object] = {
        "on_ac_power": True,
        "battery_percent": 90.0,
        "cpu_load": 0.1,
        "temperature_c": 50.0,
        "free_memory_mb": 1000.0,
        "taken_at": NOW,
    }
    base.update(kw)
    return EnergyReadings(**base)  # type: ignore[arg-type]


def _decide(readings: EnergyReadings, deadline: float, **config: object) -> ScheduleDecision:
    policy = EnergyPolicy(EnergyPolicyConfig(**config))  # type: ignore[arg-type]
    return policy.decide(readings, now=NOW, deadline=deadline)


TRAIN = ScheduleDecision(Decision.TRAIN_NOW, "ok", "")


def test_default_config_is_the_documented_one() -> None:
    assert EnergyPolicy().config == EnergyPolicyConfig(
        min_battery_percent=30.0,
        min_battery_percent_when_deadline_near=15.0,
        max_cpu_load=0.8,
        max_temperature_c=75.0,
        min_free_memory_mb=100.0,
        require_ac_power=False,
        defer_check_interval_s=5.0,
    )


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        (NOW - 2.0, ScheduleDecision(Decision.SKIP, "deadline_passed", "2.0 s past the deadline")),
        (NOW, ScheduleDecision(Decision.SKIP, "deadline_passed", "0.0 s past the deadline")),
        (NOW + 0.01, TRAIN),
    ],
)
def test_deadline_edge(deadline: float, expected: ScheduleDecision) -> None:
    assert EnergyPolicy().decide(_r(), now=NOW, deadline=deadline) == expected


@pytest.mark.parametrize(
    ("left", "expected"),
    [
        (5.01, ScheduleDecision(Decision.DEFER, "too_hot", "90.0 °C")),
        (5.0, ScheduleDecision(Decision.DEFER, "too_hot", "90.0 °C")),
        (4.99, ScheduleDecision(Decision.SKIP, "too_hot", "90.0 °C; no time left to wait")),
    ],
)
def test_a_wait_becomes_a_skip_only_under_one_check_interval(
    left: float, expected: ScheduleDecision
) -> None:
    assert _decide(_r(temperature_c=90.0), NOW + left) == expected


@pytest.mark.parametrize(
    ("on_ac_power", "require", "deadline", "expected"),
    [
        (
            False,
            True,
            AHEAD,
            ScheduleDecision(Decision.DEFER, "on_battery", "training needs mains power"),
        ),
        (
            False,
            True,
            NEAR,
            ScheduleDecision(
                Decision.SKIP, "on_battery", "training needs mains power; no time left to wait"
            ),
        ),
        (True, True, AHEAD, TRAIN),
        (None, True, AHEAD, TRAIN),  # no battery at all: a mains-powered board
        (False, False, AHEAD, TRAIN),
    ],
)
def test_require_ac_power(
    on_ac_power: bool | None, require: bool, deadline: float, expected: ScheduleDecision
) -> None:
    readings = _r(on_ac_power=on_ac_power, battery_percent=90.0)
    assert _decide(readings, deadline, require_ac_power=require) == expected


@pytest.mark.parametrize(
    ("percent", "deadline", "expected"),
    [
        # critical: below 15 % always skips, near the deadline or not
        (14.9, AHEAD, ScheduleDecision(Decision.SKIP, "battery_critical", "battery 15%")),
        (14.9, NEAR, ScheduleDecision(Decision.SKIP, "battery_critical", "battery 15%")),
        (15.0, NEAR, TRAIN),
        (15.1, NEAR, TRAIN),
        # low: below 30 % defers while there is time to wait
        (15.0, AHEAD, ScheduleDecision(Decision.DEFER, "battery_low", "battery 15%")),
        (29.9, AHEAD, ScheduleDecision(Decision.DEFER, "battery_low", "battery 30%")),
        (30.0, AHEAD, TRAIN),
        (30.1, AHEAD, TRAIN),
    ],
)
def test_battery_thresholds_on_battery(
    percent: float, deadline: float, expected: ScheduleDecision
) -> None:
    assert _decide(_r(on_ac_power=False, battery_percent=percent), deadline) == expected


@pytest.mark.parametrize("on_ac_power", [True, None])
def test_battery_level_does_not_matter_on_mains(on_ac_power: bool | None) -> None:
    assert _decide(_r(on_ac_power=on_ac_power, battery_percent=1.0), AHEAD) == TRAIN


def test_on_battery_without_a_level_trains() -> None:
    assert _decide(_r(on_ac_power=False, battery_percent=None), AHEAD) == TRAIN


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        (_r(free_memory_mb=99.9), ScheduleDecision(Decision.DEFER, "memory_low", "100 MB free")),
        (_r(free_memory_mb=100.0), TRAIN),
        (_r(free_memory_mb=100.1), TRAIN),
        (_r(temperature_c=74.9), TRAIN),
        (_r(temperature_c=75.0), TRAIN),
        (_r(temperature_c=75.1), ScheduleDecision(Decision.DEFER, "too_hot", "75.1 °C")),
        (_r(temperature_c=None), TRAIN),
        (_r(cpu_load=0.79), TRAIN),
        (_r(cpu_load=0.8), TRAIN),
        (_r(cpu_load=0.81), ScheduleDecision(Decision.DEFER, "cpu_busy", "load 0.81")),
    ],
)
def test_host_thresholds(readings: EnergyReadings, expected: ScheduleDecision) -> None:
    assert _decide(readings, AHEAD) == expected


@pytest.mark.parametrize(
    ("readings", "reason", "detail"),
    [
        (_r(free_memory_mb=10.0), "memory_low", "10 MB free"),
        (_r(temperature_c=80.0), "too_hot", "80.0 °C"),
        (_r(cpu_load=0.9), "cpu_busy", "load 0.90"),
    ],
)
def test_host_waits_skip_near_the_deadline(
    readings: EnergyReadings, reason: str, detail: str
) -> None:
    assert _decide(readings, NEAR) == ScheduleDecision(
        Decision.SKIP, reason, detail + "; no time left to wait"
    )


def test_first_matching_row_wins() -> None:
    everything_wrong = _r(
        on_ac_power=False,
        battery_percent=20.0,
        free_memory_mb=1.0,
        temperature_c=90.0,
        cpu_load=1.0,
    )
    assert _decide(everything_wrong, AHEAD).reason == "battery_low"
    assert _decide(everything_wrong, AHEAD, require_ac_power=True).reason == "on_battery"
    assert _decide(_r(free_memory_mb=1.0, temperature_c=90.0, cpu_load=1.0), AHEAD).reason == (
        "memory_low"
    )
    assert _decide(_r(temperature_c=90.0, cpu_load=1.0), AHEAD).reason == "too_hot"


@pytest.mark.parametrize(
    "config",
    [
        {"min_battery_percent": 0.0, "min_battery_percent_when_deadline_near": 0.0},
        {"min_battery_percent": 100.0},
        {"min_battery_percent_when_deadline_near": 0.0},
        {"min_battery_percent": 40.0, "min_battery_percent_when_deadline_near": 40.0},
        {"max_cpu_load": 0.01},
        {"max_cpu_load": 1.0},
        {"max_temperature_c": 0.1},
        {"max_temperature_c": 149.9},
        {"min_free_memory_mb": 0.0},
        {"defer_check_interval_s": 0.01},
    ],
)
def test_config_bounds_accepted(config: dict[str, float]) -> None:
    built = EnergyPolicyConfig(**config)  # type: ignore[arg-type]
    for name, value in config.items():
        assert getattr(built, name) == value


@pytest.mark.parametrize(
    ("config", "name", "value"),
    [
        ({"min_battery_percent": -0.1}, "min_battery_percent", -0.1),
        ({"min_battery_percent": 100.1}, "min_battery_percent", 100.1),
        (
            {"min_battery_percent_when_deadline_near": -0.1},
            "min_battery_percent_when_deadline_near",
            -0.1,
        ),
        (
            {"min_battery_percent": 40.0, "min_battery_percent_when_deadline_near": 40.1},
            "min_battery_percent_when_deadline_near",
            40.1,
        ),
        ({"max_cpu_load": 0.0}, "max_cpu_load", 0.0),
        ({"max_cpu_load": 1.01}, "max_cpu_load", 1.01),
        ({"max_temperature_c": 0.0}, "max_temperature_c", 0.0),
        ({"max_temperature_c": 150.0}, "max_temperature_c", 150.0),
        ({"min_free_memory_mb": -0.1}, "min_free_memory_mb", -0.1),
        ({"defer_check_interval_s": 0.0}, "defer_check_interval_s", 0.0),
    ],
)
def test_config_bounds_rejected(config: dict[str, float], name: str, value: float) -> None:
    message = f"energy policy: {name}={value} is out of range"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as info:
        EnergyPolicyConfig(**config)  # type: ignore[arg-type]
    assert type(info.value) is ValueError


@dataclass(frozen=True)
class _Battery:
    percent: float
    power_plugged: bool | None


@dataclass(frozen=True)
class _Temp:
    current: float | None


def _readings(**kw: object) -> EnergyReadings:
    base: dict[str, object] = {
        "battery": None,
        "temperatures": {},
        "load1": 0.4,
        "cpu_count": 4,
        "available_bytes": 512 * 2**20,
        "taken_at": NOW,
    }
    base.update(kw)
    return readings_from(**base)  # type: ignore[arg-type]


def test_readings_from_pinned_values() -> None:
    assert _readings(battery=_Battery(42.0, False)) == EnergyReadings(
        on_ac_power=False,
        battery_percent=42.0,
        cpu_load=0.1,
        temperature_c=None,
        free_memory_mb=512.0,
        taken_at=NOW,
    )
    plugged = _readings(battery=_Battery(80, True))
    assert (plugged.on_ac_power, plugged.battery_percent) == (True, 80.0)
    assert type(plugged.battery_percent) is float
    no_battery = _readings()
    assert (no_battery.on_ac_power, no_battery.battery_percent) == (None, None)


@pytest.mark.parametrize(
    ("load1", "cpu_count", "cpu_load"),
    [
        (3.6, 4, 0.9),
        (4.0, 4, 1.0),
        (6.0, 4, 1.0),  # an overloaded host reads as fully busy, not more
        (0.9, None, 0.9),  # psutil may not know the core count
        (1.5, None, 1.0),
    ],
)
def test_cpu_load_is_per_core_and_clamped(
    load1: float, cpu_count: int | None, cpu_load: float
) -> None:
    assert _readings(load1=load1, cpu_count=cpu_count).cpu_load == pytest.approx(cpu_load)


def test_a_busy_host_reads_as_cpu_busy() -> None:
    busy = _readings(load1=3.6, cpu_count=4)
    assert EnergyPolicy().decide(busy, now=NOW, deadline=AHEAD).reason == "cpu_busy"


@pytest.mark.parametrize(
    ("temperatures", "expected"),
    [
        ({}, None),
        ({"acpitz": [_Temp(None)]}, None),
        ({"acpitz": [_Temp(40.0), _Temp(None)], "nvme": [_Temp(61.5), _Temp(30.0)]}, 61.5),
        ({"coretemp": [_Temp(-5.0), _Temp(-1.0)]}, -1.0),
        # the Pi's SoC sensor wins over hotter ones elsewhere
        ({"cpu_thermal": [_Temp(55.0)], "nvme": [_Temp(70.0)]}, 55.0),
        ({"cpu_thermal": [_Temp(55.0), _Temp(57.0)]}, 57.0),
        ({"cpu_thermal": [], "nvme": [_Temp(70.0)]}, 70.0),
    ],
)
def test_temperature_is_the_hottest_chosen_sensor(
    temperatures: dict[str, list[_Temp]], expected: float | None
) -> None:
    assert _readings(temperatures=temperatures).temperature_c == expected


def test_taken_at_is_passed_through() -> None:
    assert _readings(taken_at=123.5).taken_at == 123.5
    assert math.isclose(_readings(available_bytes=3 * 2**19).free_memory_mb, 1.5)


def test_energy_estimate_fields() -> None:
    e = estimate_energy(2.0, 3.0, RASPBERRY_PI_5)
    assert (e.joules, e.cpu_seconds, e.wall_seconds, e.model) == (2.8, 2.0, 3.0, "raspberry-pi-5")
    idle = estimate_energy(2.0, 3.0, RASPBERRY_PI_5, include_idle=True)
    assert idle.joules == pytest.approx(2.8 + 9.0)


def test_read_energy_stamps_the_readings() -> None:
    assert read_energy(now=5.0).taken_at == 5.0
    before = time.time()
    taken = read_energy().taken_at
    assert before <= taken <= time.time()
