"""The gateway's half of the end-to-end guarantee, without I/O: acknowledgements of committed
records sealed per session, bounded unknown-session answers, and the persisted handshake floor."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field

from gateway.sessions import RateLimiter, SessionTable
from pqlink import PqlinkError
from pqlink.delivery import acks_for
from wire.topics import TopicKind, TopicLayout

OutboundMessage = tuple[str, bytes]
"""(topic, payload) for the gateway to publish at QoS 1 once its batch is committed."""


@dataclass
class DeliveryLedger:
    """Which (epoch, seq) of which session the current batch will commit."""

    _by_session: dict[bytes, dict[int, list[int]]] = field(default_factory=dict)

    def add(self, session_id: bytes, epoch: int, seq: int) -> None:
        self._by_session.setdefault(session_id, defaultdict(list))[epoch].append(seq)

    def __len__(self) -> int:
        return len(self._by_session)

    def merge(self, other: DeliveryLedger) -> None:
        """Take over what `other` holds (a batch put back after a failed commit)."""
        for sid, by_epoch in other._by_session.items():
            mine = self._by_session.setdefault(sid, defaultdict(list))
            for epoch, seqs in by_epoch.items():
                mine[epoch].extend(seqs)

    def seal(self, table: SessionTable, layout: TopicLayout) -> list[OutboundMessage]:
        """Seal one acknowledgement per session and epoch (more if there are many gaps).

        Call before the commit that persists the sessions' state: sealing advances each
        session's send counter, and the commit must record that before anything sealed under
        it is published, so a restart can never reuse a counter (and its nonce)."""
        out: list[OutboundMessage] = []
        for sid, by_epoch in self._by_session.items():
            entry = table.peek(sid)
            if entry is None:
                continue  # ended meanwhile: the wearable resends under its next session
            topic = layout.topic(TopicKind.ACK, entry.device_id)
            for epoch, seqs in by_epoch.items():
                for ack in acks_for(epoch, seqs):
                    try:
                        out.append((topic, entry.session.seal(ack.encode(), topic.encode())))
                    except PqlinkError:
                        break  # session used up: the wearable resends under its next one
            entry.dirty = True
        return out


class NoticeLimiter:
    """Bounds unknown-session answers: one per session id per `interval` seconds, and a
    global token bucket, so a flood of made-up session ids costs at most `rate` signatures
    a second however many ids it uses."""

    def __init__(
        self, interval: float = 10.0, rate: float = 5.0, burst: int = 20, max_ids: int = 10_000
    ) -> None:
        self.interval = interval
        self.max_ids = max_ids
        self._global = RateLimiter(rate, burst, max_keys=1)
        self._last: OrderedDict[bytes, float] = OrderedDict()
        self.suppressed = 0

    def allow(self, session_id: bytes, now: float) -> bool:
        last = self._last.get(session_id)
        if last is not None and now - last < self.interval:
            self.suppressed += 1
            return False
        if not self._global.allow("*", now):
            self.suppressed += 1
            return False
        self._last[session_id] = now
        self._last.move_to_end(session_id)
        while len(self._last) > self.max_ids:
            self._last.popitem(last=False)
        return True


class HandshakeFloors:
    """Per device, the newest handshake-init timestamp accepted, persisted with the sessions:
    an init that is not newer is a replay, even one captured before a restart (the in-memory
    replay cache is empty then), so a replay can never evict the device's live session."""

    def __init__(self, floors: dict[str, int] | None = None) -> None:
        self._floors = dict(floors or {})
        self._dirty: dict[str, int] = {}

    def load(self, floors: dict[str, int]) -> None:
        """Take the floors committed before a restart (raising, never lowering, any)."""
        for device, ts in floors.items():
            self._floors[device] = max(ts, self._floors.get(device, ts))

    def admit(self, device_id: str, timestamp_ms: int) -> bool:
        """True, and raise the floor, if this init is newer than any accepted before."""
        if timestamp_ms <= self._floors.get(device_id, -1):
            return False
        self._floors[device_id] = self._dirty[device_id] = timestamp_ms
        return True

    def take_dirty(self) -> dict[str, int]:
        """Floors raised since the last call (to commit with the sessions)."""
        dirty, self._dirty = self._dirty, {}
        return dirty

    def restore(self, dirty: dict[str, int]) -> None:
        """Put back floors whose commit failed (to be retried with the next one)."""
        for device, ts in dirty.items():
            self._dirty[device] = max(ts, self._dirty.get(device, ts))
