"""The gateway's delivery bookkeeping at its edges: a ledger put back after a failed commit,
sessions that ended or are used up when the acknowledgements are sealed, the handshake floors
loaded and restored across commits, and the unknown-session notice limits (the daemon's
defaults, the per-id table's bound and its counting)."""

from __future__ import annotations

from gateway.delivery import DeliveryLedger, HandshakeFloors, NoticeLimiter
from gateway.sessions import SessionEntry, SessionTable
from pqlink import (
    HandshakeConfig,
    HandshakeInitiator,
    HandshakeResponder,
    Identity,
    RekeyPolicy,
    Session,
)
from pqlink.delivery import MAX_ACK_RANGES, DeliveryAck, SeqRange
from wire.topics import TopicKind, TopicLayout

from .conftest import Parties

LAYOUT = TopicLayout("iomt", "gw-01")
#: Sealing with one record per key epoch: epochs 0..255 give a session 256 records in all.
ONE_PER_EPOCH = RekeyPolicy(max_records=1)
RECORDS_PER_SESSION = 256


def _pair(
    parties: Parties, sensor: Identity, rekey: RekeyPolicy | None = None
) -> tuple[Session, Session]:
    """(the wearable's session, the gateway's session) of one handshake."""
    cfg = HandshakeConfig(rekey=rekey or RekeyPolicy())
    init = HandshakeInitiator(sensor, parties.gateway.public, cfg)
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry(), cfg)
    result = responder.respond(init.start(), monotonic=0.0)
    return init.receive(result.response, now=0.0), result.session


def _table(*entries: tuple[Session, str]) -> SessionTable:
    table = SessionTable(10, 60, 600)
    for session, device in entries:
        table.add(SessionEntry(session, device, 0.0, 0.0, dirty=False), 0.0)
    return table


def _open_acks(
    wearable: Session, device: str, sealed: list[tuple[str, bytes]]
) -> list[DeliveryAck]:
    topic = LAYOUT.topic(TopicKind.ACK, device)
    assert all(t == topic for t, _ in sealed)
    return [DeliveryAck.decode(wearable.open(frame, topic.encode())) for _, frame in sealed]


# --- the ledger -------------------------------------------------------------------------------


def test_merge_takes_over_sessions_epochs_and_seqs(parties: Parties) -> None:
    wearable_a, gateway_a = _pair(parties, parties.sensor)
    wearable_b, gateway_b = _pair(parties, parties.sensor65)
    dev_a, dev_b = parties.sensor.public.name, parties.sensor65.public.name
    table = _table((gateway_a, dev_a), (gateway_b, dev_b))
    sid_a, sid_b = gateway_a.session_id, gateway_b.session_id

    ledger = DeliveryLedger()
    ledger.add(sid_a, 5, 1)
    ledger.add(sid_a, 5, 2)
    put_back = DeliveryLedger()
    put_back.add(sid_a, 5, 3)  # same session and epoch: joins the run 1..2
    put_back.add(sid_a, 6, 0)  # same session, an epoch this ledger does not hold
    put_back.add(sid_b, 5, 7)  # a session this ledger does not hold
    ledger.merge(put_back)
    assert len(ledger) == 2

    sealed = ledger.seal(table, LAYOUT)
    assert len(sealed) == 3
    assert _open_acks(wearable_a, dev_a, sealed[:2]) == [
        DeliveryAck(5, (SeqRange(1, 3),)),
        DeliveryAck(6, (SeqRange(0, 1),)),
    ]
    assert _open_acks(wearable_b, dev_b, sealed[2:]) == [DeliveryAck(5, (SeqRange(7, 1),))]


def test_merge_into_an_empty_ledger(parties: Parties) -> None:
    wearable, gateway = _pair(parties, parties.sensor)
    device = parties.sensor.public.name
    put_back = DeliveryLedger()
    for seq in (9, 8, 10):
        put_back.add(gateway.session_id, 2, seq)
    ledger = DeliveryLedger()
    ledger.merge(put_back)
    assert len(ledger) == 1
    sealed = ledger.seal(_table((gateway, device)), LAYOUT)
    assert _open_acks(wearable, device, sealed) == [DeliveryAck(2, (SeqRange(8, 3),))]


def test_an_ended_session_does_not_stop_the_ones_after_it(parties: Parties) -> None:
    wearable, gateway = _pair(parties, parties.sensor)
    device = parties.sensor.public.name
    table = _table((gateway, device))
    ledger = DeliveryLedger()
    ledger.add(b"\xee" * 8, 4, 1)  # first in the ledger, no longer in the table
    ledger.add(gateway.session_id, 4, 2)
    sealed = ledger.seal(table, LAYOUT)
    assert _open_acks(wearable, device, sealed) == [DeliveryAck(4, (SeqRange(2, 1),))]
    assert table.entries()[0].dirty


