"""Training windows kept between rounds: each device's feature windows and the store's
insertion cursor when they were read, so a round reads only the rows stored since the previous
one (a wearable's seq restarts after a reboot; the cursor never goes back)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.errors import GatewayError
from gateway.features import N_FEATURES, WINDOW, cut_windows
from gateway.store import SampleRow, VitalsStore

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


class WindowBudgetError(GatewayError, ValueError):
    """A window cache was asked for a nonsensical bound (a budget or history below one)."""


class _WindowBuffer:
    """A device's newest windows, appended in place: a round costs what it adds, not what is
    held (compaction copies at most `keep` rows once per `keep` appended)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        cap = min(64, 2 * keep)
        self.x = np.zeros((cap, N_FEATURES), np.float32)
        self.y = np.zeros(cap, np.int32)
        self.start_ms = np.zeros(cap, np.int64)
        self.lo = self.hi = 0

    def __len__(self) -> int:
        return self.hi - self.lo

    def append(self, x: F32, y: I32, start_ms: I64) -> None:
        n = len(y)
        if n >= self.keep:
            x, y, start_ms = x[-self.keep :], y[-self.keep :], start_ms[-self.keep :]
            n = self.keep
            self.lo = self.hi = 0
        if self.hi + n > len(self.y):
            live = min(len(self), self.keep - n)  # only what survives this append moves
            if live + n > len(self.y):
                self._grow(max(2 * len(self.y), live + n))
            src = slice(self.hi - live, self.hi)
            self.x[:live], self.y[:live] = self.x[src].copy(), self.y[src].copy()
            self.start_ms[:live] = self.start_ms[src].copy()
            self.lo, self.hi = 0, live
        self.x[self.hi : self.hi + n] = x
        self.y[self.hi : self.hi + n] = y
        self.start_ms[self.hi : self.hi + n] = start_ms
        self.hi += n
        self.lo = max(self.lo, self.hi - self.keep)

    def _grow(self, cap: int) -> None:
        cap = min(cap, 2 * self.keep)
        x = np.zeros((cap, N_FEATURES), np.float32)
        y = np.zeros(cap, np.int32)
        start_ms = np.zeros(cap, np.int64)
        live = len(self)
        x[:live], y[:live] = self.x[self.lo : self.hi], self.y[self.lo : self.hi]
        start_ms[:live] = self.start_ms[self.lo : self.hi]
        self.x, self.y, self.start_ms = x, y, start_ms
        self.lo, self.hi = 0, live

    def forget_before(self, oldest_ms: int) -> None:
        self.lo += int(np.searchsorted(self.start_ms[self.lo : self.hi], oldest_ms, side="left"))

    def newest(self, n: int) -> tuple[F32, I32]:
        return self.x[self.hi - n : self.hi], self.y[self.hi - n : self.hi]


@dataclass
class _Device:
    windows: _WindowBuffer
    cursor: int | None = None  # the store's insertion cursor when this device was last read
    # Rows after the last cut window: fewer than WINDOW, so the next window can start there.
    pending: list[SampleRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RefreshStats:
    """What one `refresh` did: rows read from the store, windows added, windows held."""

    rows_read: int
    windows_added: int
    windows_held: int


class WindowCache:
    """Per-device feature windows built incrementally from a `VitalsStore`.

    Only the store thread may call it (it reads the store). Each device keeps at most the
    windows of its newest `max_samples_per_device` samples; `training_set` hands out at most
    `max_windows`, the newest of each device, shared fairly between devices."""

    def __init__(
        self,
        store: VitalsStore,
        *,
        max_samples_per_device: int,
        max_windows: int,
        window: int = WINDOW,
    ) -> None:
        if max_samples_per_device < window:
            raise WindowBudgetError(
                f"max_samples_per_device={max_samples_per_device} is below one window ({window})"
            )
        if max_windows < 1:
            raise WindowBudgetError(f"max_windows={max_windows} must be >= 1")
        self.store = store
        self.window = window
        self.max_samples_per_device = max_samples_per_device
        self.max_windows = max_windows
        self.keep_per_device = max_samples_per_device // window
        self._devices: dict[str, _Device] = {}

    def refresh(self, now_ms: int | None = None) -> RefreshStats:
        """Read each device's rows stored since the last refresh and cut their windows; forget
        windows older than the store's retention period."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        oldest = now_ms - self.store.retention_ms
        read = added = 0
        # Only this thread writes the store, so no row arrives between here and the reads.
        cursor = self.store.insertion_cursor()
        for device_id in self.store.devices():
            dev = self._devices.get(device_id)
            if dev is None:
                dev = self._devices[device_id] = _Device(_WindowBuffer(self.keep_per_device))
            if dev.cursor is None:
                # First sight: only the history a round may use at all.
                rows = self.store.sample_rows(device_id, limit=self.max_samples_per_device)
            else:
                rows = self.store.sample_rows_after(
                    device_id, dev.cursor, limit=self.max_samples_per_device
                )
                if len(rows) == self.max_samples_per_device:
                    dev.pending = []  # more arrived than is kept: the older rows are not read
            dev.cursor = cursor
            if not rows:
                continue
            read += len(rows)
            added += self._cut(dev, dev.pending + rows)
        for dev in self._devices.values():  # also devices whose rows are all gone
            dev.windows.forget_before(oldest)
        held = sum(len(d.windows) for d in self._devices.values())
        return RefreshStats(read, added, held)

    def _cut(self, dev: _Device, rows: list[SampleRow]) -> int:
        cut = cut_windows(rows, self.window)
        # A piece shorter than a window before a gap can never fill: keep at most window - 1.
        dev.pending = rows[max(cut.used, len(rows) - (self.window - 1)) :]
        n = len(cut.labels)
        if n:
            dev.windows.append(cut.features, cut.labels, cut.start_ms)
        return n

    def held(self) -> dict[str, int]:
        """Windows held per device."""
        return {name: len(d.windows) for name, d in self._devices.items()}

    def training_set(self) -> tuple[F32, I32]:
        """At most `max_windows` windows: each device's newest, in equal shares, a device with
        fewer than its share leaving the rest to the others."""
        counts = {name: len(d.windows) for name, d in self._devices.items() if len(d.windows)}
        shares = fair_shares(counts, self.max_windows)
        xs = [np.zeros((0, N_FEATURES), np.float32)]
        ys = [np.zeros(0, np.int32)]
        for name in sorted(shares):
            take = shares[name]
            if take:
                x, y = self._devices[name].windows.newest(take)
                xs.append(x)
                ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)


def fair_shares(counts: dict[str, int], budget: int) -> dict[str, int]:
    """Split `budget` between keys holding `counts` items: equal shares (the remainder to the
    first keys in name order), a key never getting more than it holds."""
    shares = dict.fromkeys(counts, 0)
    left = budget
    open_keys = sorted(counts)
    while left > 0 and open_keys:
        each, extra = divmod(left, len(open_keys))
        still = []
        for i, key in enumerate(open_keys):
            want = each + (1 if i < extra else 0)
            got = min(want, counts[key] - shares[key])
            shares[key] += got
            left -= got
            if shares[key] < counts[key]:
                still.append(key)
        open_keys = still
    return shares
