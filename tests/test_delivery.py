"""The delivery messages and their gateway-side bookkeeping without a broker: acknowledgement
codec and sealing, unknown-session notices, their limits, handshake floors, vitals epochs."""

from __future__ import annotations

import pytest

from gateway.delivery import DeliveryLedger, HandshakeFloors, NoticeLimiter
from gateway.sessions import SessionEntry, SessionTable
from pqlink import (
    DecodeError,
    HandshakeInitiator,
    HandshakeResponder,
    Identity,
    ReplayError,
    Role,
    Session,
    SignatureError,
)
from pqlink.delivery import (
    MAX_ACK_RANGES,
    DeliveryAck,
    SeqRange,
    UnknownSessionNotice,
    acks_for,
    to_ranges,
    verify_notice,
)
from wire.topics import TopicKind, TopicLayout
from wire.vitals import MAX_EPOCH, VITALS_V1_SIZE, Activity, EventLabel, VitalsSample

from .conftest import Parties

LAYOUT = TopicLayout("iomt", "gw-01")
DEVICE = "wearable-0001"
SID = bytes(range(8))


def test_ranges_cover_exactly_the_sequence_numbers() -> None:
    assert to_ranges([5, 1, 2, 3, 9, 10, 3]) == [SeqRange(1, 3), SeqRange(5, 1), SeqRange(9, 2)]
    assert to_ranges([]) == []
    ack = DeliveryAck(7, tuple(to_ranges([0, 1, 2, 7])))
    assert DeliveryAck.decode(ack.encode()) == ack
    assert [s for s in range(10) if ack.covers(s)] == [0, 1, 2, 7]


def test_many_gaps_split_into_several_acks() -> None:
    exact = acks_for(3, range(0, 2 * MAX_ACK_RANGES, 2))  # MAX_ACK_RANGES single-seq ranges
    assert len(exact) == 1
    assert len(exact[0].ranges) == MAX_ACK_RANGES
    over = acks_for(3, range(0, 2 * MAX_ACK_RANGES + 2, 2))  # one range more
    assert [len(a.ranges) for a in over] == [MAX_ACK_RANGES, 1]
    with pytest.raises(ValueError, match="ranges"):
        DeliveryAck(3, tuple(SeqRange(2 * i, 1) for i in range(MAX_ACK_RANGES + 1)))


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x41",
        b"\x42\x01" + bytes(9),  # wrong type
        b"\x41\x02" + bytes(9),  # wrong version
        b"\x41\x01" + bytes(8) + b"\x00",  # no ranges
        b"\x41\x01" + bytes(8) + b"\x01" + bytes(12),  # a range of count 0
        DeliveryAck(1, (SeqRange(0, 1),)).encode() + b"\x00",  # trailing byte
    ],
)
def test_bad_acks_raise_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        DeliveryAck.decode(frame)


def _pair(parties: Parties) -> tuple[Session, Session]:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    result = HandshakeResponder(parties.gateway, parties.sensor_registry()).respond(init.start())
    return init.receive(result.response), result.session


def test_ledger_seals_acks_the_wearable_opens(parties: Parties) -> None:
    wearable, gateway = _pair(parties)
    table = SessionTable(10, 60, 600)
    table.add(SessionEntry(gateway, DEVICE, 0.0, 0.0, dirty=False), 0.0)
    ledger = DeliveryLedger()
    for seq in (4, 5, 6, 9):
        ledger.add(gateway.session_id, 77, seq)
    ledger.add(b"\xee" * 8, 77, 1)  # a session that ended meanwhile: nothing to seal
    (topic, frame), *rest = ledger.seal(table, LAYOUT)
    assert rest == []
    assert topic == LAYOUT.topic(TopicKind.ACK, DEVICE)
    ack = DeliveryAck.decode(wearable.open(frame, topic.encode()))
    assert ack == DeliveryAck(77, (SeqRange(4, 3), SeqRange(9, 1)))
    # sealing advanced the session: its state must be committed before the ack goes out
    assert table.peek(gateway.session_id) is not None
    assert table.entries()[0].dirty
    with pytest.raises(ReplayError):
        wearable.open(frame, topic.encode())


