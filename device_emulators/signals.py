"""Emulated wearable vitals for one patient: circadian drift, activity with lagged responses,
sensor noise, motion artefacts, dropped fields and labelled clinical events, from a seed."""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from types import MappingProxyType
from typing import Final

from device_emulators.profiles import ACTIVITY_ORDER, EVENT_KINDS, PatientProfile
from wire.vitals import Activity, EventLabel, VitalsSample

_MS_PER_HOUR: Final = 3_600_000
_MS_PER_DAY: Final = 24 * _MS_PER_HOUR
_RAD_PER_MS: Final = 2 * math.pi / _MS_PER_DAY
_HR_PEAK_PHASE: Final = 16 / 24 * 2 * math.pi  # heart rate peaks mid-afternoon, lowest ~04:00
_TEMP_PEAK_PHASE: Final = 18 / 24 * 2 * math.pi  # body temperature peaks early evening
_HR_CIRCADIAN: Final = 0.06  # fraction of resting HR
_TEMP_CIRCADIAN: Final = 0.3  # degrees C

# A fixed table of standard-normal quantiles indexed by random bits: one getrandbits() call per
# normal draw is several times cheaper than random.gauss, and ±3.6 sigma tails are plenty for
# emulated sensor noise. Immutable, computed once at import.
_GAUSS_BITS: Final = 12
_GAUSS: Final = tuple(
    NormalDist().inv_cdf((i + 0.5) / (1 << _GAUSS_BITS)) for i in range(1 << _GAUSS_BITS)
)

# Per activity: HR offset (bpm; for SLEEP a fraction of resting HR), SpO2 offset, accel mean and
# standard deviation (g; 1 g is gravity at rest), and the share of the profile's motion-artefact
# chance that applies (a running wrist shakes the optical sensor most).
_HR_OFFSET: Final = MappingProxyType(
    {Activity.REST: 0.0, Activity.WALK: 22.0, Activity.RUN: 60.0, Activity.SLEEP: 0.0}
)
_SLEEP_HR_FRACTION: Final = -0.12
_SPO2_OFFSET: Final = MappingProxyType(
    {Activity.REST: 0.0, Activity.WALK: -0.2, Activity.RUN: -0.8, Activity.SLEEP: -0.8}
)
_ACCEL: Final = MappingProxyType(
    {
        Activity.REST: (1.0, 0.03),
        Activity.WALK: (1.15, 0.12),
        Activity.RUN: (1.55, 0.35),
        Activity.SLEEP: (1.0, 0.008),
    }
)
_ARTEFACT_SHARE: Final = MappingProxyType(
    {Activity.REST: 0.0, Activity.WALK: 0.5, Activity.RUN: 1.0, Activity.SLEEP: 0.0}
)
# Mean time spent in an activity before the next one is drawn from the hour's pattern.
_DWELL_MS: Final = MappingProxyType(
    {
        Activity.REST: 20 * 60_000,
        Activity.WALK: 8 * 60_000,
        Activity.RUN: 15 * 60_000,
        Activity.SLEEP: 90 * 60_000,
    }
)

# Response time constants (seconds): physiology lags activity; events act faster than habits.
_TAU_HR, _TAU_SPO2, _TAU_TEMP, _TAU_ACCEL = 40.0, 20.0, 600.0, 3.0
_TAU_EVENT, _TAU_FEVER = 8.0, 180.0

# The encodable (and physiologically plausible) range of each field, and its wire resolution.
HR_RANGE: Final = (25.0, 240.0)
SPO2_RANGE: Final = (50.0, 100.0)
TEMP_RANGE: Final = (25.0, 43.0)
ACCEL_RANGE: Final = (0.0, 16.0)
_SPO2_NOISE, _TEMP_NOISE = 0.35, 0.03
_FALL_IMPACT_G = 3.0  # an impact reads between this and twice this
_STILL_SD = 0.004  # accel noise of a body lying still after a fall


