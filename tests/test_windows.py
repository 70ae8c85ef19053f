"""Training windows built incrementally: the same windows as a full rebuild, only new rows
read, per-device history and per-round budget bounds, retention followed."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import windows
from gateway.config import ConfigError, parse_config
from gateway.features import N_FEATURES, WINDOW, build_windows
from gateway.store import VitalsStore, vitals_row
from gateway.windows import WindowBudgetError, WindowCache, _WindowBuffer, fair_shares
from wire.vitals import Activity, EventLabel, VitalsSample

T0 = 1_790_000_000_000


class _CountsRead(dict[str, int]):
    """Counts that fail a split reading them more than `limit` times: one that never settles
    fails instead of spinning."""

    def __init__(self, counts: dict[str, int], limit: int) -> None:
        super().__init__(counts)
        self.limit = limit
        self.reads = 0

    def __getitem__(self, key: str) -> int:
        self.reads += 1
        if self.reads > self.limit:
            raise AssertionError(f"fair_shares read the counts {self.reads} times: no progress")
        return super().__getitem__(key)


def settling_fair_shares(counts: dict[str, int], budget: int) -> dict[str, int]:
    """`fair_shares`, which settles in at most one pass per key (each pass either spends the
    budget or fills a key), so it reads each count a few times per pass at most."""
    return fair_shares(_CountsRead(counts, 4 * (len(counts) + 1) ** 2), budget)


@pytest.fixture(autouse=True)
def _splits_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    """`training_set` splits its budget with the settling `fair_shares`."""
    monkeypatch.setattr(windows, "fair_shares", settling_fair_shares)


def _sample(seq: int, ts: int, event: bool = False) -> VitalsSample:
    return VitalsSample(
        seq,
        ts,
        60.0 + (seq % 17),
        96.0 - (seq % 3),
        None if seq % 11 == 0 else 33.0 + (seq % 5) / 10,
        1.0 + (seq % 7) / 10,
        Activity.WALK if seq % 4 == 0 else Activity.REST,
        EventLabel.TACHYCARDIA if event else EventLabel.NONE,
    )


def _timestamps(n: int) -> list[int]:
    """1 s sampling with two gaps (60 s and 10 s) so that windows restart after each."""
    ts, t = [], T0
    for seq in range(n):
        t += 60_000 if seq == 77 else 10_000 if seq == 151 else 1000
        ts.append(t)
    return ts


def _fill(store: VitalsStore, device: str, seqs: range, ts: list[int]) -> None:
    store.commit([vitals_row(device, _sample(s, ts[s], event=s % 45 == 0), 1) for s in seqs])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VitalsStore]:
    s = VitalsStore(tmp_path / "v.db", retention_days=36500)
    yield s
    s.close()


@pytest.mark.parametrize("chunks", [[300], [1] * 300, [29, 1, 30, 31, 59, 61, 89], [7] * 42 + [6]])
def test_incremental_windows_equal_a_full_rebuild(store: VitalsStore, chunks: list[int]) -> None:
    n = sum(chunks)
    ts = _timestamps(n)
    cache = WindowCache(store, max_samples_per_device=10_000, max_windows=10_000)
    seq = 0
    for size in chunks:
        _fill(store, "dev-a", range(seq, seq + size), ts)
        seq += size
        stats = cache.refresh(now_ms=T0)
        assert stats.rows_read == size  # only what arrived since the last refresh
    x_full, y_full = build_windows(store.sample_rows("dev-a"))
    x, y = cache.training_set()
    assert len(y_full) == 8  # the gaps cost windows: the test covers restarts after gaps
    np.testing.assert_array_equal(x, x_full)
    np.testing.assert_array_equal(y, y_full)
    assert y.sum() > 0


def test_nothing_new_reads_nothing(store: VitalsStore) -> None:
    ts = _timestamps(90)
    _fill(store, "dev-a", range(90), ts)
    cache = WindowCache(store, max_samples_per_device=1000, max_windows=100)
    assert cache.refresh(now_ms=T0).rows_read == 90
    again = cache.refresh(now_ms=T0)
    # 77 samples before the gap make two windows; the 13 after it none yet
    assert (again.rows_read, again.windows_added, again.windows_held) == (0, 0, 2)


def test_rows_after_a_reboot_are_read(store: VitalsStore) -> None:
    """A rebooted wearable starts its seq at 0 again under a new boot epoch: the cache still
    reads its new rows, and makes the windows a full rebuild makes."""
    ts = _timestamps(300)
    cache = WindowCache(store, max_samples_per_device=10_000, max_windows=10_000)
    store.commit([vitals_row("dev-a", _sample(s, ts[s]), 1) for s in range(150)])
    assert cache.refresh(now_ms=T0).rows_read == 150
    rebooted = [
        vitals_row("dev-a", dataclasses.replace(_sample(s - 150, ts[s]), epoch=2), 1)
        for s in range(150, 300)
    ]
    store.commit(rebooted)
    assert cache.refresh(now_ms=T0).rows_read == 150
    x_full, y_full = build_windows(store.sample_rows("dev-a"))
    x, y = cache.training_set()
    assert len(y_full) == 8
    np.testing.assert_array_equal(x, x_full)
    np.testing.assert_array_equal(y, y_full)


def test_history_per_device_is_bounded(store: VitalsStore) -> None:
    ts = [T0 + 1000 * i for i in range(400)]
    _fill(store, "dev-a", range(400), ts)
    # exactly 3 windows' worth of samples: the newest 3 windows are kept
    cache = WindowCache(store, max_samples_per_device=3 * WINDOW, max_windows=100)
    first = cache.refresh(now_ms=T0)
    assert first.rows_read == 3 * WINDOW  # the first read is bounded too
    assert cache.held() == {"dev-a": 3}
    _fill(store, "dev-a", range(400, 400 + 2 * WINDOW), [T0 + 1000 * i for i in range(460)])
    cache.refresh(now_ms=T0)
    assert cache.held() == {"dev-a": 3}
    x, _ = cache.training_set()
    x_newest, _ = build_windows(store.sample_rows("dev-a", limit=3 * WINDOW))
    np.testing.assert_array_equal(x, x_newest)
    # one sample more than three windows still keeps three (a partial window is no window)
    plus_one = WindowCache(store, max_samples_per_device=3 * WINDOW + 1, max_windows=100)
    plus_one.refresh(now_ms=T0)
    assert plus_one.held() == {"dev-a": 3}


def test_the_budget_is_shared_between_devices(store: VitalsStore) -> None:
    for i, (device, n) in enumerate((("dev-a", 10), ("dev-b", 2), ("dev-c", 6))):
        ts = [T0 + 1000 * k for k in range(n * WINDOW)]
        _fill(store, device, range(n * WINDOW), ts)
        assert i < 3
    cache = WindowCache(store, max_samples_per_device=10_000, max_windows=12)
    cache.refresh(now_ms=T0)
    assert cache.held() == {"dev-a": 10, "dev-b": 2, "dev-c": 6}
    x, y = cache.training_set()
    assert len(y) == 12  # budget met exactly: dev-b's unused share goes to the others
    exact = WindowCache(store, max_samples_per_device=10_000, max_windows=18)
    exact.refresh(now_ms=T0)
    assert len(exact.training_set()[1]) == 18  # all there is
    over = WindowCache(store, max_samples_per_device=10_000, max_windows=19)
    over.refresh(now_ms=T0)
    assert len(over.training_set()[1]) == 18  # a larger budget cannot invent windows
    # dev-a's newest 5 windows come first (devices in name order), then dev-b's 2, dev-c's 5
    x_a, _ = build_windows(store.sample_rows("dev-a"))
    np.testing.assert_array_equal(x[:5], x_a[-5:])


def test_fair_shares() -> None:
    assert settling_fair_shares({"a": 10, "b": 2, "c": 6}, 12) == {"a": 5, "b": 2, "c": 5}
    assert settling_fair_shares({"a": 10, "b": 2, "c": 6}, 13) == {"a": 6, "b": 2, "c": 5}
    assert settling_fair_shares({"a": 1, "b": 1}, 1) == {"a": 1, "b": 0}
    assert settling_fair_shares({"a": 3, "b": 4}, 100) == {"a": 3, "b": 4}
    assert settling_fair_shares({}, 5) == {}


def test_retention_forgets_windows(store: VitalsStore, tmp_path: Path) -> None:
    day = 86_400_000
    short = VitalsStore(tmp_path / "short.db", retention_days=1.0)
    ts = [T0 + 1000 * k for k in range(4 * WINDOW)]
    _fill(short, "dev-a", range(4 * WINDOW), ts)
    cache = WindowCache(short, max_samples_per_device=10_000, max_windows=100)
    # a window that starts exactly at the retention limit stays; one ms later it goes
    last_start = ts[3 * WINDOW]
    cache.refresh(now_ms=last_start + day)
    assert cache.held() == {"dev-a": 1}
    cache.refresh(now_ms=last_start + day + 1)
    assert cache.held() == {"dev-a": 0}
    short.close()


def test_bounds_are_checked(store: VitalsStore) -> None:
    WindowCache(store, max_samples_per_device=WINDOW, max_windows=1)
    with pytest.raises(WindowBudgetError, match="max_windows=0"):
        WindowCache(store, max_samples_per_device=WINDOW, max_windows=0)
    with pytest.raises(WindowBudgetError, match=f"max_samples_per_device={WINDOW - 1}"):
        WindowCache(store, max_samples_per_device=WINDOW - 1, max_windows=1)


def test_rows_after_an_insertion_cursor(store: VitalsStore) -> None:
    ts = [T0 + 1000 * k for k in range(10)]
    assert store.insertion_cursor() == 0
    _fill(store, "dev-a", range(7), ts)
    cursor = store.insertion_cursor()
    _fill(store, "dev-b", range(3), ts)
    _fill(store, "dev-a", range(7, 10), ts)
    assert [r[0] for r in store.sample_rows_after("dev-a", cursor)] == [7, 8, 9]
    assert [r[0] for r in store.sample_rows_after("dev-a", cursor, limit=2)] == [8, 9]
    assert store.sample_rows_after("dev-a", store.insertion_cursor()) == []
    with pytest.raises(ValueError, match="limit must be >= 0, got -1"):
        store.sample_rows_after("dev-a", 0, limit=-1)


@pytest.mark.parametrize(
    ("value", "ok"), [(1, True), (0, False), (10**6, True), (10**6 + 1, False)]
)
def test_max_windows_setting(value: int, ok: bool, tmp_path: Path) -> None:
    sections: dict[str, Any] = {
        "gateway": {"id": "gw-1", "state_dir": str(tmp_path)},
        "learning": {"max_windows": value},
    }
    if ok:
        assert parse_config(sections, tmp_path).learning.max_windows == value
    else:
        with pytest.raises(ConfigError, match=r"learning\.max_windows"):
            parse_config(sections, tmp_path)


def append_and_check(keep: int, batches: list[int]) -> tuple[_WindowBuffer, np.ndarray]:
    """A buffer of `keep` fed `batches` of windows numbered in order (window i starts at
    10·i ms), and every number appended. After each batch it holds exactly the newest `keep`,
    in float32 / int32 / int64, in storage for at most twice `keep` rows."""
    buf = _WindowBuffer(keep)
    everything = np.zeros(0, np.int64)
    next_id = 0
    for n in batches:
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        x = np.repeat(ids.astype(np.float32)[:, None], N_FEATURES, axis=1)
        buf.append(x, ids.astype(np.int32), ids * 10)
        everything = np.concatenate((everything, ids))
        expect = everything[-keep:] if len(everything) else everything
        assert len(buf) == len(expect)
        x_new, y_new = buf.newest(len(buf))
        assert (x_new.dtype.name, y_new.dtype.name, buf.start_ms.dtype.name) == (
            "float32",
            "int32",
            "int64",
        )
        np.testing.assert_array_equal(y_new, expect)
        np.testing.assert_array_equal(x_new[:, -1], expect.astype(np.float32))
        assert len(buf.y) <= 2 * keep
        assert buf.x.shape[0] == len(buf.y) == len(buf.start_ms)
    return buf, everything


@settings(max_examples=200, deadline=None)
@given(
    keep=st.integers(1, 40),
    batches=st.lists(st.integers(0, 90), max_size=30),
    forget_at=st.integers(0, 3000),
)
def test_window_buffer_keeps_the_newest(keep: int, batches: list[int], forget_at: int) -> None:
    """The in-place buffer holds exactly what concatenating everything and keeping the last
    `keep` would, through growth, compaction and forgetting."""
    buf, everything = append_and_check(keep, batches)
    before = len(buf)
    buf.forget_before(forget_at)
    _, y_left = buf.newest(len(buf))
    assert all(10 * int(i) >= forget_at for i in y_left)
    assert before - len(buf) == sum(1 for i in everything[-keep:] if 10 * int(i) < forget_at)
