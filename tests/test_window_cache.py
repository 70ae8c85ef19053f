"""The window cache at its edges: the configured window length, the per-device history bound
at and past its value, every device read in one refresh, the wall clock as default time,
exact millisecond retention at any 64-bit timestamp, the training set's dtypes, a device
buffer that grows past its first allocation, and how `fair_shares` splits a budget."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import windows
from gateway.features import N_FEATURES, WINDOW, build_windows
from gateway.store import VitalsStore, vitals_row
from gateway.windows import WindowCache, _WindowBuffer
from wire.vitals import Activity, EventLabel, VitalsSample

from .test_windows import append_and_check, settling_fair_shares

T0 = 1_790_000_000_000
DAY_MS = 86_400_000
F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


@pytest.fixture(autouse=True)
def _splits_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """`training_set` splits its budget with a `fair_shares` that fails rather than spins."""
    monkeypatch.setattr(windows, "fair_shares", settling_fair_shares)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VitalsStore]:
    s = VitalsStore(tmp_path / "v.db", retention_days=36500)
    yield s
    s.close()


def _sample(seq: int, ts: int) -> VitalsSample:
    return VitalsSample(
        seq,
        ts,
        60.0 + (seq % 13),
        97.0 - (seq % 3),
        33.0 + (seq % 5) / 10,
        1.0 + (seq % 7) / 10,
        Activity.WALK if seq % 4 == 0 else Activity.REST,
        EventLabel.FALL if seq % 37 == 0 else EventLabel.NONE,
    )


def _fill(store: VitalsStore, device: str, seqs: range, start_ms: int = T0) -> None:
    """Samples `seqs` of `device`, one a second from `start_ms` (sample k at start + k s)."""
    store.commit([vitals_row(device, _sample(s, start_ms + 1000 * s), 1) for s in seqs])


def _expect_windows(x: F32, y: I32, parts: list[tuple[F32, I32]]) -> None:
    np.testing.assert_array_equal(x, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(y, np.concatenate([p[1] for p in parts]))


def test_windows_have_the_configured_length_and_a_lone_row_before_a_gap_is_dropped(
    store: VitalsStore,
) -> None:
    """Windows of 2 samples. The first read holds rows 0-3 at 0, 1, 2 and 6 s: the 4 s step is
    a gap (over 3 median intervals of 1 s), so rows 0-1 make a window, row 2 is alone before
    the gap and row 3 waits. Row 4 at 7 s then completes the window of rows 3-4. Row 2 can
    never join a window; were it kept, the second read (rows 2-4: steps of 4 s and 1 s,
    median 2.5 s) would no longer see the gap and would cut rows 2-3 instead."""
    offsets = [0, 1000, 2000, 6000, 7000]
    rows = [vitals_row("dev-a", _sample(i, T0 + off), 1) for i, off in enumerate(offsets)]
    cache = WindowCache(store, max_samples_per_device=100, max_windows=100, window=2)
    store.commit(rows[:4])
    first = cache.refresh(now_ms=T0)
    assert (first.rows_read, first.windows_added, first.windows_held) == (4, 1, 1)
    store.commit(rows[4:])
    second = cache.refresh(now_ms=T0)
    assert (second.rows_read, second.windows_added, second.windows_held) == (1, 1, 2)
    stored = store.sample_rows("dev-a")
    x, y = cache.training_set()
    _expect_windows(
        x,
        y,
        [
            build_windows(stored[0:2], window=2, stride=2),
            build_windows(stored[3:5], window=2, stride=2),
        ],
    )
    x_full, y_full = build_windows(stored, window=2, stride=2)  # a full rebuild agrees
    np.testing.assert_array_equal(x, x_full)
    np.testing.assert_array_equal(y, y_full)


@pytest.mark.parametrize("new_rows", [89, 90, 91])
def test_new_rows_at_and_past_the_history_bound(store: VitalsStore, new_rows: int) -> None:
    """max_samples_per_device = 90 (three windows). The first read leaves rows 30-39 waiting
    for a window. 89 new rows continue them (windows from rows 30, 60 and 90, as a full
    rebuild cuts them); from 90 new rows on the cache may have missed rows, so it reads the
    newest 90 only and cuts them from their own start, whatever waited before them."""
    limit = 3 * WINDOW
    cache = WindowCache(store, max_samples_per_device=limit, max_windows=100)
    _fill(store, "dev-a", range(40))
    first = cache.refresh(now_ms=T0)
    assert (first.rows_read, first.windows_added, first.windows_held) == (40, 1, 1)
    total = 40 + new_rows
    _fill(store, "dev-a", range(40, total))
    stats = cache.refresh(now_ms=T0)
    assert stats.rows_read == min(new_rows, limit)
    assert (stats.windows_added, stats.windows_held) == (3, 3)
    stored = store.sample_rows("dev-a")
    assert len(stored) == total
    first_start = 30 if new_rows < limit else total - limit
    parts = [build_windows(stored[s : s + WINDOW]) for s in range(first_start, total - 29, 30)]
    assert len(parts) == 3
    x, y = cache.training_set()
    _expect_windows(x, y, parts)
    if new_rows < limit:
        x_full, y_full = build_windows(stored)
        np.testing.assert_array_equal(x, x_full[-3:])
        np.testing.assert_array_equal(y, y_full[-3:])
    else:
        x_newest, y_newest = build_windows(store.sample_rows("dev-a", limit=limit))
        np.testing.assert_array_equal(x, x_newest)
        np.testing.assert_array_equal(y, y_newest)


def test_one_refresh_reads_every_device(store: VitalsStore) -> None:
    """A device with nothing new does not stop the devices after it from being read, and the
    counts add up over all devices."""
    _fill(store, "dev-a", range(2 * WINDOW))
    _fill(store, "dev-b", range(WINDOW))
    _fill(store, "dev-c", range(WINDOW))
    cache = WindowCache(store, max_samples_per_device=10_000, max_windows=100)
    first = cache.refresh(now_ms=T0)
    assert (first.rows_read, first.windows_added, first.windows_held) == (120, 4, 4)
    _fill(store, "dev-b", range(WINDOW, 3 * WINDOW))  # two windows more
    _fill(store, "dev-c", range(WINDOW, 2 * WINDOW + 5))  # one window and five rows
    stats = cache.refresh(now_ms=T0)
    assert (stats.rows_read, stats.windows_added, stats.windows_held) == (95, 3, 7)
    assert cache.held() == {"dev-a": 2, "dev-b": 3, "dev-c": 2}


def test_without_a_time_retention_follows_the_wall_clock(tmp_path: Path) -> None:
    """Retention of one day, no `now_ms`: a window from three days ago goes, one from an hour
    ago stays."""
    short = VitalsStore(tmp_path / "short.db", retention_days=1.0)
    try:
        now = int(time.time() * 1000)
        _fill(short, "dev-a", range(WINDOW), start_ms=now - 3 * DAY_MS)
        _fill(short, "dev-b", range(WINDOW), start_ms=now - 3_600_000)
        cache = WindowCache(short, max_samples_per_device=1000, max_windows=100)
        stats = cache.refresh()
        assert (stats.rows_read, stats.windows_added, stats.windows_held) == (60, 2, 1)
        assert cache.held() == {"dev-a": 0, "dev-b": 1}
    finally:
        short.close()


def test_retention_is_exact_to_the_millisecond_at_any_timestamp(tmp_path: Path) -> None:
    """Timestamps are 64-bit milliseconds: at 2**60 ms (beyond a float's exact integers) a
    window starting exactly at the retention limit stays and goes one millisecond later."""
    short = VitalsStore(tmp_path / "short.db", retention_days=1.0)
    try:
        start = 1 << 60
        _fill(short, "dev-a", range(2 * WINDOW), start_ms=start)
        cache = WindowCache(short, max_samples_per_device=1000, max_windows=100)
        second_start = start + 1000 * WINDOW
        at = cache.refresh(now_ms=second_start + DAY_MS)
        assert (at.windows_added, at.windows_held) == (2, 1)
        past = cache.refresh(now_ms=second_start + DAY_MS + 1)
        assert past.windows_held == 0
    finally:
        short.close()


def test_a_grown_buffer_keeps_exact_start_times() -> None:
    keep = 100
    buf = _WindowBuffer(keep)
    start = 1 << 60
    for lo, hi in ((0, 70), (70, keep)):  # 70 is past the first allocation: the buffer grows
        ids = np.arange(lo, hi, dtype=np.int64)
        x = np.repeat(ids.astype(np.float32)[:, None], N_FEATURES, axis=1)
        buf.append(x, ids.astype(np.int32), start + ids)
    assert len(buf) == keep
    buf.forget_before(start + 1)
    assert len(buf) == keep - 1
    buf.forget_before(start + 50)
    assert len(buf) == keep - 50
    _, y = buf.newest(len(buf))
    np.testing.assert_array_equal(y, np.arange(50, keep, dtype=np.int32))


def _dtypes(*arrays: npt.NDArray[Any]) -> tuple[str, ...]:
    return tuple(a.dtype.name for a in arrays)


def test_training_set_dtypes(store: VitalsStore) -> None:
    cache = WindowCache(store, max_samples_per_device=1000, max_windows=100)
    x, y = cache.training_set()  # nothing yet
    assert (x.shape, y.shape) == ((0, N_FEATURES), (0,))
    assert _dtypes(x, y) == ("float32", "int32")
    _fill(store, "dev-a", range(2 * WINDOW))
    cache.refresh(now_ms=T0)
    x, y = cache.training_set()
    assert (x.shape, y.shape) == ((2, N_FEATURES), (2,))
    assert _dtypes(x, y) == ("float32", "int32")


def test_a_device_with_a_long_history_grows_its_buffer(store: VitalsStore) -> None:
    """Windows of 2 samples, 200 samples kept: 100 windows per device, more than a buffer
    first makes room for. They arrive in reads of 150, 50, 60 and 90 samples."""
    cache = WindowCache(store, max_samples_per_device=200, max_windows=1000, window=2)
    seq = 0
    for size in (150, 50, 60, 90):
        _fill(store, "dev-a", range(seq, seq + size))
        seq += size
        cache.refresh(now_ms=T0)
    assert cache.held() == {"dev-a": 100}
    x, y = cache.training_set()
    assert _dtypes(x, y) == ("float32", "int32")
    x_full, y_full = build_windows(store.sample_rows("dev-a"), window=2, stride=2)
    assert len(y_full) == 175
    np.testing.assert_array_equal(x, x_full[-100:])
    np.testing.assert_array_equal(y, y_full[-100:])
    assert y.sum() > 0


@pytest.mark.parametrize(
    ("keep", "batches"),
    [
        (5, [1, 1, 1, 1, 1, 1, 1]),
        (20, [3] * 20),
        (65, [64, 1, 1, 64, 65, 66]),
        (100, [70, 30, 99, 1, 200, 5, 5]),
        (200, [150, 30, 10, 120, 40]),
        (300, [1] * 70 + [250, 250]),
    ],
)
def test_window_buffer_growth(keep: int, batches: list[int]) -> None:
    append_and_check(keep, batches)


@settings(max_examples=100, deadline=None)
@given(keep=st.integers(1, 300), batches=st.lists(st.integers(0, 400), max_size=20))
def test_window_buffer_keeps_the_newest_through_growth(keep: int, batches: list[int]) -> None:
    append_and_check(keep, batches)


@pytest.mark.parametrize(
    ("counts", "budget", "expected"),
    [
        ({"a": 5, "b": 5}, 4, {"a": 2, "b": 2}),  # spent with both keys still open
        ({"c": 3, "b": 3, "a": 3}, 4, {"a": 2, "b": 1, "c": 1}),  # remainder by name
        ({"c": 3, "b": 3, "a": 3}, 2, {"a": 1, "b": 1, "c": 0}),  # less than one each
        ({"a": 4, "b": 1, "c": 9}, 9, {"a": 4, "b": 1, "c": 4}),  # b's unused share goes on
        ({"a": 4, "b": 1, "c": 9}, 14, {"a": 4, "b": 1, "c": 9}),  # exactly all there is
        ({"a": 4, "b": 1, "c": 9}, 15, {"a": 4, "b": 1, "c": 9}),  # one more: nothing invented
        ({"a": 0, "b": 5}, 3, {"a": 0, "b": 3}),
        ({"a": 3}, 0, {"a": 0}),
        ({"a": 7}, 7, {"a": 7}),
    ],
)
def test_fair_shares_splits_exactly(
    counts: dict[str, int], budget: int, expected: dict[str, int]
) -> None:
    assert settling_fair_shares(counts, budget) == expected
