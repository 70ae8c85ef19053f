"""The vitals sample that a wearable seals into each record: the schema shared by the
emulators (which encode it) and the gateway (which decodes and stores it)."""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

from pqlink import DecodeError

# The first byte of a record names its kind: 1 is a vitals sample without a boot epoch, 2 an
# RR batch (wire/rr.py), 3 a vitals sample with one.
VITALS_V1 = 1
VITALS_VERSION = 3
_FORMAT_V1 = struct.Struct(">BQQHHhHBB")  # before boot epochs: decoded with epoch 0
_FORMAT = struct.Struct(">BQQQHHhHBB")
VITALS_SIZE = _FORMAT.size  # 35 bytes
VITALS_V1_SIZE = _FORMAT_V1.size  # 27 bytes
MAX_EPOCH = (1 << 63) - 1  # SQLite integers are signed 64-bit
_MISSING_U16 = 0xFFFF
_MISSING_I16 = 0x7FFF


class Activity(enum.IntEnum):
    REST = 0
    WALK = 1
    RUN = 2
    SLEEP = 3


class EventLabel(enum.IntEnum):
    """Ground-truth clinical event carried with a sample (stands in for a confirmed alert)."""

    NONE = 0
    TACHYCARDIA = 1
    BRADYCARDIA = 2
    DESATURATION = 3
    FEVER = 4
    FALL = 5


@dataclass(frozen=True, slots=True)
class VitalsSample:
    """One reading. A field is None when the sensor dropped it (motion, poor contact).

    `(epoch, seq)` identifies the sample for its device: `epoch` is drawn at random when the
    wearable boots, so a counter that starts again at 0 never looks like stored samples."""

    seq: int
    timestamp_ms: int
    heart_rate: float | None  # beats per minute
    spo2: float | None  # percent
    skin_temp: float | None  # degrees Celsius
    accel: float | None  # acceleration magnitude, g
    activity: Activity
    label: EventLabel
    epoch: int = 0

    def encode(self) -> bytes:
        def u16(value: float | None, scale: float, name: str) -> int:
            if value is None:
                return _MISSING_U16
            if not math.isfinite(value) or not 0 <= (raw := round(value * scale)) < _MISSING_U16:
                raise ValueError(f"{name}={value} is out of range")
            return raw

        temp = _MISSING_I16
        if self.skin_temp is not None:
            temp = round(self.skin_temp * 100) if math.isfinite(self.skin_temp) else _MISSING_I16
            if not -0x7FFF < temp < _MISSING_I16:
                raise ValueError(f"skin_temp={self.skin_temp} is out of range")
        for name, value in (
            ("epoch", self.epoch),
            ("seq", self.seq),
            ("timestamp_ms", self.timestamp_ms),
        ):
            if not 0 <= value <= MAX_EPOCH:
                raise ValueError(f"{name}={value} is out of range")
        return _FORMAT.pack(
            VITALS_VERSION,
            self.epoch,
            self.seq,
            self.timestamp_ms,
            u16(self.heart_rate, 10, "heart_rate"),
            u16(self.spo2, 100, "spo2"),
            temp,
            u16(self.accel, 1000, "accel"),
            self.activity,
            self.label,
        )

    @classmethod
    def decode(cls, data: bytes) -> VitalsSample:
        if len(data) == VITALS_SIZE and data[0] == VITALS_VERSION:
            _, epoch, seq, ts, hr, spo2, temp, accel, activity, label = _FORMAT.unpack(data)
        elif len(data) == VITALS_V1_SIZE and data[0] == VITALS_V1:
            epoch = 0
            _, seq, ts, hr, spo2, temp, accel, activity, label = _FORMAT_V1.unpack(data)
        elif data[:1] in {bytes([VITALS_V1]), bytes([VITALS_VERSION])}:
            raise DecodeError(
                f"vitals sample version {data[0]} must be "
                f"{VITALS_V1_SIZE if data[0] == VITALS_V1 else VITALS_SIZE} bytes, got {len(data)}"
            )
        else:
            raise DecodeError(f"vitals version {data[:1].hex() or 'missing'} is not supported")
        for name, value in (("epoch", epoch), ("seq", seq), ("timestamp", ts)):
            if value > MAX_EPOCH:
                raise DecodeError(f"vitals {name} {value} exceeds {MAX_EPOCH}")
        try:
            act = Activity(activity)
            lab = EventLabel(label)
        except ValueError as exc:
            raise DecodeError(f"vitals sample: {exc}") from None
        return cls(
            seq=seq,
            timestamp_ms=ts,
            heart_rate=None if hr == _MISSING_U16 else hr / 10,
            spo2=None if spo2 == _MISSING_U16 else spo2 / 100,
            skin_temp=None if temp == _MISSING_I16 else temp / 100,
            accel=None if accel == _MISSING_U16 else accel / 1000,
            activity=act,
            label=lab,
            epoch=epoch,
        )
