"""Emulated patients and their vitals: reproducible, always encodable, physiologically shaped,
with labelled events at the configured rate and cohorts that really differ."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from collections import Counter
from collections.abc import Callable, Sequence

import pytest

from device_emulators.profiles import (
    ATHLETE,
    CARDIAC,
    COHORTS,
    ELDERLY_COPD,
    HEALTHY_ADULT,
    POST_OP,
    PatientProfile,
    ProfileError,
    dominant_mix,
    make_profiles,
)
from device_emulators.signals import (
    ACCEL_RANGE,
    HR_RANGE,
    SPO2_RANGE,
    TEMP_RANGE,
    VitalsGenerator,
)
from wire.vitals import Activity, EventLabel, VitalsSample

START_MS = 1_700_006_400_000  # 2023-11-15 00:00:00 UTC: day boundaries fall on midnight
HOUR_MS = 3_600_000


def one_of(cohort: str, seed: int = 1, n: int = 1) -> list[PatientProfile]:
    return make_profiles(n, seed, cohort_weights={cohort: 1.0})


def generate(
    profile: PatientProfile,
    n: int,
    *,
    seed: int = 0,
    interval_ms: int = 1000,
    rate: float = 1.0,
    start_ms: int = START_MS,
) -> list[VitalsSample]:
    gen = VitalsGenerator(
        profile, seed=seed, start_ms=start_ms, interval_ms=interval_ms, event_rate_per_hour=rate
    )
    return gen.samples(n)


def event_runs(samples: Sequence[VitalsSample]) -> list[list[VitalsSample]]:
    """Maximal runs of consecutive samples that carry the same event label."""
    runs: list[list[VitalsSample]] = []
    for prev, cur in zip([None, *samples], samples, strict=False):
        if cur.label is EventLabel.NONE:
            continue
        if prev is None or prev.label is not cur.label:
            runs.append([])
        runs[-1].append(cur)
    return runs


def values(
    samples: Sequence[VitalsSample], field: Callable[[VitalsSample], float | None]
) -> list[float]:
    return [v for v in map(field, samples) if v is not None]


# -- profiles ---------------------------------------------------------------------------------


def test_profiles_are_reproducible_from_the_seed() -> None:
    assert make_profiles(20, 7) == make_profiles(20, 7)
    assert make_profiles(20, 7) != make_profiles(20, 8)
    ids = [p.patient_id for p in make_profiles(20, 7)]
    assert len(set(ids)) == 20


def test_cohort_weights_give_exact_mixes() -> None:
    counts = Counter(p.cohort for p in make_profiles(50, 3))
    assert set(counts) == set(COHORTS)
    assert all(c == 10 for c in counts.values())
    mix = Counter(p.cohort for p in make_profiles(20, 3, cohort_weights=dominant_mix(CARDIAC, 0.6)))
    assert mix[CARDIAC] == 12
    assert sum(mix.values()) == 20
    only = make_profiles(7, 3, cohort_weights={POST_OP: 2.0, ATHLETE: 0.0})
    assert {p.cohort for p in only} == {POST_OP}


@pytest.mark.parametrize(
    "weights", [{"astronaut": 1.0}, {HEALTHY_ADULT: 0.0}, {HEALTHY_ADULT: -1.0}]
)
def test_bad_cohort_weights_are_rejected(weights: dict[str, float]) -> None:
    with pytest.raises(ProfileError):
        make_profiles(3, 1, cohort_weights=weights)


def test_invalid_profiles_are_rejected() -> None:
    good = one_of(HEALTHY_ADULT)[0]
    with pytest.raises(ProfileError, match="dropout_prob"):
        dataclasses.replace(good, dropout_prob=1.5)
    with pytest.raises(ProfileError, match="activity_pattern"):
        dataclasses.replace(good, activity_pattern=good.activity_pattern[:5])
    with pytest.raises(ProfileError, match="activity_pattern"):
        dataclasses.replace(good, activity_pattern=((0.5, 0.5, 0.5, 0.0),) * 24)


# -- generator basics -------------------------------------------------------------------------


def test_same_seed_same_samples_other_seed_other_samples() -> None:
    profile = one_of(CARDIAC)[0]
    assert generate(profile, 3000, seed=5, rate=6) == generate(profile, 3000, seed=5, rate=6)
    assert generate(profile, 3000, seed=5, rate=6) != generate(profile, 3000, seed=6, rate=6)


def test_next_sample_and_batches_give_the_same_stream() -> None:
    profile = one_of(POST_OP)[0]
    one = VitalsGenerator(profile, seed=9, start_ms=START_MS, event_rate_per_hour=20)
    many = VitalsGenerator(profile, seed=9, start_ms=START_MS, event_rate_per_hour=20)
    singles = [one.next_sample() for _ in range(2500)]
    batches = many.samples(1000) + many.samples(1) + many.samples(0) + many.samples(1499)
    assert singles == batches
    assert one.seq == many.seq == 2500


def test_seq_and_timestamps_follow_the_interval() -> None:
    gen = VitalsGenerator(
        one_of(ATHLETE)[0], seed=1, start_ms=START_MS, interval_ms=250, start_seq=40
    )
    samples = gen.samples(100)
    assert [s.seq for s in samples] == list(range(40, 140))
    assert all(s.timestamp_ms == START_MS + s.seq * 250 for s in samples)


@pytest.mark.parametrize(("interval_ms", "rate"), [(0, 1.0), (1000, -1.0), (1000, float("nan"))])
def test_bad_generator_arguments_are_rejected(interval_ms: int, rate: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        VitalsGenerator(
            one_of(ATHLETE)[0],
            seed=1,
            start_ms=0,
            interval_ms=interval_ms,
            event_rate_per_hour=rate,
        )


def _stress_profile() -> PatientProfile:
    """A patient pushed past every physiological bound, to exercise clipping."""
    base = one_of(ATHLETE)[0]
    return dataclasses.replace(
        base,
        resting_hr=190.0,
        hr_variability=60.0,
        motion_artefact=0.9,
        ectopic_rate=0.05,
        activity_pattern=((0.0, 0.0, 1.0, 0.0),) * 24,
    )


def test_every_sample_is_encodable_and_round_trips_exactly() -> None:
    profiles = [*make_profiles(10, 4), _stress_profile()]
    checked = 0
    for n, profile in enumerate(profiles):
        for sample in generate(profile, 2000, seed=n, interval_ms=3000, rate=10):
            assert VitalsSample.decode(sample.encode()) == sample
            checked += 1
            for value, (low, high) in (
                (sample.heart_rate, HR_RANGE),
                (sample.spo2, SPO2_RANGE),
                (sample.skin_temp, TEMP_RANGE),
                (sample.accel, ACCEL_RANGE),
            ):
                assert value is None or low <= value <= high
    assert checked == 22_000
    stressed = generate(_stress_profile(), 2000)
    assert max(values(stressed, lambda s: s.heart_rate)) == HR_RANGE[1]  # clipping happened


# -- physiology -------------------------------------------------------------------------------


def test_circadian_drift_night_heart_rate_below_day() -> None:
    for profile in one_of(HEALTHY_ADULT, n=3):
        day = generate(profile, 24 * 60, interval_ms=60_000, rate=0.0)
        hour = [(s.timestamp_ms - START_MS) // HOUR_MS for s in day]
        night_hr = [s.heart_rate for s, h in zip(day, hour, strict=True) if h < 5 and s.heart_rate]
        day_hr = [
            s.heart_rate for s, h in zip(day, hour, strict=True) if 12 <= h < 20 and s.heart_rate
        ]
        assert statistics.mean(night_hr) < statistics.mean(day_hr) - 5
        dawn_t = [s.skin_temp for s, h in zip(day, hour, strict=True) if 4 <= h < 8 and s.skin_temp]
        dusk_t = [
            s.skin_temp for s, h in zip(day, hour, strict=True) if 16 <= h < 20 and s.skin_temp
        ]
        assert statistics.mean(dawn_t) < statistics.mean(dusk_t) - 0.2
        # Healthy adults sleep at night and are up in the afternoon.
        night_acts = Counter(s.activity for s, h in zip(day, hour, strict=True) if h < 5)
        assert night_acts.most_common(1)[0][0] is Activity.SLEEP


def test_activity_moves_heart_rate_and_acceleration_with_lag() -> None:
    # A patient who alternates between resting and running all day long.
    profile = dataclasses.replace(
        one_of(ATHLETE, seed=2)[0], activity_pattern=((0.5, 0.0, 0.5, 0.0),) * 24
    )
    samples = generate(profile, 8 * 3600, seed=3, rate=0.0)
    by_activity: dict[Activity, list[VitalsSample]] = {}
    for s in samples:
        by_activity.setdefault(s.activity, []).append(s)
    run_hr = statistics.mean(values(by_activity[Activity.RUN], lambda s: s.heart_rate))
    rest_hr = statistics.mean(values(by_activity[Activity.REST], lambda s: s.heart_rate))
    assert run_hr > rest_hr + 30
    run_acc = statistics.pstdev(values(by_activity[Activity.RUN], lambda s: s.accel))
    rest_acc = statistics.pstdev(values(by_activity[Activity.REST], lambda s: s.accel))
    assert run_acc > 5 * rest_acc
    # Lag: the first seconds of a run still show the resting heart rate, minutes later not.
    runs = [
        i
        for i in range(1, len(samples) - 240)
        if samples[i].activity is Activity.RUN
        and samples[i - 1].activity is Activity.REST
        and samples[i + 240].activity is Activity.RUN
    ]
    assert len(runs) >= 3
    onset = values([samples[i + k] for i in runs for k in range(5)], lambda s: s.heart_rate)
    settled = values([samples[i + 240] for i in runs], lambda s: s.heart_rate)
    assert statistics.mean(onset) < statistics.mean(settled) - 30


def test_motion_artefacts_spike_heart_rate_while_running() -> None:
    runner = dataclasses.replace(
        one_of(HEALTHY_ADULT)[0], activity_pattern=((0.0, 0.0, 1.0, 0.0),) * 24, ectopic_rate=0.0
    )

    def spikes(profile: PatientProfile) -> int:
        hr = [s.heart_rate or 0.0 for s in generate(profile, 5000, rate=0.0)]
        return sum(
            1 for i in range(2, len(hr) - 2) if hr[i] - statistics.median(hr[i - 2 : i + 3]) > 15
        )

    clean = spikes(dataclasses.replace(runner, motion_artefact=0.0))
    noisy = spikes(dataclasses.replace(runner, motion_artefact=0.1))
    assert noisy > 200  # about 5000 * 0.1 artefacts
    assert clean < noisy / 10


def test_dropouts_follow_the_profile_rate() -> None:
    for cohort in (HEALTHY_ADULT, ELDERLY_COPD):
        profile = one_of(cohort, seed=3)[0]
        samples = generate(profile, 20_000, interval_ms=5000)
        for field in ("heart_rate", "spo2", "skin_temp"):
            dropped = sum(getattr(s, field) is None for s in samples) / len(samples)
            assert dropped == pytest.approx(profile.dropout_prob, rel=0.2), field
    never = dataclasses.replace(one_of(HEALTHY_ADULT)[0], dropout_prob=0.0)
    assert all(
        None not in (s.heart_rate, s.spo2, s.skin_temp, s.accel) for s in generate(never, 5000)
    )


# -- events -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cohort", COHORTS)
def test_events_occur_at_the_configured_rate(cohort: str) -> None:
    profile = one_of(cohort, seed=11)[0]
    gen = VitalsGenerator(
        profile, seed=4, start_ms=START_MS, interval_ms=60_000, event_rate_per_hour=2.0
    )
    samples = gen.samples(21 * 24 * 60)  # three weeks, one sample a minute
    onsets = Counter(run[0].label for run in event_runs(samples))
    free_hours = sum(s.label is EventLabel.NONE for s in samples) / 60
    expected = {k: rate * free_hours for k, rate in gen.event_rates_per_hour.items()}
    assert sum(expected.values()) > 50  # enough events for a 20% tolerance to be meaningful
    assert sum(onsets.values()) == pytest.approx(sum(expected.values()), rel=0.2)


def test_no_events_at_rate_zero() -> None:
    for profile in make_profiles(5, 2):
        assert all(s.label is EventLabel.NONE for s in generate(profile, 5000, rate=0.0))


@pytest.fixture(scope="module")
def event_samples() -> list[list[VitalsSample]]:
    """Event runs from every cohort, at 2 s sampling so each event spans many samples."""
    runs: list[list[VitalsSample]] = []
    for n, profile in enumerate(make_profiles(10, 21)):
        samples = generate(profile, 4 * 1800, seed=n, interval_ms=2000, rate=8.0)
        # An event still running when the series ends is cut short: leave it out.
        runs += [run for run in event_runs(samples) if run[-1] is not samples[-1]]
    return runs


def _of(runs: list[list[VitalsSample]], label: EventLabel) -> list[list[VitalsSample]]:
    chosen = [run for run in runs if run[0].label is label]
    assert len(chosen) >= 3, f"too few {label.name} events to judge"
    return chosen


def test_tachycardia_events_hold_heart_rate_above_120(
    event_samples: list[list[VitalsSample]],
) -> None:
    for run in _of(event_samples, EventLabel.TACHYCARDIA):
        hr = values(run, lambda s: s.heart_rate)
        assert statistics.mean(hr) > 110
        assert sum(v > 120 for v in hr) * 2 >= 60  # a minute or more above 120 (2 s samples)


def test_bradycardia_events_hold_heart_rate_below_45(
    event_samples: list[list[VitalsSample]],
) -> None:
    for run in _of(event_samples, EventLabel.BRADYCARDIA):
        hr = values(run, lambda s: s.heart_rate)
        assert statistics.mean(hr) < 50
        assert sum(v < 45 for v in hr) * 2 >= 60


def test_desaturation_events_drop_spo2_below_90(event_samples: list[list[VitalsSample]]) -> None:
    for run in _of(event_samples, EventLabel.DESATURATION):
        spo2 = values(run, lambda s: s.spo2)
        assert statistics.mean(spo2) < 90
        assert min(spo2) < 88


def test_fever_events_hold_temperature_above_38(event_samples: list[list[VitalsSample]]) -> None:
    for run in _of(event_samples, EventLabel.FEVER):
        temp = values(run, lambda s: s.skin_temp)
        assert len(run) * 2 >= 10 * 60  # a longer stretch: ten minutes or more
        late = temp[len(temp) // 3 :]
        assert statistics.mean(late) > 38


def test_falls_are_an_impact_then_stillness(event_samples: list[list[VitalsSample]]) -> None:
    for run in _of(event_samples, EventLabel.FALL):
        assert run[0].accel is not None
        assert run[0].accel > 2.5
        after = values(run[1:], lambda s: s.accel)
        assert max(after) < 1.1
        assert statistics.pstdev(after) < 0.02
        assert all(s.activity is Activity.REST for s in run)


def test_impacts_over_2_5_g_come_only_from_falls_or_running() -> None:
    impacts = 0
    for n, profile in enumerate(make_profiles(10, 3)):
        for s in generate(profile, 4000, seed=n, interval_ms=2000, rate=8.0):
            if s.accel is not None and s.accel > 2.5:
                impacts += 1
                assert s.label is EventLabel.FALL or s.activity is Activity.RUN
    assert impacts > 0


# -- cohorts ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort_samples() -> dict[str, list[VitalsSample]]:
    """Four patients per cohort, two days each at one sample a minute, no events."""
    out: dict[str, list[VitalsSample]] = {}
    for cohort in COHORTS:
        out[cohort] = [
            s
            for n, profile in enumerate(one_of(cohort, seed=5, n=4))
            for s in generate(profile, 2 * 24 * 60, seed=n, interval_ms=60_000, rate=0.0)
        ]
    return out


def test_copd_patients_have_lower_spo2(cohort_samples: dict[str, list[VitalsSample]]) -> None:
    mean_spo2 = {c: statistics.mean(values(s, lambda v: v.spo2)) for c, s in cohort_samples.items()}
    assert mean_spo2[ELDERLY_COPD] < mean_spo2[HEALTHY_ADULT] - 3
    assert mean_spo2[ELDERLY_COPD] == min(mean_spo2.values())


def test_athletes_have_the_lowest_resting_heart_rate(
    cohort_samples: dict[str, list[VitalsSample]],
) -> None:
    resting = {
        c: statistics.mean(
            values([v for v in s if v.activity is Activity.REST], lambda v: v.heart_rate)
        )
        for c, s in cohort_samples.items()
    }
    others = [hr for c, hr in resting.items() if c != ATHLETE]
    assert resting[ATHLETE] < min(others) - 10


def test_cardiac_patients_have_irregular_heart_rate(
    cohort_samples: dict[str, list[VitalsSample]],
) -> None:
    def jitter(samples: list[VitalsSample]) -> float:
        hr = [s.heart_rate for s in samples]
        steps = [abs(b - a) for a, b in itertools.pairwise(hr) if a and b]
        return statistics.mean(steps)

    assert jitter(cohort_samples[CARDIAC]) > 1.5 * jitter(cohort_samples[HEALTHY_ADULT])


def test_cohorts_have_their_own_typical_events() -> None:
    typical = {ELDERLY_COPD: EventLabel.DESATURATION, POST_OP: EventLabel.FEVER}
    for cohort, label in typical.items():
        profile = one_of(cohort, seed=8)[0]
        gen = VitalsGenerator(profile, seed=1, start_ms=START_MS, interval_ms=60_000)
        onsets = Counter(run[0].label for run in event_runs(gen.samples(30 * 24 * 60)))
        assert onsets.most_common(1)[0][0] is label, (cohort, onsets)


# -- speed ------------------------------------------------------------------------------------


def test_five_hundred_devices_two_hundred_samples_each() -> None:
    # How fast the generators are is measured by the benchmarks (bench/), not here: a timed
    # unit test fails on a slow machine (or under emulation) without anything being wrong.
    gens = [
        VitalsGenerator(p, seed=n, start_ms=START_MS, event_rate_per_hour=2.0)
        for n, p in enumerate(make_profiles(500, 1))
    ]
    samples = [g.samples(200) for g in gens]
    assert sum(len(s) for s in samples) == 100_000
    assert len({s[0].heart_rate for s in samples}) > 100  # 500 devices, not one repeated
