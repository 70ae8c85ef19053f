"""The session table (per-device limit, capacity, eviction order, expiry at its exact timeouts)
and the token buckets (burst, refill, cost, key bound) driven by an injected clock."""

from __future__ import annotations

import pytest

from gateway.sessions import MAX_SESSIONS_PER_DEVICE, RateLimiter, SessionEntry, SessionTable
from pqlink import RekeyPolicy, Session, SessionRole, Suite

from .conftest import Parties

IDLE = 600.0
UNCONFIRMED = 60.0


def _entry(
    parties: Parties,
    sid: int,
    device: str = "dev-a",
    *,
    created: float = 0.0,
    last_seen: float | None = None,
    confirmed: bool = True,
) -> SessionEntry:
    session = Session(
        session_id=sid.to_bytes(8, "big"),
        role=SessionRole.RESPONDER,
        peer=parties.sensor.public,
        suite=Suite.X25519MLKEM768_ASCON128_SHA256,
        send_secret=bytes(32),
        recv_secret=bytes(range(32)),
        rekey=RekeyPolicy(),
        now=created,
    )
    session.confirmed = confirmed
    return SessionEntry(session, device, created, created if last_seen is None else last_seen)


def _ids(entries: list[SessionEntry]) -> list[int]:
    return [int.from_bytes(e.session.session_id, "big") for e in entries]


def _table(max_sessions: int = 10) -> SessionTable:
    return SessionTable(max_sessions, UNCONFIRMED, IDLE)


def test_a_new_entry_is_dirty() -> None:
    assert SessionEntry.__dataclass_fields__["dirty"].default is True


def test_add_get_and_len(parties: Parties) -> None:
    table = _table()
    assert len(table) == 0
    assert table.add(_entry(parties, 1), 0.0) == []
    assert len(table) == 1
    entry = table.get((1).to_bytes(8, "big"))
    assert entry is not None
    assert entry.device_id == "dev-a"
    assert table.get((2).to_bytes(8, "big")) is None
    assert table.devices() == ["dev-a"]


def test_per_device_limit_replaces_the_oldest_of_that_device(parties: Parties) -> None:
    assert MAX_SESSIONS_PER_DEVICE == 2
    table = _table()
    table.add(_entry(parties, 1, "dev-a"), 0.0)
    table.add(_entry(parties, 2, "dev-b"), 0.0)
    assert table.add(_entry(parties, 3, "dev-a"), 0.0) == []  # the re-handshake successor
    removed = table.add(_entry(parties, 4, "dev-a"), 0.0)
    assert _ids(removed) == [1]
    assert _ids(table.entries()) == [2, 3, 4]
    assert _ids(table.add(_entry(parties, 5, "dev-a"), 0.0)) == [3]
    assert _ids(table.entries()) == [2, 4, 5]


def test_capacity_is_exact(parties: Parties) -> None:
    table = _table(max_sessions=3)
    for sid, device in enumerate(["a", "b", "c"], start=1):
        assert table.add(_entry(parties, sid, device), 0.0) == []
    assert len(table) == 3
    removed = table.add(_entry(parties, 4, "d"), 0.0)
    assert _ids(removed) == [1]  # least recently used goes
    assert len(table) == 3
    assert table.devices() == ["b", "c", "d"]


def test_get_refreshes_the_eviction_order(parties: Parties) -> None:
    table = _table(max_sessions=3)
    for sid, device in enumerate(["a", "b", "c"], start=1):
        table.add(_entry(parties, sid, device), 0.0)
    assert table.get((1).to_bytes(8, "big")) is not None
    assert _ids(table.add(_entry(parties, 4, "d"), 0.0)) == [2]
    assert _ids(table.entries()) == [3, 1, 4]
    assert _ids(table.add(_entry(parties, 5, "e"), 0.0)) == [3]


def test_a_full_table_drops_expired_sessions_before_live_ones(parties: Parties) -> None:
    table = _table(max_sessions=3)
    table.add(_entry(parties, 1, "a", last_seen=1000.0), 0.0)
    table.add(_entry(parties, 2, "b", last_seen=0.0), 0.0)  # idle since 0
    table.add(_entry(parties, 3, "c", last_seen=1000.0), 0.0)
    removed = table.add(_entry(parties, 4, "d", created=1000.0), IDLE + 0.5)
    assert _ids(removed) == [2]
    assert _ids(table.entries()) == [1, 3, 4]


def test_a_table_with_room_expires_nothing_on_add(parties: Parties) -> None:
    table = _table(max_sessions=3)
    table.add(_entry(parties, 1, "a", last_seen=0.0), 0.0)
    assert table.add(_entry(parties, 2, "b"), 10 * IDLE) == []
    assert _ids(table.entries()) == [1, 2]


def test_idle_timeout_at_its_exact_value(parties: Parties) -> None:
    table = _table()
    table.add(_entry(parties, 1, "a", last_seen=100.0), 0.0)
    assert table.expire(100.0 + IDLE) == []
    assert _ids(table.expire(100.0 + IDLE + 0.001)) == [1]
    assert len(table) == 0
    assert table.devices() == []


