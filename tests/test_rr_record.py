"""The RR-interval record kind: round trips, each limit at its value and one past it, header
extension, and the decoder that tells the record kinds apart."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqlink import DecodeError
from wire.rr import (
    MAX_BEATS,
    MAX_RR_MS,
    MIN_RR_MS,
    RR_EPOCH_HEADER_SIZE,
    RR_HEADER_SIZE,
    RR_KIND,
    BeatClass,
    Rhythm,
    RRBatch,
    RRBeat,
    decode_record,
)
from wire.vitals import Activity, EventLabel, VitalsSample


def _beats(rrs: list[int], rhythm: Rhythm = Rhythm.NORMAL) -> tuple[RRBeat, ...]:
    out, t = [], 0
    for rr in rrs:
        t += rr
        out.append(RRBeat(t, rr, rhythm, BeatClass.NORMAL))
    return tuple(out)


def _raw(
    beats: list[tuple[int, int, int, int]],
    *,
    header_len: int = RR_HEADER_SIZE,
    hr10: int | None = None,
    extra: bytes = b"",
) -> bytes:
    """An RR batch built field by field, bypassing the encoder's checks."""
    if hr10 is None:
        hr10 = round(600_000 * len(beats) / sum(b[1] for b in beats)) if beats else 0xFFFF
    head = struct.pack(">BBQQHB", RR_KIND, header_len, 7, 1_700_000_000_000, hr10, len(beats))
    return head + extra + b"".join(struct.pack(">IHBB", *b) for b in beats)


def test_round_trip_and_heart_rate() -> None:
    batch = RRBatch(5, 1_700_000_000_000, _beats([800, 750, 900], Rhythm.AFIB))
    data = batch.encode()
    assert len(data) == 2 + RR_EPOCH_HEADER_SIZE + 3 * 8
    assert data[0] == RR_KIND
    assert RRBatch.decode(data) == batch
    assert decode_record(data) == batch
    assert batch.heart_rate == 73.5  # 60000 * 3 / 2450 = 73.47 bpm


def test_vitals_kind_still_decodes() -> None:
    sample = VitalsSample(
        3, 1_700_000_000_000, 71.5, 97.0, 36.4, 1.0, Activity.REST, EventLabel.NONE
    )
    assert decode_record(sample.encode()) == sample


@pytest.mark.parametrize("kind", [0, 4, 255])  # 1 and 3 are vitals, 2 is an RR batch
def test_unknown_kind_is_a_decode_error(kind: int) -> None:
    with pytest.raises(DecodeError, match=f"record kind {kind}"):
        decode_record(bytes([kind]) + bytes(30))


def test_empty_payload_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="empty"):
        decode_record(b"")


def test_beat_count_limit() -> None:
    RRBatch(0, 0, _beats([800] * MAX_BEATS))
    with pytest.raises(ValueError, match="1 to 32 beats"):
        RRBatch(0, 0, _beats([800] * (MAX_BEATS + 1)))
    with pytest.raises(ValueError, match="1 to 32 beats"):
        RRBatch(0, 0, ())
    over = _raw([(800 * (i + 1), 800, 0, 0) for i in range(MAX_BEATS + 1)])
    with pytest.raises(DecodeError, match="1 to 32 beats"):
        RRBatch.decode(over)
    ok = _raw([(800 * (i + 1), 800, 0, 0) for i in range(MAX_BEATS)])
    assert len(RRBatch.decode(ok).beats) == MAX_BEATS


@pytest.mark.parametrize(
    ("rr", "ok"),
    [(MIN_RR_MS, True), (MIN_RR_MS - 1, False), (MAX_RR_MS, True), (MAX_RR_MS + 1, False)],
)
def test_rr_bounds(rr: int, ok: bool) -> None:
    data = _raw([(5000, rr, 0, 0)])
    if ok:
        assert RRBatch.decode(data).beats[0].rr_ms == rr
    else:
        with pytest.raises(DecodeError, match=f"rr_ms={rr} outside"):
            RRBatch.decode(data)


def test_interval_longer_than_the_gap_to_the_previous_beat() -> None:
    # 801 ms fits an 800 ms gap (independent rounding), 802 does not
    assert RRBatch.decode(_raw([(1000, 800, 0, 0), (1800, 801, 0, 0)]))
    with pytest.raises(DecodeError, match="rr_ms=802 does not fit the 800 ms"):
        RRBatch.decode(_raw([(1000, 800, 0, 0), (1800, 802, 0, 0)]))
    with pytest.raises(DecodeError, match="does not fit the 0 ms"):
        RRBatch.decode(_raw([(1000, 800, 0, 0), (1000, 800, 0, 0)]))


def test_header_can_grow_but_not_shrink() -> None:
    beats = [(1000, 800, 0, 0)]
    longer = _raw(beats, header_len=RR_HEADER_SIZE + 12, extra=bytes(range(12)))
    assert RRBatch.decode(longer).beats[0].rr_ms == 800
    with pytest.raises(DecodeError, match="header_len 18 at offset 1"):
        RRBatch.decode(_raw(beats, header_len=RR_HEADER_SIZE - 1))


@pytest.mark.parametrize("cut", [1, 8, 20])
def test_truncated_and_padded_batches(cut: int) -> None:
    data = _raw([(1000, 800, 0, 0), (1800, 800, 0, 0)])
    with pytest.raises(DecodeError):
        RRBatch.decode(data[:-cut])
    with pytest.raises(DecodeError, match="does not hold its 2 beats"):
        RRBatch.decode(data + b"\x00")


@pytest.mark.parametrize(("rhythm", "beat_class"), [(16, 0), (0, 5)])
def test_unknown_rhythm_or_beat_class(rhythm: int, beat_class: int) -> None:
    with pytest.raises(DecodeError, match="rr beat 0 at offset 21"):
        RRBatch.decode(_raw([(1000, 800, rhythm, beat_class)]))


def test_heart_rate_must_match_the_intervals() -> None:
    beats = [(1000, 800, 0, 0)]  # 75.0 bpm
    assert RRBatch.decode(_raw(beats, hr10=760))  # 1.0 bpm off: rounding slack
    with pytest.raises(DecodeError, match=r"heart rate 76\.1 differs"):
        RRBatch.decode(_raw(beats, hr10=761))


@given(
    st.lists(st.integers(MIN_RR_MS, MAX_RR_MS), min_size=1, max_size=MAX_BEATS),
    st.integers(0, 2**63 - 1),
    st.sampled_from(list(Rhythm)),
)
def test_round_trip_property(rrs: list[int], seq: int, rhythm: Rhythm) -> None:
    batch = RRBatch(seq, 1_700_000_000_000, _beats(rrs, rhythm))
    assert RRBatch.decode(batch.encode()) == batch


def test_sequence_number_limit_is_sqlites_largest_integer() -> None:
    beats = _beats([800], Rhythm.NORMAL)
    top = RRBatch(2**63 - 1, 1_700_000_000_000, beats)
    assert RRBatch.decode(top.encode()) == top
    with pytest.raises(ValueError, match=r"seq=9223372036854775808 is out of range"):
        RRBatch(2**63, 1_700_000_000_000, beats)


@given(st.binary(max_size=300))
def test_decoder_raises_only_decode_error(data: bytes) -> None:
    for payload in (data, bytes([RR_KIND]) + data, bytes([RR_KIND, RR_HEADER_SIZE]) + data):
        try:
            record = decode_record(payload)
        except DecodeError:
            continue
        assert isinstance(record, VitalsSample | RRBatch)
