"""Replay of real recordings as wearables: the reference beat annotations of a WFDB record
(PhysioNet's MIT-BIH format, read with `wfdb`) become the RR intervals a chest strap reports.

Each record is one wearable. Its beats (annotation symbols of the beat classes below; rhythm,
noise and comment annotations are not beats) give RR intervals, sent in batches of up to
MAX_BEATS beats when the batch's last beat occurs, at recorded time divided by the speed-up.
Ground truth travels with each beat: the rhythm in force (from the last rhythm annotation,
aux "(N", "(AFIB", ...) and the beat's class. Noise: the annotators marked beats through noisy
but readable stretches, so those beats are kept. An unreadable stretch (a noise annotation of
subtype -1, "both signals unreadable" in MIT-BIH, up to the next noise annotation) has no
trustworthy beat times: no interval that touches it is reported, nor is any interval outside
[MIN_RR_MS, MAX_RR_MS] (a dropout, not a heartbeat). The first beat after such a gap only
anchors the next interval, so the gateway sees the gap and never windows across it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from device_emulators.errors import EmulatorError, HubClosedError
from device_emulators.hub import MqttHub
from device_emulators.wearable import Wearable
from pqlink import Identity, PublicIdentity, RekeyPolicy
from wire.rr import MAX_BEATS, MAX_RR_MS, MIN_RR_MS, BeatClass, Rhythm, RRBatch, RRBeat
from wire.topics import TopicLayout

BEAT_CLASSES: dict[str, BeatClass] = {
    **dict.fromkeys("NLRejB", BeatClass.NORMAL),
    **dict.fromkeys("AaJS", BeatClass.SUPRAVENTRICULAR),
    **dict.fromkeys("VE!", BeatClass.VENTRICULAR),
    "F": BeatClass.FUSION,
    **dict.fromkeys("/fQ", BeatClass.UNCLASSIFIED),
}
RHYTHMS: dict[str, Rhythm] = {
    "(N": Rhythm.NORMAL,
    "(AFIB": Rhythm.AFIB,
    "(AFL": Rhythm.AFL,
    "(VT": Rhythm.VT,
    "(VFL": Rhythm.VFL,
    "(B": Rhythm.BIGEMINY,
    "(T": Rhythm.TRIGEMINY,
    "(SVTA": Rhythm.SVTA,
    "(IVR": Rhythm.IVR,
    "(NOD": Rhythm.NODAL,
    "(AB": Rhythm.ATRIAL_BIGEMINY,
    "(BII": Rhythm.HEART_BLOCK,
    "(SBR": Rhythm.SINUS_BRADYCARDIA,
    "(PREX": Rhythm.PREEXCITATION,
    "(P": Rhythm.PACED,
}
_NOISE = "~"
_UNREADABLE = -1  # MIT-BIH noise subtype: both signals unreadable until the next noise note


class ReplayError(EmulatorError, ValueError):
    """A record cannot be read or holds no measurable RR interval."""


@dataclass(frozen=True, slots=True)
class ReplayBeat:
    time_ms: float  # since the start of the recording
    rr_ms: int
    rhythm: Rhythm
    beat_class: BeatClass


def beats_from_annotations(
    samples: Sequence[int],
    symbols: Sequence[str],
    aux_notes: Sequence[str],
    subtypes: Sequence[int],
    fs: float,
) -> list[ReplayBeat]:
    """The reportable beats of one record's reference annotations (module docstring rules)."""
    rhythm = Rhythm.UNKNOWN
    previous: float | None = None  # time of the last beat, None after an unreadable stretch
    unreadable = False
    out: list[ReplayBeat] = []
    for sample, symbol, aux, subtype in zip(samples, symbols, aux_notes, subtypes, strict=True):
        t_ms = 1000.0 * sample / fs
        note = aux.rstrip("\x00").strip()
        if symbol == "+" and note:
            rhythm = RHYTHMS.get(note, Rhythm.UNKNOWN)
            continue
        if symbol == _NOISE:
            if unreadable or subtype == _UNREADABLE:
                previous = None  # entering or leaving an unreadable stretch
            unreadable = subtype == _UNREADABLE
            continue
        beat_class = BEAT_CLASSES.get(symbol)
        if beat_class is None:
            continue
        if unreadable:
            continue
        if previous is not None:
            rr = round(t_ms - previous)
            if MIN_RR_MS <= rr <= MAX_RR_MS:
                out.append(ReplayBeat(t_ms, rr, rhythm, beat_class))
        previous = t_ms
    return out


