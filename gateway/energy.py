"""Energy-aware training: psutil readings (power source, battery, CPU load, temperature,
memory), a policy that says train now, defer or skip, and a per-round energy estimate.

Decision table (first matching row wins; `deadline` is the round's closing time):

| condition                                                     | decision | reason            |
| ------------------------------------------------------------- | -------- | ----------------- |
| deadline passed                                               | SKIP     | deadline_passed   |
| require_ac_power and on battery                               | DEFER/SKIP | on_battery      |
| on battery and battery < min_battery_percent_when_deadline_near | SKIP   | battery_critical  |
| on battery and battery < min_battery_percent                  | DEFER    | battery_low       |
| free memory < min_free_memory_mb                              | DEFER    | memory_low        |
| temperature > max_temperature_c                               | DEFER    | too_hot           |
| CPU load > max_cpu_load                                       | DEFER    | cpu_busy          |
| otherwise                                                     | TRAIN    | ok                |

A DEFER becomes a SKIP when less than one check interval is left before the deadline, except
for low battery, which near the deadline trains if above the "deadline near" threshold."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil


@dataclass(frozen=True, slots=True)
class EnergyReadings:
    on_ac_power: bool | None  # None: no battery information (mains-powered Pi)
    battery_percent: float | None
    cpu_load: float  # 0..1 over all cores
    temperature_c: float | None
    free_memory_mb: float
    taken_at: float


class BatteryReading(Protocol):
    """What psutil.sensors_battery() returns, as far as the policy reads it."""

    @property
    def percent(self) -> float: ...

    @property
    def power_plugged(self) -> bool | None: ...


class TemperatureReading(Protocol):
    """One entry of psutil.sensors_temperatures(), as far as the policy reads it."""

    @property
    def current(self) -> float | None: ...


def readings_from(
    *,
    battery: BatteryReading | None,
    temperatures: Mapping[str, Sequence[TemperatureReading]],
    load1: float,
    cpu_count: int | None,
    available_bytes: float,
    taken_at: float,
) -> EnergyReadings:
    """Readings from the raw host values; kept apart from psutil so tests can pin them."""
    # a Raspberry Pi reports its SoC as cpu_thermal; elsewhere take the hottest sensor
    chosen = temperatures.get("cpu_thermal") or [
        t for group in temperatures.values() for t in group
    ]
    values = [t.current for t in chosen if t.current is not None]
    return EnergyReadings(
        on_ac_power=None if battery is None else bool(battery.power_plugged),
        battery_percent=None if battery is None else float(battery.percent),
        # a load average counts queued tasks too, so it can exceed the core count
        cpu_load=min(1.0, load1 / (cpu_count or 1)),
        temperature_c=max(values) if values else None,
        free_memory_mb=available_bytes / 2**20,
        taken_at=taken_at,
    )


def read_energy(now: float | None = None) -> EnergyReadings:
    """Current readings from psutil; fields the platform cannot provide are None."""
    # Host glue only, left out of mutation testing: what psutil returns cannot be pinned, so
    # every value goes through readings_from, whose tests pin them.
    # pragma: no mutate block
    load1, _, _ = psutil.getloadavg()
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    temperatures = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    return readings_from(
        battery=battery,
        temperatures=temperatures,
        load1=load1,
        cpu_count=psutil.cpu_count(),
        available_bytes=psutil.virtual_memory().available,
        taken_at=time.time() if now is None else now,
    )


class Decision(enum.Enum):
    TRAIN_NOW = "train_now"
    DEFER = "defer"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    decision: Decision
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class EnergyPolicyConfig:
    min_battery_percent: float = 30.0
    min_battery_percent_when_deadline_near: float = 15.0
    max_cpu_load: float = 0.8
    max_temperature_c: float = 75.0  # the Pi 4 throttles at 80 °C
    min_free_memory_mb: float = 100.0
    require_ac_power: bool = False
    defer_check_interval_s: float = 5.0

    def __post_init__(self) -> None:
        checks = {
            "min_battery_percent": 0 <= self.min_battery_percent <= 100,
            "min_battery_percent_when_deadline_near": 0
            <= self.min_battery_percent_when_deadline_near
            <= self.min_battery_percent,
            "max_cpu_load": 0 < self.max_cpu_load <= 1,
            "max_temperature_c": 0 < self.max_temperature_c < 150,
            "min_free_memory_mb": self.min_free_memory_mb >= 0,
            "defer_check_interval_s": self.defer_check_interval_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"energy policy: {name}={getattr(self, name)} is out of range")


class EnergyPolicy:
    def __init__(self, config: EnergyPolicyConfig | None = None) -> None:
        self.config = config or EnergyPolicyConfig()

    def decide(self, r: EnergyReadings, *, now: float, deadline: float) -> ScheduleDecision:
        c = self.config
        left = deadline - now
        if left <= 0:
            return ScheduleDecision(
                Decision.SKIP, "deadline_passed", f"{now - deadline:.1f} s past the deadline"
            )
        near = left < c.defer_check_interval_s
        on_battery = r.on_ac_power is False

        def wait(reason: str, detail: str) -> ScheduleDecision:
            if near:
                return ScheduleDecision(Decision.SKIP, reason, detail + "; no time left to wait")
            return ScheduleDecision(Decision.DEFER, reason, detail)

        if c.require_ac_power and on_battery:
            return wait("on_battery", "training needs mains power")
        if on_battery and r.battery_percent is not None:
            if r.battery_percent < c.min_battery_percent_when_deadline_near:
                return ScheduleDecision(
                    Decision.SKIP, "battery_critical", f"battery {r.battery_percent:.0f}%"
                )
            if r.battery_percent < c.min_battery_percent and not near:
                return ScheduleDecision(
                    Decision.DEFER, "battery_low", f"battery {r.battery_percent:.0f}%"
                )
        if r.free_memory_mb < c.min_free_memory_mb:
            return wait("memory_low", f"{r.free_memory_mb:.0f} MB free")
        if r.temperature_c is not None and r.temperature_c > c.max_temperature_c:
            return wait("too_hot", f"{r.temperature_c:.1f} °C")
        if r.cpu_load > c.max_cpu_load:
            return wait("cpu_busy", f"load {r.cpu_load:.2f}")
        return ScheduleDecision(Decision.TRAIN_NOW, "ok", "")


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Watts of a board: idle, plus per busy core (marginal)."""

    name: str
    idle_watts: float
    active_watts_per_core: float
    cores: int


# Raspberry Pi 4 B: about 2.7 W idle and 6.4 W with all four cores busy (published stress
# measurements of the 4 B), so about 0.9 W per busy core. Pi 5: about 3.0 W idle, 8.5 W loaded.
RASPBERRY_PI_4 = PowerModel("raspberry-pi-4", 2.7, 0.9, 4)
RASPBERRY_PI_5 = PowerModel("raspberry-pi-5", 3.0, 1.4, 4)
POWER_MODELS = {m.name: m for m in (RASPBERRY_PI_4, RASPBERRY_PI_5)}


@dataclass(frozen=True, slots=True)
class EnergyEstimate:
    joules: float
    cpu_seconds: float
    wall_seconds: float
    model: str


def estimate_energy(
    cpu_seconds: float,
    wall_seconds: float,
    model: PowerModel = RASPBERRY_PI_4,
    *,
    include_idle: bool = False,
) -> EnergyEstimate:
    """Marginal energy of the work (busy-core watts x CPU seconds), plus the board's idle
    draw over the wall time if asked."""
    joules = model.active_watts_per_core * cpu_seconds
    if include_idle:
        joules += model.idle_watts * wall_seconds
    return EnergyEstimate(joules, cpu_seconds, wall_seconds, model.name)