def test_a_used_up_session_seals_what_it_can_and_the_rest_go_on(parties: Parties) -> None:
    wearable_a, gateway_a = _pair(parties, parties.sensor, ONE_PER_EPOCH)
    wearable_b, gateway_b = _pair(parties, parties.sensor65)
    dev_a, dev_b = parties.sensor.public.name, parties.sensor65.public.name
    topic_a = LAYOUT.topic(TopicKind.ACK, dev_a).encode()
    for _ in range(RECORDS_PER_SESSION - 1):  # leaves session A exactly one record
        wearable_a.open(gateway_a.seal(b"x", topic_a, now=0.0), topic_a)
    table = _table((gateway_a, dev_a), (gateway_b, dev_b))

    ledger = DeliveryLedger()
    # every other seq: one range each, one more than an acknowledgement holds -> two acks
    for seq in range(0, 2 * MAX_ACK_RANGES + 2, 2):
        ledger.add(gateway_a.session_id, 1, seq)
    ledger.add(gateway_a.session_id, 2, 0)  # a further epoch: nothing left to seal it with
    ledger.add(gateway_b.session_id, 1, 5)
    sealed = ledger.seal(table, LAYOUT)

    assert len(sealed) == 2
    first = DeliveryAck(1, tuple(SeqRange(2 * i, 1) for i in range(MAX_ACK_RANGES)))
    assert _open_acks(wearable_a, dev_a, sealed[:1]) == [first]
    assert _open_acks(wearable_b, dev_b, sealed[1:]) == [DeliveryAck(1, (SeqRange(5, 1),))]
    assert all(e.dirty for e in table.entries())


# --- handshake floors -------------------------------------------------------------------------


def test_a_device_without_a_floor_admits_timestamp_zero() -> None:
    floors = HandshakeFloors()
    assert floors.admit("wearable-0001", 0)
    assert not floors.admit("wearable-0001", 0)  # the floor is 0 now
    assert floors.admit("wearable-0002", 1)
    assert floors.take_dirty() == {"wearable-0001": 0, "wearable-0002": 1}


def test_load_raises_floors_and_never_lowers_them() -> None:
    floors = HandshakeFloors({"wearable-0001": 100})
    floors.load({"wearable-0001": 50, "wearable-0002": 10})
    assert floors.take_dirty() == {}  # loaded floors are committed already
    assert not floors.admit("wearable-0001", 100)  # kept at 100, not lowered to 50
    assert floors.admit("wearable-0001", 101)
    assert not floors.admit("wearable-0002", 10)
    assert floors.admit("wearable-0002", 11)
    floors.load({"wearable-0001": 200})
    assert not floors.admit("wearable-0001", 200)  # raised from 101 to 200
    assert floors.admit("wearable-0001", 201)


def test_load_into_empty_floors() -> None:
    floors = HandshakeFloors()
    floors.load({"wearable-0003": 7})
    assert not floors.admit("wearable-0003", 7)
    assert floors.admit("wearable-0003", 8)


def test_restore_keeps_a_floor_raised_since_the_failed_commit() -> None:
    floors = HandshakeFloors()
    assert floors.admit("wearable-0001", 100)
    assert floors.admit("wearable-0002", 30)
    failed = floors.take_dirty()  # this commit fails ...
    assert floors.admit("wearable-0001", 200)  # ... and a newer init arrives meanwhile
    floors.restore(failed)
    assert floors.take_dirty() == {"wearable-0001": 200, "wearable-0002": 30}


# --- notice limits ----------------------------------------------------------------------------


def test_default_interval_is_ten_seconds_per_session_id() -> None:
    limiter = NoticeLimiter()
    assert limiter.allow(b"a" * 8, 0.0)
    assert not limiter.allow(b"a" * 8, 9.999)
    assert limiter.allow(b"a" * 8, 10.0)


def test_default_global_bucket_is_twenty_then_five_a_second() -> None:
    limiter = NoticeLimiter()
    ids = iter(i.to_bytes(8, "big") for i in range(100))
    assert all(limiter.allow(next(ids), 0.0) for _ in range(20))
    assert not limiter.allow(next(ids), 0.0)  # the 21st at once: the burst is spent
    assert all(limiter.allow(next(ids), 1.0) for _ in range(5))  # one second refills five
    assert not limiter.allow(next(ids), 1.0)
    assert limiter.suppressed == 2


def test_interval_is_measured_from_the_last_answer_at_any_clock_value() -> None:
    limiter = NoticeLimiter(interval=10.0, rate=100.0, burst=100)
    assert limiter.allow(b"a" * 8, 1000.0)
    assert not limiter.allow(b"a" * 8, 1005.0)
    assert not limiter.allow(b"a" * 8, 1009.999)
    assert limiter.allow(b"a" * 8, 1010.0)
    assert limiter.suppressed == 2


def test_every_suppressed_notice_is_counted() -> None:
    limiter = NoticeLimiter(interval=10.0, rate=100.0, burst=100)
    assert limiter.allow(b"a" * 8, 0.0)
    for n in range(1, 4):
        assert not limiter.allow(b"a" * 8, float(n))
        assert limiter.suppressed == n


def test_id_table_forgets_the_oldest_beyond_its_bound() -> None:
    a, b, c = b"a" * 8, b"b" * 8, b"c" * 8
    limiter = NoticeLimiter(interval=10.0, rate=100.0, burst=100, max_ids=2)
    assert limiter.allow(a, 0.0)
    assert limiter.allow(b, 0.0)
    assert not limiter.allow(a, 1.0)  # two ids fit: both still remembered
    assert not limiter.allow(b, 1.0)
    assert limiter.allow(c, 2.0)  # a third: the oldest (a) is forgotten
    assert not limiter.allow(c, 3.0)  # the newest is kept
    assert not limiter.allow(b, 3.0)
    assert limiter.allow(a, 3.0)  # forgotten, so answered inside its interval


def test_default_id_table_holds_ten_thousand() -> None:
    kept = 10_000
    limiter = NoticeLimiter(interval=100.0, rate=1.0, burst=kept + 10)
    ids = [i.to_bytes(8, "big") for i in range(kept + 1)]
    assert all(limiter.allow(sid, 0.0) for sid in ids)
    assert not limiter.allow(ids[1], 1.0)  # the oldest still held
    assert limiter.allow(ids[0], 1.0)  # one past the bound pushed it out
