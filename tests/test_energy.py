"""The energy policy (every branch, with injected readings), real psutil readings, and the
per-round energy estimate."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.energy import (
    RASPBERRY_PI_4,
    Decision,
    EnergyPolicy,
    EnergyPolicyConfig,
    EnergyReadings,
    estimate_energy,
    read_energy,
)

NOW = 1000.0


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


@pytest.mark.parametrize(
    ("readings", "deadline", "decision", "reason"),
    [
        (_r(), NOW + 60, Decision.TRAIN_NOW, "ok"),
        (_r(), NOW - 1, Decision.SKIP, "deadline_passed"),
        (_r(on_ac_power=False, battery_percent=10.0), NOW + 60, Decision.SKIP, "battery_critical"),
        (_r(on_ac_power=False, battery_percent=20.0), NOW + 60, Decision.DEFER, "battery_low"),
        (_r(on_ac_power=False, battery_percent=20.0), NOW + 2, Decision.TRAIN_NOW, "ok"),
        (_r(on_ac_power=True, battery_percent=5.0), NOW + 60, Decision.TRAIN_NOW, "ok"),  # charging
        (_r(free_memory_mb=50.0), NOW + 60, Decision.DEFER, "memory_low"),
        (_r(temperature_c=82.0), NOW + 60, Decision.DEFER, "too_hot"),
        (_r(temperature_c=82.0), NOW + 2, Decision.SKIP, "too_hot"),
        (_r(cpu_load=0.95), NOW + 60, Decision.DEFER, "cpu_busy"),
        (
            _r(on_ac_power=None, battery_percent=None, temperature_c=None),
            NOW + 60,
            Decision.TRAIN_NOW,
            "ok",
        ),
    ],
)
def test_policy_decisions(
    readings: EnergyReadings, deadline: float, decision: Decision, reason: str
) -> None:
    got = EnergyPolicy().decide(readings, now=NOW, deadline=deadline)
    assert (got.decision, got.reason) == (decision, reason)


def test_require_ac_power() -> None:
    policy = EnergyPolicy(EnergyPolicyConfig(require_ac_power=True))
    assert policy.decide(_r(on_ac_power=False), now=NOW, deadline=NOW + 60).reason == "on_battery"
    assert (
        policy.decide(_r(on_ac_power=True), now=NOW, deadline=NOW + 60).decision
        is Decision.TRAIN_NOW
    )


@pytest.mark.parametrize("field", ["max_cpu_load", "min_battery_percent", "defer_check_interval_s"])
def test_config_validation(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EnergyPolicyConfig(**{field: -1.0})  # type: ignore[arg-type]


def test_real_readings_are_sane() -> None:
    r = read_energy()
    assert 0.0 <= r.cpu_load <= 1.0
    assert r.free_memory_mb > 0
    assert r.temperature_c is None or 0 < r.temperature_c < 150
    assert r.battery_percent is None or 0 <= r.battery_percent <= 100


def test_energy_estimate_and_thread_cpu() -> None:
    e = estimate_energy(2.0, 3.0, RASPBERRY_PI_4)
    assert e.joules == pytest.approx(1.8)
    assert estimate_energy(2.0, 3.0, RASPBERRY_PI_4, include_idle=True).joules == pytest.approx(
        1.8 + 8.1
    )
    result: list[float] = []

    def busy() -> None:
        # Spin until the thread's own CPU clock moved (bounded by a wall deadline), not for a
        # fixed wall time: on a busy machine 0.2 s of wall time can be a few ms of CPU.
        c0, t0 = time.thread_time(), time.perf_counter()
        while time.thread_time() - c0 < 0.1 and time.perf_counter() - t0 < 60:
            pass
        result.append(time.thread_time() - c0)

    thread = threading.Thread(target=busy)
    thread.start()
    thread.join()
    assert result[0] >= 0.05  # a busy thread's own CPU time is what the estimate uses
