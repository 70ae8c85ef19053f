"""Emulated patients: physiological baselines, daily activity habits, sensor quality and event
propensities, drawn from strongly different cohorts so that each gateway's data is non-IID."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from device_emulators.errors import EmulatorError
from wire.vitals import Activity, EventLabel

HOURS_PER_DAY = 24
ACTIVITY_ORDER: tuple[Activity, ...] = tuple(Activity)  # columns of an activity-pattern row
EVENT_KINDS: tuple[EventLabel, ...] = tuple(e for e in EventLabel if e is not EventLabel.NONE)

HEALTHY_ADULT = "healthy-adult"
ATHLETE = "athlete"
ELDERLY_COPD = "elderly-copd"
CARDIAC = "cardiac"
POST_OP = "post-op"
COHORTS: tuple[str, ...] = (HEALTHY_ADULT, ATHLETE, ELDERLY_COPD, CARDIAC, POST_OP)

ActivityRow = tuple[float, float, float, float]  # probabilities of REST, WALK, RUN, SLEEP


class ProfileError(EmulatorError, ValueError):
    """A patient profile or cohort mix is invalid (the caller's values are at fault)."""


@dataclass(frozen=True, slots=True)
class PatientProfile:
    """One emulated patient. Rates and probabilities are per sample unless named otherwise."""

    patient_id: str
    cohort: str
    resting_hr: float  # beats per minute, awake and at rest, daily mean
    hr_variability: float  # standard deviation of sample-to-sample HR noise, bpm
    baseline_spo2: float  # percent
    baseline_skin_temp: float  # degrees Celsius, daily mean
    activity_pattern: tuple[ActivityRow, ...]  # one row per hour of day, columns ACTIVITY_ORDER
    dropout_prob: float  # chance that any one field of a sample is dropped
    motion_artefact: float  # chance of a spurious HR spike / SpO2 dip per sample while running
    ectopic_rate: float  # chance of an irregular-beat HR jump per sample (arrhythmia)
    event_multipliers: tuple[tuple[EventLabel, float], ...]  # scales the generator's base rate

    def __post_init__(self) -> None:
        if not self.patient_id or not self.cohort:
            raise ProfileError("patient_id and cohort must be non-empty")
        if len(self.activity_pattern) != HOURS_PER_DAY:
            raise ProfileError(
                f"{self.patient_id}: activity_pattern has {len(self.activity_pattern)} rows, "
                f"expected {HOURS_PER_DAY}"
            )
        for hour, row in enumerate(self.activity_pattern):
            if len(row) != len(ACTIVITY_ORDER) or min(row) < 0 or abs(sum(row) - 1) > 1e-6:
                raise ProfileError(f"{self.patient_id}: activity_pattern[{hour}]={row} is invalid")
        for name in ("dropout_prob", "motion_artefact", "ectopic_rate"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ProfileError(f"{self.patient_id}: {name}={value} is not in [0, 1)")
        if not 20 < self.resting_hr < 200 or self.hr_variability < 0:
            raise ProfileError(f"{self.patient_id}: resting_hr={self.resting_hr} is implausible")
        if not 50 < self.baseline_spo2 <= 100:
            raise ProfileError(f"{self.patient_id}: baseline_spo2={self.baseline_spo2}")
        if not 30 < self.baseline_skin_temp < 40:
            raise ProfileError(f"{self.patient_id}: baseline_skin_temp={self.baseline_skin_temp}")
        labels = [label for label, _ in self.event_multipliers]
        if len(set(labels)) != len(labels) or EventLabel.NONE in labels:
            raise ProfileError(f"{self.patient_id}: event_multipliers must name each event once")
        if any(m < 0 or not math.isfinite(m) for _, m in self.event_multipliers):
            raise ProfileError(f"{self.patient_id}: event multipliers must be finite and >= 0")

    def activity_probabilities(self, hour: int) -> ActivityRow:
        """Chances of each activity (ACTIVITY_ORDER) when a new activity starts at this hour."""
        return self.activity_pattern[hour % HOURS_PER_DAY]

    def event_multiplier(self, label: EventLabel) -> float:
        """How much more (or less) often than the base rate this patient has `label` events."""
        for known, multiplier in self.event_multipliers:
            if known is label:
                return multiplier
        return 1.0


Range = tuple[float, float]


@dataclass(frozen=True, slots=True)
class _CohortSpec:
    """The ranges a cohort's patients are drawn from (uniformly, per patient)."""

    resting_hr: Range
    hr_variability: Range
    baseline_spo2: Range
    baseline_skin_temp: Range
    dropout_prob: Range
    motion_artefact: Range
    ectopic_rate: Range
    bedtime: Range  # hour of day the patient goes to sleep (may exceed 24)
    sleep_hours: Range
    walk: float  # share of awake hours spent walking
    run: float  # share of awake hours spent running (outside training hours)
    run_hours: tuple[int, ...]  # hours of day with habitual training
    nap: float  # chance of sleeping during the early afternoon
    events: tuple[tuple[EventLabel, float], ...]


_E = EventLabel
# Multipliers are chosen so that the mean over cohorts is about 1: a mix of all cohorts then has
# about the generator's configured event rate, while each cohort has its own typical events.
_COHORTS: Mapping[str, _CohortSpec] = MappingProxyType(
    {
        HEALTHY_ADULT: _CohortSpec(
            resting_hr=(62, 78),
            hr_variability=(2.0, 3.0),
            baseline_spo2=(97.0, 98.5),
            baseline_skin_temp=(36.3, 36.7),
            dropout_prob=(0.01, 0.03),
            motion_artefact=(0.02, 0.05),
            ectopic_rate=(0.0, 0.002),
            bedtime=(22.5, 24.0),
            sleep_hours=(7.0, 8.5),
            walk=0.22,
            run=0.03,
            run_hours=(18,),
            nap=0.02,
            events=(
                (_E.TACHYCARDIA, 0.5),
                (_E.BRADYCARDIA, 0.2),
                (_E.DESATURATION, 0.2),
                (_E.FEVER, 0.4),
                (_E.FALL, 0.2),
            ),
        ),
        ATHLETE: _CohortSpec(
            resting_hr=(44, 54),
            hr_variability=(3.0, 4.5),
            baseline_spo2=(97.5, 99.0),
            baseline_skin_temp=(36.1, 36.5),
            dropout_prob=(0.02, 0.04),
            motion_artefact=(0.05, 0.09),
            ectopic_rate=(0.0, 0.002),
            bedtime=(21.5, 23.0),
            sleep_hours=(8.0, 9.0),
            walk=0.25,
            run=0.08,
            run_hours=(6, 7, 17, 18),
            nap=0.03,
            events=(
                (_E.TACHYCARDIA, 0.7),
                (_E.BRADYCARDIA, 1.0),
                (_E.DESATURATION, 0.2),
                (_E.FEVER, 0.4),
                (_E.FALL, 0.5),
            ),
        ),
        ELDERLY_COPD: _CohortSpec(
            resting_hr=(76, 90),
            hr_variability=(1.2, 2.0),
            baseline_spo2=(91.0, 93.0),
            baseline_skin_temp=(35.9, 36.3),
            dropout_prob=(0.05, 0.09),
            motion_artefact=(0.03, 0.06),
            ectopic_rate=(0.002, 0.01),
            bedtime=(20.5, 22.0),
            sleep_hours=(8.0, 10.0),
            walk=0.08,
            run=0.0,
            run_hours=(),
            nap=0.25,
            events=(
                (_E.TACHYCARDIA, 1.0),
                (_E.BRADYCARDIA, 0.4),
                (_E.DESATURATION, 3.5),
                (_E.FEVER, 0.8),
                (_E.FALL, 1.5),
            ),
        ),
        CARDIAC: _CohortSpec(
            resting_hr=(66, 84),
            hr_variability=(5.0, 8.0),
            baseline_spo2=(95.0, 97.0),
            baseline_skin_temp=(36.2, 36.6),
            dropout_prob=(0.02, 0.05),
            motion_artefact=(0.02, 0.05),
            ectopic_rate=(0.03, 0.08),
            bedtime=(22.0, 23.5),
            sleep_hours=(7.0, 8.5),
            walk=0.12,
            run=0.005,
            run_hours=(),
            nap=0.08,
            events=(
                (_E.TACHYCARDIA, 3.0),
                (_E.BRADYCARDIA, 2.5),
                (_E.DESATURATION, 0.6),
                (_E.FEVER, 0.3),
                (_E.FALL, 0.8),
            ),
        ),
        POST_OP: _CohortSpec(
            resting_hr=(76, 92),
            hr_variability=(2.0, 3.0),
            baseline_spo2=(94.5, 96.5),
            baseline_skin_temp=(36.6, 37.1),
            dropout_prob=(0.03, 0.06),
            motion_artefact=(0.03, 0.06),
            ectopic_rate=(0.0, 0.005),
            bedtime=(21.0, 23.0),
            sleep_hours=(8.0, 10.0),
            walk=0.07,
            run=0.0,
            run_hours=(),
            nap=0.3,
            events=(
                (_E.TACHYCARDIA, 1.0),
                (_E.BRADYCARDIA, 0.3),
                (_E.DESATURATION, 0.8),
                (_E.FEVER, 3.5),
                (_E.FALL, 2.5),
            ),
        ),
    }
)


def _patient_rng(seed: int, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by random.Random, so patient i of a given seed is the
    # same on every run and platform. Emulated physiology, not key material.
    return random.Random(f"iomt-profile:{seed}:{index}")  # noqa: S311


def _awake(hour: float, bedtime: float, sleep_hours: float) -> bool:
    since_bed = (hour - bedtime) % HOURS_PER_DAY
    return since_bed >= sleep_hours


def _normalised(weights: Sequence[float]) -> ActivityRow:
    total = sum(weights)
    rest, walk, run, sleep = (w / total for w in weights)
    return (rest, walk, run, sleep)


def _activity_pattern(spec: _CohortSpec, rng: random.Random) -> tuple[ActivityRow, ...]:
    bedtime = rng.uniform(*spec.bedtime)
    sleep_hours = rng.uniform(*spec.sleep_hours)
    rows = []
    for hour in range(HOURS_PER_DAY):
        if not _awake(hour + 0.5, bedtime, sleep_hours):
            weights = [0.07, 0.01, 0.0, 0.92]  # occasional waking in the night
        else:
            run = spec.run * (6 if hour in spec.run_hours else 1)
            nap = spec.nap if 13 <= hour <= 15 else 0.0
            walk = spec.walk
            weights = [max(1.0 - walk - run - nap, 0.05), walk, run, nap]
        # Per-patient jitter so no two patients of a cohort share exactly the same habits.
        rows.append(_normalised([w * rng.uniform(0.75, 1.25) for w in weights]))
    return tuple(rows)


def make_profile(patient_id: str, cohort: str, rng: random.Random) -> PatientProfile:
    """Draw one patient of `cohort` (one of COHORTS) from `rng`."""
    spec = _COHORTS.get(cohort)
    if spec is None:
        raise ProfileError(f"unknown cohort {cohort!r}; known: {', '.join(COHORTS)}")
    return PatientProfile(
        patient_id=patient_id,
        cohort=cohort,
        resting_hr=rng.uniform(*spec.resting_hr),
        hr_variability=rng.uniform(*spec.hr_variability),
        baseline_spo2=rng.uniform(*spec.baseline_spo2),
        baseline_skin_temp=rng.uniform(*spec.baseline_skin_temp),
        activity_pattern=_activity_pattern(spec, rng),
        dropout_prob=rng.uniform(*spec.dropout_prob),
        motion_artefact=rng.uniform(*spec.motion_artefact),
        ectopic_rate=rng.uniform(*spec.ectopic_rate),
        event_multipliers=tuple((label, m * rng.uniform(0.8, 1.25)) for label, m in spec.events),
    )


def assign_cohorts(n: int, cohort_weights: Mapping[str, float], rng: random.Random) -> list[str]:
    """Exactly `n` cohort names in proportion to the weights (largest remainder), shuffled."""
    unknown = set(cohort_weights) - set(COHORTS)
    if unknown:
        raise ProfileError(f"unknown cohorts {sorted(unknown)}; known: {', '.join(COHORTS)}")
    if any(w < 0 or not math.isfinite(w) for w in cohort_weights.values()):
        raise ProfileError(f"cohort weights must be finite and >= 0: {dict(cohort_weights)}")
    total = sum(cohort_weights.values())
    if total <= 0:
        raise ProfileError("cohort weights must not all be zero")
    names = [c for c in COHORTS if cohort_weights.get(c, 0.0) > 0]
    quotas = {c: n * cohort_weights[c] / total for c in names}
    counts = {c: math.floor(q) for c, q in quotas.items()}
    # Random tie-breaking: with equal weights and few patients, no cohort is always first.
    by_remainder = sorted(names, key=lambda c: (quotas[c] - counts[c], rng.random()), reverse=True)
    for c in by_remainder[: n - sum(counts.values())]:
        counts[c] += 1
    chosen = [c for c in names for _ in range(counts[c])]
    rng.shuffle(chosen)
    return chosen


def make_profiles(
    n: int,
    seed: int,
    *,
    cohort_weights: Mapping[str, float] | None = None,
    id_prefix: str = "patient",
) -> list[PatientProfile]:
    """`n` patients whose cohorts follow `cohort_weights` (default: all cohorts equally).

    The same (n, seed, weights) always gives the same patients; give each gateway its own
    weights (see `dominant_mix`) to make the federation's data non-IID."""
    if n < 0:
        raise ProfileError(f"n={n} must be >= 0")
    weights = cohort_weights if cohort_weights is not None else dict.fromkeys(COHORTS, 1.0)
    cohorts = assign_cohorts(n, weights, _patient_rng(seed, -1))
    return [
        make_profile(f"{id_prefix}-{i + 1:04d}", cohort, _patient_rng(seed, i))
        for i, cohort in enumerate(cohorts)
    ]


def dominant_mix(cohort: str, share: float = 0.7) -> dict[str, float]:
    """Cohort weights where `cohort` has `share` and the other cohorts split the rest equally."""
    if cohort not in COHORTS:
        raise ProfileError(f"unknown cohort {cohort!r}; known: {', '.join(COHORTS)}")
    if not 0 <= share <= 1:
        raise ProfileError(f"share={share} is not in [0, 1]")
    rest = (1 - share) / (len(COHORTS) - 1)
    return {c: share if c == cohort else rest for c in COHORTS}
