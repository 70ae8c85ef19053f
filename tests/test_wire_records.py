"""Field by field checks of the record codecs a wearable and its gateway exchange: the end-to-end
delivery acknowledgement and unknown-session notice, the vitals sample and the RR batch. Each
limit is probed at its value and one past it, each frame cut short at every field names that
field, and the decoders raise only DecodeError with its reason."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqlink import DecodeError, ErrorReason
from pqlink.delivery import (
    MAX_ACK_RANGES,
    DeliveryAck,
    SeqRange,
    UnknownSessionNotice,
    to_ranges,
    verify_notice,
)
from wire.rr import (
    RR_KIND,
    BeatClass,
    Rhythm,
    RRBatch,
    RRBeat,
    decode_record,
)
from wire.vitals import Activity, EventLabel, VitalsSample

from .conftest import Parties
from .frame_cuts import check_cuts

TOP = 2**63 - 1  # SQLite's largest integer: the limit of epochs and sequence numbers
DEVICE = "wearable-0001"
SID = bytes(range(8))
NOW = 1_700_000_000_000


def _ack_frame(epoch: int, ranges: list[tuple[int, int]], *, n: int | None = None) -> bytes:
    """An acknowledgement written field by field (type 0x41, version 1), bypassing the checks."""
    head = struct.pack(">BBQB", 0x41, 1, epoch, len(ranges) if n is None else n)
    return head + b"".join(struct.pack(">QI", first, count) for first, count in ranges)


def _ack_error(frame: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as err:
        DeliveryAck.decode(frame)
    return err.value


# -- sequence ranges and acknowledgements --------------------------------------------------


def test_range_first_and_count_limits() -> None:
    assert SeqRange(TOP, 1).last == TOP
    assert SeqRange(0, 0xFFFFFFFF).last == 0xFFFFFFFE
    for first, count in [(TOP + 1, 1), (-1, 1), (0, 0), (0, 0x1_0000_0000)]:
        with pytest.raises(ValueError, match=f"bad range first={first} count={count}"):
            SeqRange(first, count)


def test_ranges_refuse_negative_sequence_numbers() -> None:
    assert to_ranges([0, 1]) == [SeqRange(0, 2)]
    with pytest.raises(ValueError, match="sequence number -1 is negative"):
        to_ranges([-1, 0, 1])


def test_ack_epoch_limits() -> None:
    for epoch in (0, TOP):
        ack = DeliveryAck(epoch, (SeqRange(3, 2),))
        assert ack.encode() == _ack_frame(epoch, [(3, 2)])
        assert DeliveryAck.decode(ack.encode()) == ack
    for epoch in (-1, TOP + 1):
        with pytest.raises(ValueError, match=f"epoch={epoch} is out of range"):
            DeliveryAck(epoch, (SeqRange(3, 2),))


def test_decoded_ack_holds_the_written_ranges() -> None:
    frame = _ack_frame(9, [(TOP, 1), (0, 0xFFFFFFFF)])
    assert DeliveryAck.decode(frame) == DeliveryAck(9, (SeqRange(TOP, 1), SeqRange(0, 0xFFFFFFFF)))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (_ack_frame(TOP + 1, [(0, 1)]), f"delivery ack: epoch={TOP + 1} is out of range"),
        (_ack_frame(1, []), "delivery ack: an ack holds 1..64 ranges, got 0"),
        (
            _ack_frame(1, [(2 * i, 1) for i in range(MAX_ACK_RANGES + 1)]),
            "delivery ack: an ack holds 1..64 ranges, got 65",
        ),
        (_ack_frame(1, [(0, 1), (5, 0)]), "delivery ack: bad range first=5 count=0"),
        (_ack_frame(1, [(TOP + 1, 1)]), f"delivery ack: bad range first={TOP + 1} count=1"),
    ],
    ids=["epoch", "no ranges", "65 ranges", "count 0", "first"],
)
def test_ack_field_values_out_of_range(frame: bytes, message: str) -> None:
    err = _ack_error(frame)
    assert str(err) == message
    assert err.reason is ErrorReason.MALFORMED


def test_ack_range_count_limit_decodes() -> None:
    ranges = [(2 * i, 1) for i in range(MAX_ACK_RANGES)]
    ack = DeliveryAck.decode(_ack_frame(1, ranges))
    assert [(r.first, r.count) for r in ack.ranges] == ranges


def test_ack_type_version_and_trailing_bytes() -> None:
    good = _ack_frame(1, [(0, 1)])
    err = _ack_error(b"\x42" + good[1:])
    assert (str(err), err.reason) == ("delivery ack: wrong message type", ErrorReason.WRONG_TYPE)
    err = _ack_error(good[:1] + b"\x02" + good[2:])
    assert (str(err), err.reason) == (
        "delivery ack: version 2 is not supported",
        ErrorReason.BAD_VERSION,
    )
    err = _ack_error(good + b"\x00")
    assert (str(err), err.reason) == (
        "delivery ack: 1 unexpected trailing bytes",
        ErrorReason.TRAILING_BYTES,
    )


def test_ack_cut_short_names_the_field() -> None:
    frame = _ack_frame(7, [(4, 3), (9, 1)])
    layout = [("type", 1), ("version", 1), ("epoch", 8), ("range count", 1)]
    layout += [("range 0 first", 8), ("range 0 count", 4), ("range 1 first", 8)]
    layout += [("range 1 count", 4)]
    check_cuts(DeliveryAck.decode, frame, "delivery ack", layout)


@given(st.binary(max_size=120))
def test_ack_decoder_raises_only_decode_error(data: bytes) -> None:
    for frame in (data, b"\x41\x01" + data):
        try:
            ack = DeliveryAck.decode(frame)
        except DecodeError:
            continue
        assert ack.encode() == frame


# -- unknown-session notices -------------------------------------------------------------


def _verify(parties: Parties, frame: bytes) -> UnknownSessionNotice:
    return verify_notice(
        frame,
        gateway=parties.gateway.public,
        device_id=DEVICE,
        session_id=SID,
        now_ms=NOW,
        max_skew_ms=1000,
    )


def test_notice_cut_short_names_the_field(parties: Parties) -> None:
    frame = UnknownSessionNotice("gw-01", DEVICE, SID, NOW).sign(parties.gateway)
    assert _verify(parties, frame) == UnknownSessionNotice("gw-01", DEVICE, SID, NOW)
    body = 1 + 1 + 1 + 5 + 1 + len(DEVICE) + 8 + 8
    (sig_len,) = struct.unpack_from(">H", frame, body)
    assert len(frame) == body + 2 + sig_len
    layout = [("type", 1), ("version", 1), ("gateway length", 1), ("gateway", 5)]
    layout += [("device length", 1), ("device", len(DEVICE)), ("session id", 8)]
    layout += [("timestamp", 8), ("signature length", 2), ("signature", sig_len)]
    check_cuts(lambda f: _verify(parties, f), frame, "unknown-session notice", layout)


def test_notice_type_version_and_identifiers(parties: Parties) -> None:
    frame = UnknownSessionNotice("gw-01", DEVICE, SID, NOW).sign(parties.gateway)
    for bad, message, reason in [
        (b"\x41" + frame[1:], "wrong message type", ErrorReason.WRONG_TYPE),
        (frame[:1] + b"\x00" + frame[2:], "version 0 is not supported", ErrorReason.BAD_VERSION),
        (frame[:3] + b"gw 01" + frame[8:], "gateway is not a valid identifier", None),
        (frame + b"\x00", "1 unexpected trailing bytes", ErrorReason.TRAILING_BYTES),
    ]:
        with pytest.raises(DecodeError) as err:
            _verify(parties, bad)
        assert str(err.value) == f"unknown-session notice: {message}"
        assert err.value.reason is (reason or ErrorReason.BAD_IDENTIFIER)


# -- vitals samples ------------------------------------------------------------------------

_VITALS = struct.Struct(">BQQQHHhHBB")  # version 3, as the record layout documents it


def _sample(**fields: object) -> VitalsSample:
    base: dict[str, object] = {
        "seq": 4,
        "timestamp_ms": NOW,
        "heart_rate": 72.5,
        "spo2": 97.25,
        "skin_temp": 36.5,
        "accel": 1.125,
        "activity": Activity.WALK,
        "label": EventLabel.NONE,
        "epoch": 11,
    }
    base.update(fields)
    return VitalsSample(**base)  # type: ignore[arg-type]


def _vitals_raw(**fields: int) -> bytes:
    values = {"epoch": 11, "seq": 4, "ts": NOW, "hr": 725, "spo2": 9725, "temp": 3650}
    values |= {"accel": 1125, "activity": 1, "label": 0}
    values |= fields
    return _VITALS.pack(3, *values.values())


def test_vitals_encoding_is_the_documented_layout() -> None:
    assert _sample().encode() == _vitals_raw()
    assert VitalsSample.decode(_vitals_raw()) == _sample()


def test_missing_fields_travel_as_their_markers() -> None:
    sample = _sample(heart_rate=None, spo2=None, skin_temp=None, accel=None)
    data = sample.encode()
    assert data == _vitals_raw(hr=0xFFFF, spo2=0xFFFF, temp=0x7FFF, accel=0xFFFF)
    assert VitalsSample.decode(data) == sample


@pytest.mark.parametrize(
    ("field", "offset", "under", "top", "over"),
    [
        ("heart_rate", 25, -0.1, 6553.4, 6553.5),
        ("spo2", 27, -0.01, 655.34, 655.35),
        ("accel", 31, -0.001, 65.534, 65.535),
    ],
)
def test_unsigned_field_limits(
    field: str, offset: int, under: float, top: float, over: float
) -> None:
    """Scaled to u16 with 0xFFFF kept for a missing reading: 0 .. 0xFFFE."""
    assert struct.unpack_from(">H", _sample(**{field: 0.0}).encode(), offset) == (0,)
    assert struct.unpack_from(">H", _sample(**{field: top}).encode(), offset) == (0xFFFE,)
    for bad in (over, under, float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=rf"^{field}={bad} is out of range$"):
            _sample(**{field: bad}).encode()


def test_skin_temperature_limits() -> None:
    for celsius, raw in [(327.66, 32766), (-327.66, -32766), (0.0, 0)]:
        assert struct.unpack_from(">h", _sample(skin_temp=celsius).encode(), 29) == (raw,)
    for bad in (327.67, -327.67, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"^skin_temp={bad} is out of range$"):
            _sample(skin_temp=bad).encode()


@pytest.mark.parametrize(("field", "raw_name"), [("epoch", "epoch"), ("seq", "seq")])
def test_vitals_identity_limits(field: str, raw_name: str) -> None:
    top = _sample(**{field: TOP})
    assert top.encode() == _vitals_raw(**{raw_name: TOP})
    assert VitalsSample.decode(top.encode()) == top
    for bad in (TOP + 1, -1):
        with pytest.raises(ValueError, match=rf"^{field}={bad} is out of range$"):
            _sample(**{field: bad}).encode()


def test_vitals_timestamp_limits() -> None:
    top = _sample(timestamp_ms=TOP)
    assert VitalsSample.decode(top.encode()) == top
    for bad in (TOP + 1, -1):
        with pytest.raises(ValueError, match=rf"^timestamp_ms={bad} is out of range$"):
            _sample(timestamp_ms=bad).encode()


@pytest.mark.parametrize(
    ("raw_name", "name"), [("epoch", "epoch"), ("seq", "seq"), ("ts", "timestamp")]
)
def test_vitals_decoder_refuses_values_past_sqlite(raw_name: str, name: str) -> None:
    assert VitalsSample.decode(_vitals_raw(**{raw_name: TOP}))
    with pytest.raises(DecodeError) as err:
        VitalsSample.decode(_vitals_raw(**{raw_name: TOP + 1}))
    assert str(err.value) == f"vitals {name} {TOP + 1} exceeds {TOP}"
    assert err.value.reason is ErrorReason.MALFORMED


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"activity": 4}, "vitals sample: 4 is not a valid Activity"),
        ({"label": 6}, "vitals sample: 6 is not a valid EventLabel"),
    ],
)
def test_vitals_unknown_activity_or_label(fields: dict[str, int], message: str) -> None:
    assert VitalsSample.decode(_vitals_raw(activity=3, label=5)).label is EventLabel.FALL
    with pytest.raises(DecodeError) as err:
        VitalsSample.decode(_vitals_raw(**fields))
    assert str(err.value) == message
    assert err.value.reason is ErrorReason.MALFORMED


def test_vitals_cut_short_or_padded() -> None:
    data = _vitals_raw()
    for cut in range(1, len(data)):
        with pytest.raises(
            DecodeError, match=rf"^vitals sample version 3 must be 35 bytes, got {cut}$"
        ):
            VitalsSample.decode(data[:cut])
    with pytest.raises(DecodeError, match=r"^vitals sample version 3 must be 35 bytes, got 36$"):
        VitalsSample.decode(data + b"\x00")
    with pytest.raises(DecodeError, match=r"^vitals version missing is not supported$"):
        VitalsSample.decode(b"")


@given(st.binary(max_size=40))
def test_vitals_decoder_raises_only_decode_error(data: bytes) -> None:
    reasons = []
    for frame in (data, b"\x03" + data[:34], b"\x01" + data[:26]):
        try:
            sample = VitalsSample.decode(frame)
        except DecodeError as exc:
            reasons.append(exc.reason)
            continue
        assert isinstance(sample, VitalsSample)
    assert set(reasons) <= {ErrorReason.MALFORMED}


# -- RR batches ----------------------------------------------------------------------------


def _rr_raw(
    beats: list[tuple[int, int, int, int]],
    *,
    seq: int = 7,
    epoch: int | None = None,
    count: int | None = None,
    start: int = NOW,
) -> bytes:
    """An RR batch written field by field: a 19-byte header, or 27 bytes with `epoch`."""
    header_len = 19 if epoch is None else 27
    hr10 = round(600_000 * len(beats) / sum(b[1] for b in beats)) if beats else 0xFFFF
    n = len(beats) if count is None else count
    head = struct.pack(">BBQQHB", RR_KIND, header_len, seq, start, hr10, n)
    if epoch is not None:
        head += struct.pack(">Q", epoch)
    return head + b"".join(struct.pack(">IHBB", *b) for b in beats)


def _rr_error(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as err:
        RRBatch.decode(data)
    assert err.value.reason is ErrorReason.MALFORMED
    return err.value


def _beat(offset: int, rr: int = 800) -> RRBeat:
    return RRBeat(offset, rr, Rhythm.NORMAL, BeatClass.NORMAL)


def test_rr_epoch_travels_in_the_longer_header() -> None:
    batch = RRBatch(3, NOW, (_beat(800),), epoch=TOP)
    assert batch.encode() == _rr_raw([(800, 800, 0, 0)], seq=3, epoch=TOP)
    assert RRBatch.decode(batch.encode()) == batch
    assert RRBatch.decode(_rr_raw([(800, 800, 0, 0)], epoch=5)).epoch == 5
    assert RRBatch.decode(_rr_raw([(800, 800, 0, 0)])).epoch == 0


def test_rr_identity_limits() -> None:
    for field in ("epoch", "seq"):
        for bad in (TOP + 1, -1):
            with pytest.raises(ValueError, match=rf"^{field}={bad} is out of range$"):
                RRBatch(**{"seq": 0, "start_ms": 0, "beats": (_beat(800),), field: bad})  # type: ignore[arg-type]
    for name, data in [
        ("epoch", _rr_raw([(800, 800, 0, 0)], epoch=TOP + 1)),
        ("seq", _rr_raw([(800, 800, 0, 0)], seq=TOP + 1, epoch=0)),
    ]:
        assert str(_rr_error(data)) == f"rr batch {name} {TOP + 1} exceeds {TOP}"


def test_rr_start_time_limits() -> None:
    """The batch's start lands in a signed 64-bit SQLite column, as a vitals timestamp does."""
    top = RRBatch(0, TOP, (_beat(800),))
    assert top.encode() == _rr_raw([(800, 800, 0, 0)], seq=0, epoch=0, start=TOP)
    assert RRBatch.decode(top.encode()) == top
    for bad in (TOP + 1, -1):
        with pytest.raises(ValueError, match=rf"^start_ms={bad} is out of range$"):
            RRBatch(0, bad, (_beat(800),))
    past = _rr_error(_rr_raw([(800, 800, 0, 0)], start=TOP + 1))
    assert str(past) == f"rr batch: start_ms={TOP + 1} is out of range"


