"""The RR-interval record kind: a batch of beat-to-beat intervals that a chest strap or a PPG
wearable seals into one record, beside the vitals sample kind, and the decoder of both kinds.

Layout (big-endian). The first byte tells the kinds apart: a vitals sample starts with its
version (1), an RR batch with its kind (2). An RR batch is

    kind u8 = 2 | header_len u8 | header (header_len bytes) | count x beat (8 bytes each)

    header: seq u64, start_ms u64, heart_rate x10 u16, count u8  (19 bytes in version 1)
            [epoch u64]                                         (27 bytes with the boot epoch)
    beat:   offset_ms u32 (beat time - start_ms), rr_ms u16, rhythm u8, beat_class u8

`header_len` lets the header grow without a new kind: a decoder reads the fields it knows and
skips the rest, and refuses a header shorter than the fields it needs. The boot epoch grew it
so: `(epoch, seq)` names the batch for the end-to-end acknowledgement exactly as it names a
vitals sample (one sequence per boot for every kind a wearable sends); a 19-byte header is of
epoch 0. The gateway stores beats keyed by their absolute time, which a resent batch repeats
and a rebooted wearable's fresh beats never do.
Each beat's RR interval ends at that beat; the beat it starts from is the previous beat of the
stream, which is reported only if its own RR was measurable (so `rr_ms` never exceeds the gap
to the previous reported beat, and a larger gap marks beats left out). The rhythm and the beat
class are the ground truth from the reference annotations, as event labels travel with vitals.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pqlink import DecodeError
from wire.vitals import MAX_EPOCH, VITALS_V1, VITALS_VERSION, VitalsSample

RR_KIND = 2
_LEAD = struct.Struct(">BB")
_HEADER_V1 = struct.Struct(">QQHB")
_EPOCH = struct.Struct(">Q")
_BEAT = struct.Struct(">IHBB")
RR_HEADER_SIZE = _HEADER_V1.size  # 19: the fields every decoder needs
RR_EPOCH_HEADER_SIZE = RR_HEADER_SIZE + _EPOCH.size  # 27: with the boot epoch, as encoded
BEAT_SIZE = _BEAT.size  # 8
MAX_BEATS = 32  # 2 + 27 + 32 x 8 = 285 bytes: inside the gateway's default record limit
MIN_RR_MS = 200  # 300 bpm: the fastest rhythm (ventricular flutter) a wearable reports
MAX_RR_MS = 3000  # 20 bpm: a longer gap is a dropout or an unreadable stretch, not an interval
_MAX_OFFSET_MS = 0xFFFFFFFF
_MISSING_HR = 0xFFFF


class Rhythm(enum.IntEnum):
    """The rhythm in force at a beat, from the reference rhythm annotations (aux "(N" ...)."""

    NORMAL = 0  # (N   normal sinus rhythm
    AFIB = 1  # (AFIB
    AFL = 2  # (AFL  atrial flutter
    VT = 3  # (VT   ventricular tachycardia
    VFL = 4  # (VFL  ventricular flutter
    BIGEMINY = 5  # (B   ventricular bigeminy
    TRIGEMINY = 6  # (T  ventricular trigeminy
    SVTA = 7  # (SVTA supraventricular tachyarrhythmia
    IVR = 8  # (IVR  idioventricular rhythm
    NODAL = 9  # (NOD nodal (junctional) rhythm
    ATRIAL_BIGEMINY = 10  # (AB
    HEART_BLOCK = 11  # (BII second-degree heart block
    SINUS_BRADYCARDIA = 12  # (SBR
    PREEXCITATION = 13  # (PREX Wolff-Parkinson-White conduction
    PACED = 14  # (P
    UNKNOWN = 15  # before the first rhythm annotation, or a label this table lacks


class BeatClass(enum.IntEnum):
    """A beat's class in the AAMI EC57 grouping of the reference beat labels."""

    NORMAL = 0  # N L R e j B: sinus-conducted beats, bundle-branch block included
    SUPRAVENTRICULAR = 1  # A a J S: premature beats from above the ventricles
    VENTRICULAR = 2  # V E !: premature ventricular and escape beats, flutter waves
    FUSION = 3  # F
    UNCLASSIFIED = 4  # / f Q: paced, fusion of paced, unclassifiable


@dataclass(frozen=True, slots=True)
class RRBeat:
    offset_ms: int  # beat time relative to the batch's start_ms
    rr_ms: int  # interval from the previous beat to this one
    rhythm: Rhythm
    beat_class: BeatClass


