"""The bounded session table (expiry, eviction, per-device limits) and the per-key token
buckets that bound what unauthenticated input may cost (logs, answers, handshakes)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from pqlink import Session

MAX_SESSIONS_PER_DEVICE = 2  # the current one and its successor during a re-handshake


@dataclass(slots=True)
class SessionEntry:
    session: Session
    device_id: str
    created: float
    last_seen: float
    dirty: bool = True  # state changed since the last commit


class SessionTable:
    """Sessions by id, least recently used first. Bounded: a full table evicts expired
    sessions first, then the least recently used one."""

    def __init__(self, max_sessions: int, unconfirmed_timeout: float, idle_timeout: float) -> None:
        self.max_sessions = max_sessions
        self.unconfirmed_timeout = unconfirmed_timeout
        self.idle_timeout = idle_timeout
        self._by_id: OrderedDict[bytes, SessionEntry] = OrderedDict()
        self._by_device: dict[str, list[bytes]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, session_id: bytes) -> SessionEntry | None:
        entry = self._by_id.get(session_id)
        if entry is not None:
            self._by_id.move_to_end(session_id)
        return entry

    def peek(self, session_id: bytes) -> SessionEntry | None:
        """The entry without marking it used (for the gateway's own messages)."""
        return self._by_id.get(session_id)

    def add(self, entry: SessionEntry, now: float) -> list[SessionEntry]:
        """Insert; return the entries removed to make room (to drop from the store)."""
        removed: list[SessionEntry] = []
        ids = self._by_device.setdefault(entry.device_id, [])
        while len(ids) >= MAX_SESSIONS_PER_DEVICE:
            removed.append(self._remove(ids[0]))
        if len(self._by_id) >= self.max_sessions:
            removed.extend(self.expire(now))
        while len(self._by_id) >= self.max_sessions:
            removed.append(self._remove(next(iter(self._by_id))))
        sid = entry.session.session_id
        self._by_id[sid] = entry
        self._by_device.setdefault(entry.device_id, []).append(sid)
        return removed

    def _remove(self, session_id: bytes) -> SessionEntry:
        entry = self._by_id.pop(session_id)
        ids = self._by_device.get(entry.device_id, [])
        if session_id in ids:
            ids.remove(session_id)
        if not ids:
            self._by_device.pop(entry.device_id, None)
        return entry

    def expire(self, now: float) -> list[SessionEntry]:
        """Remove sessions never confirmed in time, or idle too long."""
        stale = [
            sid
            for sid, e in self._by_id.items()
            if now - e.last_seen > self.idle_timeout
            or (not e.session.confirmed and now - e.created > self.unconfirmed_timeout)
        ]
        return [self._remove(sid) for sid in stale]

    def drop_device(self, device_id: str) -> list[SessionEntry]:
        return [self._remove(sid) for sid in list(self._by_device.get(device_id, []))]

    def devices(self) -> list[str]:
        return list(self._by_device)

    def entries(self) -> list[SessionEntry]:
        return list(self._by_id.values())


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class RateLimiter:
    """Token bucket per key (device id), with a bounded number of keys."""

    rate: float
    burst: float
    max_keys: int = 100_000
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)

    def allow(self, key: str, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False