def test_beat_offset_limits() -> None:
    top = RRBatch.decode(_rr_raw([(0xFFFFFFFF, 800, 0, 0)]))
    assert top.beats[0].offset_ms == 0xFFFFFFFF
    for bad in (0x1_0000_0000, -1):
        with pytest.raises(ValueError, match=rf"^beat 0: offset_ms={bad} out of range$"):
            RRBatch(0, NOW, (_beat(bad),))


def test_beats_from_offset_zero_must_still_advance() -> None:
    assert RRBatch(0, NOW, (_beat(0), _beat(800))).beats[1].offset_ms == 800
    with pytest.raises(ValueError, match=r"^beat 1: rr_ms=800 does not fit the 0 ms since beat 0$"):
        RRBatch(0, NOW, (_beat(0), _beat(0)))
    with pytest.raises(
        ValueError, match=r"^beat 1: rr_ms=800 does not fit the 300 ms since beat 0$"
    ):
        RRBatch(0, NOW, (_beat(0), _beat(300)))


def test_empty_batch_is_refused_by_count_not_length() -> None:
    # a whole header announcing no beats: the beat count check answers, not the length one
    assert str(_rr_error(_rr_raw([]))) == "rr batch: an rr batch holds 1 to 32 beats, got 0"
    assert (
        str(_rr_error(_rr_raw([], epoch=0))) == "rr batch: an rr batch holds 1 to 32 beats, got 0"
    )