@dataclass(frozen=True, slots=True)
class RRBatch:
    """Consecutive beats of one wearable; `heart_rate` is the rate the batch's intervals imply
    (60 000 / mean RR), as a strap displays it."""

    seq: int
    start_ms: int
    beats: tuple[RRBeat, ...]
    epoch: int = 0

    def __post_init__(self) -> None:
        check_beats(self.beats)
        # start_ms lands in a signed 64-bit SQLite column, as a vitals timestamp does
        for name, value in (("epoch", self.epoch), ("seq", self.seq), ("start_ms", self.start_ms)):
            if not 0 <= value <= MAX_EPOCH:
                raise ValueError(f"{name}={value} is out of range")

    @property
    def heart_rate(self) -> float:
        return round(60_000 * len(self.beats) / sum(b.rr_ms for b in self.beats), 1)

    def encode(self) -> bytes:
        hr10 = min(round(self.heart_rate * 10), _MISSING_HR - 1)
        head = (
            _LEAD.pack(RR_KIND, RR_EPOCH_HEADER_SIZE)
            + _HEADER_V1.pack(self.seq, self.start_ms, hr10, len(self.beats))
            + _EPOCH.pack(self.epoch)
        )
        return head + b"".join(
            _BEAT.pack(b.offset_ms, b.rr_ms, b.rhythm, b.beat_class) for b in self.beats
        )

    @classmethod
    def decode(cls, data: bytes) -> RRBatch:
        if len(data) < _LEAD.size + RR_HEADER_SIZE:
            raise DecodeError(f"rr batch of {len(data)} bytes is shorter than its header")
        kind, header_len = _LEAD.unpack_from(data)
        if kind != RR_KIND:
            raise DecodeError(f"record kind {kind} at offset 0 is not an rr batch")
        if header_len < RR_HEADER_SIZE:
            raise DecodeError(
                f"rr header_len {header_len} at offset 1 is below the {RR_HEADER_SIZE} needed"
            )
        seq, start_ms, hr10, count = _HEADER_V1.unpack_from(data, _LEAD.size)
        body = _LEAD.size + header_len
        if len(data) < body:
            raise DecodeError(f"rr batch of {len(data)} bytes is shorter than its header")
        epoch = 0
        if header_len >= RR_EPOCH_HEADER_SIZE:
            (epoch,) = _EPOCH.unpack_from(data, _LEAD.size + RR_HEADER_SIZE)
        for name, value in (("epoch", epoch), ("seq", seq)):
            if value > MAX_EPOCH:
                raise DecodeError(f"rr batch {name} {value} exceeds {MAX_EPOCH}")
        if len(data) != body + count * BEAT_SIZE:
            raise DecodeError(
                f"rr batch of {len(data)} bytes does not hold its {count} beats "
                f"({body + count * BEAT_SIZE} expected)"
            )
        beats = []
        for i in range(count):
            offset, rr, rhythm, beat_class = _BEAT.unpack_from(data, body + i * BEAT_SIZE)
            try:
                beats.append(RRBeat(offset, rr, Rhythm(rhythm), BeatClass(beat_class)))
            except ValueError as exc:
                raise DecodeError(f"rr beat {i} at offset {body + i * BEAT_SIZE}: {exc}") from None
        try:
            batch = cls(seq, start_ms, tuple(beats), epoch)
        except ValueError as exc:
            raise DecodeError(f"rr batch: {exc}") from None
        if hr10 != _MISSING_HR and abs(hr10 / 10 - batch.heart_rate) > 1.0:
            raise DecodeError(
                f"rr batch heart rate {hr10 / 10} differs from the {batch.heart_rate} "
                "its intervals imply"
            )
        return batch


def check_beats(beats: tuple[RRBeat, ...]) -> None:
    """Raise ValueError unless the beats are a well-formed batch (see the module docstring)."""
    if not 1 <= len(beats) <= MAX_BEATS:
        raise ValueError(f"an rr batch holds 1 to {MAX_BEATS} beats, got {len(beats)}")
    previous = -1
    for i, beat in enumerate(beats):
        if not MIN_RR_MS <= beat.rr_ms <= MAX_RR_MS:
            raise ValueError(f"beat {i}: rr_ms={beat.rr_ms} outside [{MIN_RR_MS}, {MAX_RR_MS}]")
        if not 0 <= beat.offset_ms <= _MAX_OFFSET_MS:
            raise ValueError(f"beat {i}: offset_ms={beat.offset_ms} out of range")
        if previous >= 0:
            gap = beat.offset_ms - previous
            # +1: offsets and intervals are rounded to the millisecond separately
            if gap <= 0 or beat.rr_ms > gap + 1:
                raise ValueError(
                    f"beat {i}: rr_ms={beat.rr_ms} does not fit the {gap} ms since beat {i - 1}"
                )
        previous = beat.offset_ms


def decode_record(data: bytes) -> VitalsSample | RRBatch:
    """The plaintext of a record as whichever kind its first byte names."""
    if not data:
        raise DecodeError("empty record payload")
    if data[0] in (VITALS_V1, VITALS_VERSION):
        return VitalsSample.decode(data)
    if data[0] == RR_KIND:
        return RRBatch.decode(data)
    raise DecodeError(f"record kind {data[0]} at offset 0 is not supported")