def read_beats(directory: Path, record: str) -> list[ReplayBeat]:
    """The reportable beats of `directory/record` (its `.atr` reference annotations)."""
    import wfdb  # noqa: PLC0415 -- only the replay needs it

    try:
        ann = wfdb.rdann(str(directory / record), "atr")
    except (OSError, ValueError, IndexError) as exc:  # wfdb: IndexError on a truncated file
        raise ReplayError(
            f"cannot read annotations of record {record} in {directory}: {exc}"
        ) from None
    fs = float(ann.fs or 360.0)
    subtypes = [int(s) for s in ann.subtype] if ann.subtype is not None else []
    beats = beats_from_annotations(
        [int(s) for s in ann.sample],
        list(ann.symbol),
        list(ann.aux_note or [""] * len(ann.sample)),
        subtypes or [0] * len(ann.sample),
        fs,
    )
    if not beats:
        raise ReplayError(f"record {record} in {directory} has no measurable RR interval")
    return beats


def list_records(directory: Path) -> list[str]:
    """Records in `directory` (a header and reference annotations each), in name order."""
    return sorted(p.stem for p in directory.glob("*.atr") if p.with_suffix(".hea").is_file())


def batches(beats: Sequence[ReplayBeat], origin_ms: int) -> Iterator[tuple[float, RRBatch]]:
    """(due time in recorded seconds, batch) pairs: consecutive beats in batches of up to
    MAX_BEATS, each due when its last beat occurs. Beat times are `origin_ms` + recorded time."""
    for seq, start in enumerate(range(0, len(beats), MAX_BEATS)):
        chunk = beats[start : start + MAX_BEATS]
        start_ms = origin_ms + round(chunk[0].time_ms)
        batch = RRBatch(
            seq,
            start_ms,
            tuple(
                RRBeat(origin_ms + round(b.time_ms) - start_ms, b.rr_ms, b.rhythm, b.beat_class)
                for b in chunk
            ),
        )
        yield chunk[-1].time_ms / 1000.0, batch


#: How often a replaying wearable looks at acknowledgements and notices between batches, so
#: that it resends after a reconnection or a new session without waiting for its next batch.
IDLE_STEP_SECONDS = 0.2


class ReplayWearable(Wearable):
    """A wearable whose records are a recording's RR batches, sent on the recording's clock and
    delivered end to end like vitals: each batch carries this boot's epoch, stays buffered
    until the gateway acknowledges it, and is re-sealed and resent after a reconnection or a
    new session."""

    def __init__(
        self,
        identity: Identity,
        gateway: PublicIdentity,
        layout: TopicLayout,
        beats: Sequence[ReplayBeat],
        *,
        speed: float,
        origin_ms: int,
        rekey: RekeyPolicy | None = None,
        buffer_seconds: float = 86_400.0,
        resend_after: float = 60.0,
        epoch: int | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        # The buffer is stated in time: batches a second of the replay produces, times its span.
        span = max(beats[-1].time_ms / 1000.0, 1.0) if beats else 1.0
        rate = max(speed * -(-len(beats) // MAX_BEATS) / span, 1e-6)
        super().__init__(
            identity,
            gateway,
            layout,
            _NoSource(),
            rate=rate,
            rekey=rekey,
            buffer_seconds=buffer_seconds,
            resend_after=resend_after,
            epoch=epoch,
        )
        self.beats = beats
        self.speed = speed
        self.origin_ms = origin_ms
        self.batches_total = -(-len(beats) // MAX_BEATS)

    async def _idle(self, hub: MqttHub, stop: asyncio.Event, seconds: float) -> bool:
        """Wait up to `seconds` (or until `stop`), delivering meanwhile; False if the
        handshake gave up."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(remaining, IDLE_STEP_SECONDS))
            if self._unacked and not stop.is_set() and not await self.step(hub):
                return False
        return True

    async def run(
        self,
        hub: MqttHub,
        stop: asyncio.Event,
        records: int | None = None,
        *,
        wait_acks: bool = True,
    ) -> None:
        """Send the recording's batches on its clock (the first `records` of them, if set);
        with `wait_acks`, return only once the gateway has acknowledged every one (or on
        `stop`, or when the hub stopped under it)."""
        with contextlib.suppress(HubClosedError):
            await self._send_all(hub, stop, records, wait_acks=wait_acks)

    async def _send_all(
        self, hub: MqttHub, stop: asyncio.Event, records: int | None, *, wait_acks: bool
    ) -> None:
        t0 = time.monotonic()
        for n, (due, batch) in enumerate(batches(self.beats, self.origin_ms)):
            if stop.is_set() or (records is not None and n >= records):
                break
            if not await self._idle(hub, stop, t0 + due / self.speed - time.monotonic()):
                return
            if stop.is_set():
                return
            self._keep(dataclasses.replace(batch, epoch=self.epoch))
            self.generated += 1
            if not await self.step(hub):
                return
        while wait_acks and self._unacked and not stop.is_set():
            if not await self._idle(hub, stop, IDLE_STEP_SECONDS):
                return


class _NoSource:
    def next_sample(self) -> RRBatch:  # pragma: no cover -- ReplayWearable.run never asks
        raise ReplayError("a replayed recording has no sample generator")