def test_rr_batch_cut_short_at_every_field() -> None:
    data = RRBatch(1, NOW, (_beat(800), _beat(1600)), epoch=2).encode()
    assert len(data) == 2 + 27 + 2 * 8
    for cut in range(29):
        assert str(_rr_error(data[:cut])) == f"rr batch of {cut} bytes is shorter than its header"
    for cut in range(29, len(data)):
        assert str(_rr_error(data[:cut])) == (
            f"rr batch of {cut} bytes does not hold its 2 beats (45 expected)"
        )
    assert str(_rr_error(_rr_raw([(800, 800, 0, 0)], count=0))).startswith(
        "rr batch of 29 bytes does not hold its 0 beats (21 expected)"
    )


def test_bad_beat_names_its_index_and_offset() -> None:
    data = _rr_raw([(800, 800, 0, 0), (1600, 800, 16, 0)])
    assert str(_rr_error(data)) == "rr beat 1 at offset 29: 16 is not a valid Rhythm"
    data = _rr_raw([(800, 800, 0, 0), (1600, 800, 0, 0), (2400, 800, 0, 5)], epoch=0)
    assert str(_rr_error(data)) == "rr beat 2 at offset 45: 5 is not a valid BeatClass"


def test_record_of_rr_kind_cut_to_its_kind_byte() -> None:
    with pytest.raises(DecodeError, match=r"^rr batch of 1 bytes is shorter than its header$"):
        decode_record(bytes([RR_KIND]))
