"""Training windows kept between rounds: each device's feature windows and its last stored
sequence number, so a round reads only the rows stored since the previous one."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gateway.features import N_FEATURES, WINDOW, cut_windows
from gateway.store import SampleRow, VitalsStore

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]


class WindowBudgetError(ValueError):
    """A window cache was asked for a nonsensical bound (a budget or history below one)."""


@dataclass
class _Device:
    last_seq: int | None = None
    # Rows after the last cut window: fewer than WINDOW, so the next window can start there.
    pending: list[SampleRow] = field(default_factory=list)
    x: F32 = field(default_factory=lambda: np.zeros((0, N_FEATURES), np.float32))
    y: I32 = field(default_factory=lambda: np.zeros(0, np.int32))
    start_ms: I64 = field(default_factory=lambda: np.zeros(0, np.int64))


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
        for device_id in self.store.devices():
            dev = self._devices.setdefault(device_id, _Device())
            if dev.last_seq is None:
                # First sight: only the history a round may use at all.
                rows = self.store.sample_rows(device_id, limit=self.max_samples_per_device)
            else:
                rows = self.store.sample_rows_after(
                    device_id, dev.last_seq, limit=self.max_samples_per_device
                )
                if len(rows) == self.max_samples_per_device:
                    dev.pending = []  # more arrived than is kept: the older rows are not read
            if not rows:
                continue
            read += len(rows)
            dev.last_seq = rows[-1][0]
            added += self._cut(dev, dev.pending + rows)
        for dev in self._devices.values():  # also devices whose rows are all gone
            self._forget(dev, oldest)
        held = sum(len(d.y) for d in self._devices.values())
        return RefreshStats(read, added, held)

    def _cut(self, dev: _Device, rows: list[SampleRow]) -> int:
        cut = cut_windows(rows, self.window)
        # A piece shorter than a window before a gap can never fill: keep at most window - 1.
        dev.pending = rows[max(cut.used, len(rows) - (self.window - 1)) :]
        n = len(cut.labels)
        if n:
            keep = self.keep_per_device
            dev.x = np.concatenate((dev.x, cut.features))[-keep:]
            dev.y = np.concatenate((dev.y, cut.labels))[-keep:]
            dev.start_ms = np.concatenate((dev.start_ms, cut.start_ms))[-keep:]
        return n

    @staticmethod
    def _forget(dev: _Device, oldest_ms: int) -> None:
        first = int(np.searchsorted(dev.start_ms, oldest_ms, side="left"))
        if first:
            dev.x, dev.y, dev.start_ms = dev.x[first:], dev.y[first:], dev.start_ms[first:]

    def held(self) -> dict[str, int]:
        """Windows held per device."""
        return {name: len(d.y) for name, d in self._devices.items()}

    def training_set(self) -> tuple[F32, I32]:
        """At most `max_windows` windows: each device's newest, in equal shares, a device with
        fewer than its share leaving the rest to the others."""
        counts = {name: len(d.y) for name, d in self._devices.items() if len(d.y)}
        shares = fair_shares(counts, self.max_windows)
        xs = [np.zeros((0, N_FEATURES), np.float32)]
        ys = [np.zeros(0, np.int32)]
        for name in sorted(shares):
            take = shares[name]
            if take:
                dev = self._devices[name]
                xs.append(dev.x[-take:])
                ys.append(dev.y[-take:])
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
