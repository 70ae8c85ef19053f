"""Replay of WFDB recordings without a broker: which annotations are beats, the rhythm in
force, unreadable stretches and interval bounds; records read from small files written here
(sampling frequency, subtypes, aux notes, unreadable and empty files); record listing;
batching into RR batches of up to MAX_BEATS; a replaying wearable's construction (speed,
buffer stated in time) and its run on a stopped hub (the recording's clock, `records`, stop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import wfdb

from device_emulators.hub import MqttHub
from device_emulators.replay import (
    ReplayBeat,
    ReplayError,
    ReplayWearable,
    batches,
    beats_from_annotations,
    list_records,
    read_beats,
)
from pqlink import RekeyPolicy
from wire.rr import MAX_BEATS, BeatClass, Rhythm, RRBatch, RRBeat
from wire.topics import TopicKind, TopicLayout

from .conftest import Parties

Row = tuple[int, str, str, int]  # sample, symbol, aux note, subtype


def _beats(rows: list[Row], fs: float) -> list[ReplayBeat]:
    samples, symbols, notes, subtypes = (list(column) for column in zip(*rows, strict=True))
    return beats_from_annotations(samples, symbols, notes, subtypes, fs)


def test_rhythm_notes_comments_and_beat_classes() -> None:
    # 250 Hz: one sample is 4 ms, 200 samples are 800 ms
    rows: list[Row] = [
        (0, "N", "", 0),  # the first beat only anchors
        (200, "N", "", 0),  # before any rhythm note: rhythm unknown
        (210, "+", "(PREX\x00", 0),  # a NUL-padded rhythm note
        (400, "V", "", 0),
        (410, '"', "(VT", 0),  # a comment, whatever its text, changes no rhythm
        (600, "F", "a note on a beat", 0),  # a beat with a note is still a beat
        (620, "+", "(XYZ", 0),  # a rhythm this replay does not know
        (800, "/", "", 0),
        (810, "+", "(N", 0),
        (1000, "A", "", 0),
        (1010, "+", "", 0),  # a rhythm annotation without a note changes nothing
        (1200, "!", "", 0),
    ]
    assert _beats(rows, 250.0) == [
        ReplayBeat(800.0, 800, Rhythm.UNKNOWN, BeatClass.NORMAL),
        ReplayBeat(1600.0, 800, Rhythm.PREEXCITATION, BeatClass.VENTRICULAR),
        ReplayBeat(2400.0, 800, Rhythm.PREEXCITATION, BeatClass.FUSION),
        ReplayBeat(3200.0, 800, Rhythm.UNKNOWN, BeatClass.UNCLASSIFIED),
        ReplayBeat(4000.0, 800, Rhythm.NORMAL, BeatClass.SUPRAVENTRICULAR),
        ReplayBeat(4800.0, 800, Rhythm.NORMAL, BeatClass.VENTRICULAR),
    ]


def test_unreadable_stretch_leaves_a_gap_and_readable_noise_does_not() -> None:
    rows: list[Row] = [
        (0, "N", "", 0),
        (200, "N", "", 0),  # 800 ms
        (300, "~", "", 2),  # one signal noisy but readable: the next interval counts
        (400, "N", "", 0),  # 800 ms
        (450, "~", "", -1),  # both signals unreadable from here
        (600, "N", "", 0),  # inside the stretch: no trustworthy time
        (650, "~", "", 0),  # readable again
        (800, "N", "", 0),  # only an anchor: its interval touches the stretch
        (1000, "N", "", 0),  # 800 ms
    ]
    assert _beats(rows, 250.0) == [
        ReplayBeat(800.0, 800, Rhythm.UNKNOWN, BeatClass.NORMAL),
        ReplayBeat(1600.0, 800, Rhythm.UNKNOWN, BeatClass.NORMAL),
        ReplayBeat(4000.0, 800, Rhythm.UNKNOWN, BeatClass.NORMAL),
    ]


def test_interval_bounds_at_and_one_past_each_limit() -> None:
    # 1000 Hz: samples are milliseconds; intervals 200, 3000, 199, 3001, 800
    samples = [0, 200, 3200, 3399, 6400, 7200]
    rows: list[Row] = [(s, "N", "", 0) for s in samples]
    got = [(b.time_ms, b.rr_ms) for b in _beats(rows, 1000.0)]
    # a beat whose interval is out of bounds still anchors the next one
    assert got == [(200.0, 200), (3200.0, 3000), (7200.0, 800)]


def test_annotation_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="shorter"):
        beats_from_annotations([0, 360, 720], ["N", "N"], ["", ""], [0, 0], 360.0)


def _write(
    directory: Path, name: str, rows: list[Row], fs: float | None, header_fs: int | None
) -> None:
    samples, symbols, notes, subtypes = (list(column) for column in zip(*rows, strict=True))
    wfdb.wrann(
        name,
        "atr",
        np.array(samples),
        symbol=symbols,
        subtype=np.array(subtypes),
        aux_note=notes,
        fs=fs,
        write_dir=str(directory),
    )
    if header_fs is not None:
        (directory / f"{name}.hea").write_text(f"{name} 0 {header_fs} {samples[-1] + 1}\n")


def test_read_beats_applies_rhythm_notes_and_unreadable_subtypes(tmp_path: Path) -> None:
    rows: list[Row] = [
        (0, "+", "(AFIB", 0),
        (100, "N", "", 0),
        (300, "N", "", 0),
        (350, "~", "", -1),
        (500, "N", "", 0),
        (550, "~", "", 0),
        (700, "V", "", 0),
        (900, "V", "", 0),
    ]
    _write(tmp_path, "201", rows, fs=250, header_fs=250)
    assert read_beats(tmp_path, "201") == [
        ReplayBeat(1200.0, 800, Rhythm.AFIB, BeatClass.NORMAL),
        ReplayBeat(3600.0, 800, Rhythm.AFIB, BeatClass.VENTRICULAR),
    ]


def test_read_beats_takes_the_header_rate_or_mit_bih_360_hz(tmp_path: Path) -> None:
    rows: list[Row] = [(0, "N", "", 0), (288, "N", "", 0)]
    _write(tmp_path, "100", rows, fs=None, header_fs=None)  # no rate stated anywhere
    assert read_beats(tmp_path, "100") == [ReplayBeat(800.0, 800, Rhythm.UNKNOWN, BeatClass.NORMAL)]
    _write(tmp_path, "101", rows, fs=None, header_fs=480)  # the header's rate
    assert read_beats(tmp_path, "101") == [ReplayBeat(600.0, 600, Rhythm.UNKNOWN, BeatClass.NORMAL)]


def test_read_beats_refuses_missing_truncated_empty_and_beatless_records(
    tmp_path: Path,
) -> None:
    with pytest.raises(ReplayError, match="cannot read annotations of record 404"):
        read_beats(tmp_path, "404")
    # a '+' annotation whose aux note is cut off after two of its five bytes
    (tmp_path / "300.atr").write_bytes(bytes.fromhex("007005fc2841"))
    with pytest.raises(ReplayError, match="cannot read annotations of record 300"):
        read_beats(tmp_path, "300")
    (tmp_path / "301.atr").write_bytes(b"\x00\x00")  # no annotation at all
    with pytest.raises(ReplayError, match=r"record 301 .* has no measurable RR interval"):
        read_beats(tmp_path, "301")
    _write(tmp_path, "302", [(0, "+", "(N", 0), (360, "N", "", 0)], fs=360, header_fs=360)
    with pytest.raises(ReplayError, match=r"record 302 .* has no measurable RR interval"):
        read_beats(tmp_path, "302")
    assert issubclass(ReplayError, ValueError)


def test_list_records_needs_annotations_and_a_header(tmp_path: Path) -> None:
    assert list_records(tmp_path) == []
    for name in ("900.atr", "900.hea", "101.atr", "101.hea", "NOTES.atr", "102.hea", "103.dat"):
        (tmp_path / name).write_bytes(b"")
    assert list_records(tmp_path) == ["101", "900"]


def _even(n: int, start_ms: float = 500.6, step_ms: float = 800.0) -> list[ReplayBeat]:
    rhythms = [Rhythm.NORMAL, Rhythm.AFIB, Rhythm.VT]
    classes = [BeatClass.NORMAL, BeatClass.VENTRICULAR]
    return [
        ReplayBeat(start_ms + step_ms * i, 700 + 50 * (i % 3), rhythms[i % 3], classes[i % 2])
        for i in range(n)
    ]


def test_batches_split_beats_in_order_with_offsets_from_the_first() -> None:
    beats = _even(70)
    got = list(batches(beats, 1_000_000))
    assert [len(batch.beats) for _, batch in got] == [32, 32, 6]
    for n, (due, batch) in enumerate(got):
        first = 32 * n
        chunk = beats[first : first + 32]
        assert batch.seq == n
        assert batch.epoch == 0
        # 500.6 ms rounds to 501
        assert batch.start_ms == 1_000_000 + 501 + 800 * first
        assert batch.beats == tuple(
            RRBeat(800 * i, b.rr_ms, b.rhythm, b.beat_class) for i, b in enumerate(chunk)
        )
        last = first + len(chunk) - 1
        assert due == pytest.approx((500.6 + 800 * last) / 1000, rel=1e-12)
    assert list(batches([], 0)) == []


def test_batches_hold_at_most_max_beats() -> None:
    assert MAX_BEATS == 32
    assert [len(b.beats) for _, b in batches(_even(32), 0)] == [32]
    assert [len(b.beats) for _, b in batches(_even(33), 0)] == [32, 1]
    ((due, single),) = batches(_even(1, start_ms=1234.4), 7)
    assert due == pytest.approx(1.2344, rel=1e-12)
    assert single == RRBatch(0, 7 + 1234, (RRBeat(0, 700, Rhythm.NORMAL, BeatClass.NORMAL),))


def _layout(parties: Parties) -> TopicLayout:
    return TopicLayout("iomt", parties.gateway.name)


def _wearable(
    parties: Parties, beats: list[ReplayBeat], speed: float, epoch: int | None = None
) -> ReplayWearable:
    return ReplayWearable(
        parties.sensor,
        parties.gateway.public,
        _layout(parties),
        beats,
        speed=speed,
        origin_ms=1_000_000,
        epoch=epoch,
    )


@pytest.mark.parametrize("speed", [0.0, -1.0])
def test_replay_wearable_refuses_a_speed_not_above_zero(parties: Parties, speed: float) -> None:
    with pytest.raises(ValueError, match=f"speed must be > 0, got {speed}"):
        _wearable(parties, _even(3), speed)


def test_replay_wearable_states_its_buffer_in_batches_per_second(parties: Parties) -> None:
    # 33 beats: 2 batches over a 4 s recording, at speed 2: 1 batch a second
    beats = _even(33, start_ms=800.0, step_ms=100.0)
    w = _wearable(parties, beats, 2.0)
    assert w.rate == pytest.approx(1.0, rel=1e-12)
    assert w.buffer_limit == 86_400  # a day of batches by default
    assert w.batches_total == 2
    assert w.beats is beats
    assert w.speed == 2.0
    assert w.origin_ms == 1_000_000
    assert w.identity is parties.sensor
    assert w.gateway == parties.gateway.public
    assert w.record_topic == _layout(parties).topic(TopicKind.RECORD, parties.sensor.name)
    # the span is at least a second: 1 batch in 1.5 s; 1 batch in 0.5 s counts as in 1 s
    assert _wearable(parties, _even(1, start_ms=1500.0), 3.0).rate == pytest.approx(2.0)
    assert _wearable(parties, _even(1, start_ms=500.0), 1.0).rate == pytest.approx(1.0)
    assert _wearable(parties, _even(1, start_ms=500.0), 0.5).rate == pytest.approx(0.5)
    # nothing to send: the smallest rate, a one-batch buffer
    empty = _wearable(parties, [], 1.0)
    assert empty.rate == pytest.approx(1e-6)
    assert empty.buffer_limit == 1
    assert empty.batches_total == 0


def test_replay_wearable_passes_its_settings_on(parties: Parties) -> None:
    rekey = RekeyPolicy(max_records=7, max_seconds=9.0)
    beats = _even(33, start_ms=800.0, step_ms=100.0)
    w = ReplayWearable(
        parties.sensor,
        parties.gateway.public,
        _layout(parties),
        beats,
        speed=2.0,
        origin_ms=0,
        rekey=rekey,
        buffer_seconds=10.0,
        resend_after=5.0,
        epoch=12345,
    )
    assert w.buffer_limit == 10
    assert w.config.rekey == rekey
    assert w.resend_after == 5.0
    assert w.epoch == 12345
    # batches come from the recording, never from a sample generator
    with pytest.raises(ReplayError, match="no sample generator"):
        w.generator.next_sample()


async def _stopped_hub() -> MqttHub:
    """A hub whose run has ended: every publish through it raises HubClosedError."""
    hub = MqttHub("127.0.0.1", 9, "replay-parts")
    stop = asyncio.Event()
    stop.set()
    await hub.run(stop)
    return hub


def test_replay_keeps_its_first_batch_then_ends_with_a_stopped_hub(parties: Parties) -> None:
    async def scenario() -> ReplayWearable:
        w = _wearable(parties, _even(33), 1e6, epoch=77)
        await asyncio.wait_for(w.run(await _stopped_hub(), asyncio.Event()), 2.0)
        return w

    w = asyncio.run(scenario())
    assert w.generated == 1
    assert w.unacknowledged == 1
    assert w.stats.records_sent == 0
    # buffered until acknowledged: the first 32 beats, stamped with this boot's epoch
    expected = tuple(
        RRBeat(800 * i, b.rr_ms, b.rhythm, b.beat_class) for i, b in enumerate(_even(32))
    )
    assert list(w._unacked.values()) == [RRBatch(0, 1_000_000 + 501, expected, epoch=77)]


def test_replay_sends_nothing_when_asked_for_no_batch(parties: Parties) -> None:
    async def scenario() -> ReplayWearable:
        w = _wearable(parties, _even(33), 1e6)
        await asyncio.wait_for(w.run(await _stopped_hub(), asyncio.Event(), 0), 2.0)
        return w

    w = asyncio.run(scenario())
    assert w.generated == 0
    assert w.unacknowledged == 0


def test_replay_waits_for_the_recorded_time_divided_by_the_speed(parties: Parties) -> None:
    # the only batch is due at 40 recorded ms: 80 ms at half speed
    async def scenario() -> tuple[ReplayWearable, float]:
        w = _wearable(parties, _even(1, start_ms=40.0), 0.5)
        hub = await _stopped_hub()
        t0 = time.monotonic()
        await asyncio.wait_for(w.run(hub, asyncio.Event()), 2.0)
        return w, time.monotonic() - t0

    w, elapsed = asyncio.run(scenario())
    assert elapsed >= 0.08
    assert w.generated == 1


def test_replay_stopped_while_waiting_sends_nothing(parties: Parties) -> None:
    async def scenario() -> ReplayWearable:
        w = _wearable(parties, _even(1, start_ms=1_000_000.0), 1.0)  # due in 1000 s
        stop = asyncio.Event()
        task = asyncio.create_task(w.run(await _stopped_hub(), stop))
        await asyncio.sleep(0)  # the replay is now waiting for its batch
        stop.set()
        await asyncio.wait_for(task, 2.0)
        return w

    w = asyncio.run(scenario())
    assert w.generated == 0
    assert w.unacknowledged == 0