def test_unconfirmed_timeout_at_its_exact_value(parties: Parties) -> None:
    table = _table()
    table.add(_entry(parties, 1, "a", created=10.0, last_seen=10.0, confirmed=False), 0.0)
    table.add(_entry(parties, 2, "b", created=10.0, last_seen=10.0, confirmed=True), 0.0)
    assert table.expire(10.0 + UNCONFIRMED) == []
    # a confirmed session of the same age stays: only the unconfirmed one goes
    assert _ids(table.expire(10.0 + UNCONFIRMED + 0.001)) == [1]
    assert table.devices() == ["b"]


def test_unconfirmed_timeout_counts_from_creation(parties: Parties) -> None:
    table = _table()
    # traffic refreshed last_seen, but the handshake never completed
    table.add(_entry(parties, 1, "a", created=0.0, last_seen=90.0, confirmed=False), 0.0)
    assert _ids(table.expire(UNCONFIRMED + 1.0)) == [1]


def test_expire_returns_every_stale_entry_and_keeps_the_rest(parties: Parties) -> None:
    table = _table()
    table.add(_entry(parties, 1, "a", last_seen=0.0), 0.0)
    table.add(_entry(parties, 2, "b", last_seen=500.0), 0.0)
    table.add(_entry(parties, 3, "c", last_seen=1.0), 0.0)
    assert _ids(table.expire(IDLE + 2.0)) == [1, 3]
    assert _ids(table.entries()) == [2]


def test_drop_device(parties: Parties) -> None:
    table = _table()
    table.add(_entry(parties, 1, "a"), 0.0)
    table.add(_entry(parties, 2, "b"), 0.0)
    table.add(_entry(parties, 3, "a"), 0.0)
    assert _ids(table.drop_device("a")) == [1, 3]
    assert table.drop_device("a") == []
    assert table.drop_device("nobody") == []
    assert table.devices() == ["b"]
    assert _ids(table.entries()) == [2]


def test_removing_one_of_two_sessions_keeps_the_device(parties: Parties) -> None:
    table = _table()
    table.add(_entry(parties, 1, "a", last_seen=0.0), 0.0)
    table.add(_entry(parties, 2, "a", last_seen=IDLE), 0.0)
    assert _ids(table.expire(IDLE + 1.0)) == [1]
    assert table.devices() == ["a"]
    assert _ids(table.add(_entry(parties, 3, "a"), IDLE + 1.0)) == []  # room for the successor
    assert _ids(table.entries()) == [2, 3]


# --- token buckets ------------------------------------------------------------------------


def test_default_key_bound() -> None:
    assert RateLimiter(1.0, 1.0).max_keys == 100_000


def test_a_new_key_starts_with_a_full_burst() -> None:
    limiter = RateLimiter(rate=1.0, burst=3.0)
    assert [limiter.allow("k", 0.0) for _ in range(4)] == [True, True, True, False]


def test_refill_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    for _ in range(3):
        assert limiter.allow("k", 10.0)
    assert not limiter.allow("k", 10.0)
    assert not limiter.allow("k", 10.25)  # half a token
    assert limiter.allow("k", 10.5)  # exactly one token again
    assert not limiter.allow("k", 10.5)


def test_refill_is_measured_from_the_last_call() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("k", 0.0)
    assert not limiter.allow("k", 0.5)  # half a token, counted up to 0.5
    assert not limiter.allow("k", 0.75)  # 0.75, not 0.5 + 0.75
    assert limiter.allow("k", 1.0)


def test_refill_stops_at_the_burst() -> None:
    limiter = RateLimiter(rate=10.0, burst=2.0)
    assert limiter.allow("k", 0.0)
    assert [limiter.allow("k", 100.0) for _ in range(3)] == [True, True, False]


def test_cost_at_the_balance_and_above() -> None:
    limiter = RateLimiter(rate=1.0, burst=5.0)
    assert not limiter.allow("k", 0.0, cost=5.5)
    assert limiter.allow("k", 0.0, cost=5.0)
    assert not limiter.allow("k", 0.0, cost=0.5)
    assert limiter.allow("k", 0.5, cost=0.5)


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    assert limiter.allow("a", 0.0)
    assert not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)


@pytest.mark.parametrize("touch_a", [False, True])
def test_key_bound_evicts_the_least_recently_used(touch_a: bool) -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, max_keys=2)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0)
    if touch_a:
        assert not limiter.allow("a", 0.0)  # a is now the most recently used
    assert limiter.allow("c", 0.0)  # a third key evicts one
    # an evicted key comes back with a full bucket; a kept one is still empty
    assert limiter.allow("a", 0.0) is not touch_a


def test_capacity_eviction_of_the_devices_own_session(parties: Parties) -> None:
    table = _table(max_sessions=2)
    table.add(_entry(parties, 1, "a"), 0.0)
    table.add(_entry(parties, 2, "b"), 0.0)
    # the least recently used session is the new one's predecessor on the same device
    assert _ids(table.add(_entry(parties, 3, "a"), 0.0)) == [1]
    assert _ids(table.entries()) == [2, 3]
    assert table.devices() == ["b", "a"]
    assert _ids(table.drop_device("a")) == [3]