def _notice(parties: Parties, ts: int, device: str = DEVICE, sid: bytes = SID) -> bytes:
    return UnknownSessionNotice("gw-01", device, sid, ts).sign(parties.gateway)


def test_notice_is_signed_fresh_and_about_our_session(parties: Parties) -> None:
    gw = parties.gateway.public
    skew = 120_000
    now = 1_700_000_000_000

    def check(frame: bytes, at: int = now, sid: bytes = SID) -> UnknownSessionNotice:
        return verify_notice(
            frame, gateway=gw, device_id=DEVICE, session_id=sid, now_ms=at, max_skew_ms=skew
        )

    frame = _notice(parties, now)
    assert check(frame).session_id == SID
    assert check(frame, at=now + skew).timestamp_ms == now  # exactly at the limit: accepted
    with pytest.raises(ReplayError, match="stale"):
        check(frame, at=now + skew + 1)
    with pytest.raises(ReplayError, match="another session"):
        check(frame, sid=b"\x01" * 8)
    with pytest.raises(DecodeError, match="someone else"):
        check(_notice(parties, now, device="wearable-0002"))
    impostor = Identity.generate("gw-01", Role.GATEWAY)  # same name, another key
    forged = UnknownSessionNotice("gw-01", DEVICE, SID, now).sign(impostor)
    with pytest.raises(SignatureError):
        check(forged)
    flipped = bytearray(frame)
    flipped[-1] ^= 1
    with pytest.raises(SignatureError):
        check(bytes(flipped))
    with pytest.raises(DecodeError):
        check(frame[:40])


def test_notice_limiter_per_session_and_overall() -> None:
    limiter = NoticeLimiter(interval=10.0, rate=0.1, burst=3)
    assert limiter.allow(b"a" * 8, 0.0)
    assert not limiter.allow(b"a" * 8, 9.999)  # same id inside the interval
    assert limiter.allow(b"a" * 8, 10.0)  # exactly at the interval: answered again
    assert limiter.allow(b"b" * 8, 10.0)
    assert limiter.allow(b"c" * 8, 10.0)  # the global bucket's last token
    assert not limiter.allow(b"d" * 8, 10.0)  # empty: a new id does not help
    assert limiter.suppressed == 2
    assert limiter.allow(b"d" * 8, 20.0)  # refilled at 0.1/s


def test_handshake_floor_refuses_equal_and_older_inits() -> None:
    floors = HandshakeFloors({DEVICE: 1000})
    assert not floors.admit(DEVICE, 1000)
    assert not floors.admit(DEVICE, 999)
    assert floors.admit(DEVICE, 1001)
    assert floors.admit("wearable-0002", 5)
    dirty = floors.take_dirty()
    assert dirty == {DEVICE: 1001, "wearable-0002": 5}
    assert floors.take_dirty() == {}
    floors.restore(dirty)
    assert floors.take_dirty() == dirty


def _sample(seq: int, epoch: int = 0) -> VitalsSample:
    return VitalsSample(
        seq, 1000 + seq, 70.0, 97.0, 33.0, 1.0, Activity.REST, EventLabel.NONE, epoch
    )


def test_vitals_carry_the_boot_epoch() -> None:
    sample = _sample(3, MAX_EPOCH)
    assert VitalsSample.decode(sample.encode()) == sample
    with pytest.raises(ValueError, match="epoch"):
        _sample(3, MAX_EPOCH + 1).encode()
    raw = bytearray(sample.encode())
    raw[1:9] = (MAX_EPOCH + 1).to_bytes(8, "big")
    with pytest.raises(DecodeError, match="epoch"):
        VitalsSample.decode(bytes(raw))
    # a sample of the first format (no epoch) still decodes, with epoch 0
    v1 = b"\x01" + sample.encode()[9:]
    assert len(v1) == VITALS_V1_SIZE
    assert VitalsSample.decode(v1) == _sample(3, 0)
    with pytest.raises(DecodeError, match="must be"):
        VitalsSample.decode(v1 + b"\x00")