@dataclass(frozen=True, slots=True)
class EventShape:
    """How long an event of one kind lasts (seconds, drawn uniformly)."""

    min_seconds: float
    max_seconds: float


EVENT_SHAPES: Final = MappingProxyType(
    {
        EventLabel.TACHYCARDIA: EventShape(90, 300),
        EventLabel.BRADYCARDIA: EventShape(90, 300),
        EventLabel.DESATURATION: EventShape(60, 240),
        EventLabel.FEVER: EventShape(10 * 60, 30 * 60),
        EventLabel.FALL: EventShape(30, 120),
    }
)


_Regime = tuple[
    Activity, EventLabel, bool, int, float, float, float, float, float, float, float, float, bool
]


def _alpha(interval_ms: int, tau_s: float) -> float:
    """Step of a first-order lag sampled every `interval_ms` (1 = follows instantly)."""
    return 1.0 - math.exp(-interval_ms / 1000 / tau_s)


class VitalsGenerator:
    """A patient's wearable: `next_sample()` returns the reading `interval_ms` after the last.

    Clinical events start as a Poisson process over event-free time (one event at a time), at
    `event_rate_per_hour / len(EVENT_KINDS)` per kind times the profile's multiplier: a patient
    with all multipliers 1 has `event_rate_per_hour` events per event-free hour. Every sample
    taken while an event lasts carries its label. Time of day (circadian rhythm, activity
    habits) is read from timestamp_ms as UTC: emulated patients live on UTC."""

    def __init__(
        self,
        profile: PatientProfile,
        *,
        seed: int,
        start_ms: int,
        interval_ms: int = 1000,
        event_rate_per_hour: float = 1.0,
        start_seq: int = 0,
    ) -> None:
        if interval_ms <= 0:
            raise ValueError(f"interval_ms={interval_ms} must be > 0")
        if event_rate_per_hour < 0 or not math.isfinite(event_rate_per_hour):
            raise ValueError(f"event_rate_per_hour={event_rate_per_hour} must be >= 0")
        if start_seq < 0:
            raise ValueError(f"start_seq={start_seq} must be >= 0")
        self.profile = profile
        self.interval_ms = interval_ms
        self.start_ms = start_ms
        # The one source of randomness: emulated physiology, not key material.
        self._rng = random.Random(seed)  # noqa: S311
        self._seq = start_seq
        per_kind = event_rate_per_hour / len(EVENT_KINDS)
        self.event_rates_per_hour: Final = MappingProxyType(
            {k: per_kind * profile.event_multiplier(k) for k in EVENT_KINDS}
        )
        self._event_cum = tuple(itertools.accumulate(self.event_rates_per_hour.values()))
        self._event_total_per_ms = self._event_cum[-1] / _MS_PER_HOUR
        self._cum_patterns = tuple(
            tuple(itertools.accumulate(row)) for row in profile.activity_pattern
        )
        self._a_hr = _alpha(interval_ms, _TAU_HR)
        self._a_spo2 = _alpha(interval_ms, _TAU_SPO2)
        self._a_temp = _alpha(interval_ms, _TAU_TEMP)
        self._a_accel = _alpha(interval_ms, _TAU_ACCEL)
        self._a_event = _alpha(interval_ms, _TAU_EVENT)
        self._a_fever = _alpha(interval_ms, _TAU_FEVER)
        self._hr_sd = profile.hr_variability
        self._ectopic = profile.ectopic_rate

        self._hr_rest = profile.resting_hr
        self._temp_base = profile.baseline_skin_temp

        t0 = start_ms + start_seq * interval_ms
        self._activity = Activity.REST
        self._activity_until = t0
        self._hr_act = self._spo2_act = self._accel_mean = self._accel_sd = 0.0
        self._p_artefact = 0.0
        self._switch_activity(t0)
        # Start in steady state so the first samples have no warm-up transient.
        self._hr = self._hr_target(t0)
        self._spo2 = self._spo2_act
        self._temp = self._temp_target(t0)
        self._accel = self._accel_mean
        # Event state: the label, when it ends, and the offsets it drives the signals towards.
        self._event = EventLabel.NONE
        self._event_until = t0
        self._next_event_at = t0 + self._event_gap_ms()
        self._hr_ev = self._hr_ev_target = 0.0
        self._spo2_ev = self._spo2_ev_target = 0.0
        self._temp_ev = self._temp_ev_target = 0.0
        self._fall_spike = False
        # Dropouts by geometric skipping: one random draw per dropped field, not per field.
        self._next_drop = [start_seq - 1 + self._drop_gap() for _ in range(4)]
        self._first_drop = min(self._next_drop)

    # -- public ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """Sequence number of the next sample."""
        return self._seq

    def next_sample(self) -> VitalsSample:
        return self.samples(1)[0]

    def samples(self, n: int) -> list[VitalsSample]:
        """The next `n` samples (the same ones `n` calls of next_sample would return)."""
        # Hot path (hundreds of devices, thousands of samples each): the per-sample state
        # lives in locals for the loop and is written back at the end; the rare regime changes
        # (activity, event start and end) go through methods and are reloaded after them.
        rng = self._rng
        bits = rng.getrandbits
        uniform01 = rng.random
        gauss = _GAUSS
        cos = math.cos
        start_ms, interval = self.start_ms, self.interval_ms
        a_hr, a_spo2, a_temp, a_accel = self._a_hr, self._a_spo2, self._a_temp, self._a_accel
        a_event, a_fever = self._a_event, self._a_fever
        hr_rest, temp_base, hr_sd, ectopic = (
            self._hr_rest,
            self._temp_base,
            self._hr_sd,
            self._ectopic,
        )
        hr_lo, hr_hi = HR_RANGE
        spo2_lo, spo2_hi = SPO2_RANGE
        temp_lo, temp_hi = TEMP_RANGE
        accel_lo, accel_hi = ACCEL_RANGE
        seq, hr, hr_ev, spo2, spo2_ev = self._seq, self._hr, self._hr_ev, self._spo2, self._spo2_ev
        temp, temp_ev, accel = self._temp, self._temp_ev, self._accel
        first_drop = self._first_drop
        (
            activity,
            event,
            still,
            next_change,
            hr_act,
            spo2_act,
            accel_mean,
            accel_sd,
            p_artefact,
            hr_ev_target,
            spo2_ev_target,
            temp_ev_target,
            fall_spike,
        ) = self._regime()
        out: list[VitalsSample] = []
        append = out.append
        for _ in range(n):
            t = start_ms + seq * interval
            if t >= next_change:
                self._change_regime(t)
                (
                    activity,
                    event,
                    still,
                    next_change,
                    hr_act,
                    spo2_act,
                    accel_mean,
                    accel_sd,
                    p_artefact,
                    hr_ev_target,
                    spo2_ev_target,
                    temp_ev_target,
                    fall_spike,
                ) = self._regime()

            # Lagged physiology: habits (activity, time of day) and events move separate
            # components, so an event ends crisply while the habit component stays smooth.
            day_phase = t % _MS_PER_DAY * _RAD_PER_MS
            hr_target = hr_rest * (1.0 + _HR_CIRCADIAN * cos(day_phase - _HR_PEAK_PHASE))
            hr += (hr_target + hr_act - hr) * a_hr
            hr_ev += (hr_ev_target - hr_ev) * a_event
            spo2 += (spo2_act - spo2) * a_spo2
            spo2_ev += (spo2_ev_target - spo2_ev) * a_event
            temp += (
                temp_base + _TEMP_CIRCADIAN * cos(day_phase - _TEMP_PEAK_PHASE) - temp
            ) * a_temp
            temp_ev += (temp_ev_target - temp_ev) * a_fever
            accel += (accel_mean - accel) * a_accel

            hr_x = hr + hr_ev + gauss[bits(_GAUSS_BITS)] * hr_sd
            spo2_x = spo2 + spo2_ev + gauss[bits(_GAUSS_BITS)] * _SPO2_NOISE
            temp_x = temp + temp_ev + gauss[bits(_GAUSS_BITS)] * _TEMP_NOISE
            if not still:
                accel_x = accel + gauss[bits(_GAUSS_BITS)] * accel_sd
            elif fall_spike:
                accel_x = _FALL_IMPACT_G + _FALL_IMPACT_G * uniform01()
            else:
                accel_x = 1.0 + gauss[bits(_GAUSS_BITS)] * _STILL_SD

            # One uniform draw decides both glitches: [0, p_ectopic) is an irregular beat,
            # [p_ectopic, p_ectopic + p_artefact) a motion artefact, the rest a clean reading.
            u = uniform01()
            if u < ectopic:
                jump = 15.0 + 20.0 * u / ectopic
                hr_x += jump if bits(1) else -jump
            elif u < ectopic + p_artefact:
                x = (u - ectopic) / p_artefact
                hr_x += 20.0 + 40.0 * x
                spo2_x -= 3.0 + 7.0 * x

            # Clip to the encodable range and round to wire resolution: encode/decode is exact.
            hr_out = int((hr_lo if hr_x < hr_lo else min(hr_x, hr_hi)) * 10 + 0.5) / 10
            spo2_out = (
                int((spo2_lo if spo2_x < spo2_lo else min(spo2_x, spo2_hi)) * 100 + 0.5) / 100
            )
            temp_out = (
                int((temp_lo if temp_x < temp_lo else min(temp_x, temp_hi)) * 100 + 0.5) / 100
            )
            accel_out = (
                int((accel_lo if accel_x < accel_lo else min(accel_x, accel_hi)) * 1000 + 0.5)
                / 1000
            )
            if seq >= first_drop:
                dropped = self._take_drops(seq)
                # The accelerometer never loses the impact of a fall: it is what makes a fall.
                sample = VitalsSample(
                    seq,
                    t,
                    None if dropped[0] else hr_out,
                    None if dropped[1] else spo2_out,
                    None if dropped[2] else temp_out,
                    None if dropped[3] and not fall_spike else accel_out,
                    activity,
                    event,
                )
                first_drop = self._first_drop
            else:
                sample = VitalsSample(
                    seq, t, hr_out, spo2_out, temp_out, accel_out, activity, event
                )
            append(sample)
            fall_spike = False
            seq += 1

        self._seq, self._hr, self._hr_ev, self._spo2, self._spo2_ev = seq, hr, hr_ev, spo2, spo2_ev
        self._temp, self._temp_ev, self._accel = temp, temp_ev, accel
        self._fall_spike = fall_spike
        return out

    # -- internals ------------------------------------------------------------------------

    def _regime(self) -> _Regime:
        """What the sample loop needs to know about the current activity and event."""
        event = self._event
        still = event is EventLabel.FALL
        if event is EventLabel.NONE:
            next_change = min(self._activity_until, self._next_event_at)
        else:
            next_change = min(self._activity_until, self._event_until)
        return (
            Activity.REST if still else self._activity,
            event,
            still,
            next_change,
            self._hr_act,
            self._spo2_act,
            self._accel_mean,
            self._accel_sd,
            0.0 if still else self._p_artefact,
            self._hr_ev_target,
            self._spo2_ev_target,
            self._temp_ev_target,
            self._take_fall_spike(),
        )

    def _take_fall_spike(self) -> bool:
        # The impact belongs to exactly one sample: whoever reads the flag consumes it.
        spike, self._fall_spike = self._fall_spike, False
        return spike

    def _change_regime(self, t: int) -> None:
        if self._event is not EventLabel.NONE and t >= self._event_until:
            self._end_event(t)
        if t >= self._activity_until:
            self._switch_activity(t)
        if self._event is EventLabel.NONE and t >= self._next_event_at:
            self._start_event(t)

    def _hr_target(self, t: int) -> float:
        circadian = _HR_CIRCADIAN * math.cos(t % _MS_PER_DAY * _RAD_PER_MS - _HR_PEAK_PHASE)
        return self._hr_rest * (1.0 + circadian) + self._hr_act

    def _temp_target(self, t: int) -> float:
        phase = t % _MS_PER_DAY * _RAD_PER_MS - _TEMP_PEAK_PHASE
        return self._temp_base + _TEMP_CIRCADIAN * math.cos(phase)

    def _switch_activity(self, t: int) -> None:
        hour = (t // _MS_PER_HOUR) % 24
        cumulative = self._cum_patterns[hour]
        u = self._rng.random() * cumulative[-1]
        activity = ACTIVITY_ORDER[min(bisect.bisect_right(cumulative, u), len(cumulative) - 1)]
        self._activity = activity
        self._activity_until = t + max(1, round(self._rng.expovariate(1 / _DWELL_MS[activity])))
        rest = self._hr_rest
        sleeping = activity is Activity.SLEEP
        self._hr_act = _SLEEP_HR_FRACTION * rest if sleeping else _HR_OFFSET[activity]
        self._spo2_act = self.profile.baseline_spo2 + _SPO2_OFFSET[activity]
        self._accel_mean, self._accel_sd = _ACCEL[activity]
        self._p_artefact = self.profile.motion_artefact * _ARTEFACT_SHARE[activity]

    def _take_drops(self, seq: int) -> tuple[bool, bool, bool, bool]:
        """Which fields sample `seq` loses; schedules each dropped field's next dropout."""
        drop = self._next_drop
        dropped = (seq >= drop[0], seq >= drop[1], seq >= drop[2], seq >= drop[3])
        for i, hit in enumerate(dropped):
            if hit:
                drop[i] = seq + self._drop_gap()
        self._first_drop = min(drop)
        return dropped

    def _drop_gap(self) -> int:
        p = self.profile.dropout_prob
        if p <= 0:
            return 1 << 62
        # Geometric number of samples up to and including the next dropped one.
        return 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - p))

    def _event_gap_ms(self) -> int:
        if self._event_total_per_ms <= 0:
            return 1 << 62
        return max(1, round(self._rng.expovariate(self._event_total_per_ms)))

    def _start_event(self, t: int) -> None:
        rng = self._rng
        u = rng.random() * self._event_cum[-1]
        kind = EVENT_KINDS[min(bisect.bisect_right(self._event_cum, u), len(EVENT_KINDS) - 1)]
        shape = EVENT_SHAPES[kind]
        duration_ms = round(rng.uniform(shape.min_seconds, shape.max_seconds) * 1000)
        self._event = kind
        self._event_until = t + duration_ms
        hr_now = self._hr_target(t)
        if kind is EventLabel.TACHYCARDIA:
            self._hr_ev_target = max(rng.uniform(130.0, 165.0) - hr_now, 15.0)
        elif kind is EventLabel.BRADYCARDIA:
            self._hr_ev_target = min(rng.uniform(34.0, 42.0) - hr_now, -10.0)
        elif kind is EventLabel.DESATURATION:
            level = rng.uniform(80.0, 87.0)
            self._spo2_ev_target = min(level - self.profile.baseline_spo2, -4.0)
            self._hr_ev_target = 8.0  # the heart compensates
        elif kind is EventLabel.FEVER:
            peak = rng.uniform(38.4, 39.6)
            self._temp_ev_target = max(peak - self.profile.baseline_skin_temp, 1.0)
            self._hr_ev_target = 9.0 * self._temp_ev_target  # about 9 bpm per degree
        else:  # FALL: impact now, then lying still (and alarmed) until the event ends
            self._fall_spike = True
            self._hr_ev_target = 12.0

    def _end_event(self, t: int) -> None:
        if self._event is EventLabel.FALL:
            self._activity_until = t  # the patient gets up and picks an activity again
        self._event = EventLabel.NONE
        self._hr_ev_target = self._spo2_ev_target = self._temp_ev_target = 0.0
        self._next_event_at = t + self._event_gap_ms()
