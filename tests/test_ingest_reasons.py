"""Each ingest rejection exactly (reason, device, detail, counter), the size limits at max and
max+1, the order of the checks, and what an accepted record updates."""

from __future__ import annotations

import pytest

from gateway.ingest import (
    Accepted,
    BareRecords,
    Duplicate,
    HandshakeRequest,
    IngestProcessor,
    Rejected,
)
from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from gateway.store import rr_beat_rows, vitals_row
from pqlink import (
    AuthenticationError,
    DecodeError,
    DuplicateError,
    ErrorReason,
    HandshakeInitiator,
    HandshakeResponder,
    LocalProtocolError,
    NegotiationError,
    PqlinkError,
    RemoteProtocolError,
    ReplayError,
    RevokedPeerError,
    Session,
    SessionExpiredError,
    SignatureError,
    UnknownPeerError,
)
from pqlink.handshake import MAX_INIT_SIZE
from wire.reasons import Reason, reason_for
from wire.rr import BeatClass, Rhythm, RRBatch, RRBeat, decode_record
from wire.topics import TopicKind, TopicLayout
from wire.vitals import Activity, EventLabel, VitalsSample

from .conftest import Parties

LAYOUT = TopicLayout("iomt", "gw-01")
DEVICE = "wearable-0001"
REC = LAYOUT.topic(TopicKind.RECORD, DEVICE)
HS = LAYOUT.topic(TopicKind.HANDSHAKE, DEVICE)
MAX_RECORD = 512


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (RevokedPeerError("x"), Reason.REVOKED),
        (UnknownPeerError("x"), Reason.UNENROLLED),
        (SignatureError("x"), Reason.BAD_SIGNATURE),
        (AuthenticationError("x"), Reason.TAMPERED),
        (ReplayError("x"), Reason.REPLAY),
        (NegotiationError("x"), Reason.NEGOTIATION),
        (SessionExpiredError("x"), Reason.EXPIRED),
        (DecodeError("x"), Reason.MALFORMED),
        (DecodeError("x", reason=ErrorReason.TOO_LARGE), Reason.OVERSIZED),
        (DecodeError("x", reason=ErrorReason.TRUNCATED), Reason.MALFORMED),
        (RemoteProtocolError("x"), Reason.MALFORMED),
        (LocalProtocolError("x"), Reason.MALFORMED),
        (PqlinkError("x"), Reason.MALFORMED),
    ],
)
def test_reason_for_each_error(exc: PqlinkError, reason: Reason) -> None:
    assert reason_for(exc) is reason


def _processor(
    *, records: int = 1000, handshakes: int = 3, plaintext: bool = False
) -> IngestProcessor:
    return IngestProcessor(
        LAYOUT,
        SessionTable(100, 60, 600),
        max_record_bytes=MAX_RECORD,
        failure_limiter=RateLimiter(1.0, records),
        handshake_limiter=RateLimiter(0.2, handshakes),
        records=BareRecords() if plaintext else None,
    )


def _connect(parties: Parties, proc: IngestProcessor, device: str = DEVICE) -> SessionEntry:
    """A real handshake; the gateway side goes in the table, the sensor side is returned."""
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    result = HandshakeResponder(parties.gateway, parties.sensor_registry()).respond(init.start())
    entry = SessionEntry(result.session, device, 0.0, 0.0)
    proc.sessions.add(entry, 0.0)
    return SessionEntry(init.receive(result.response), device, 0.0, 0.0)


def _sample(seq: int) -> VitalsSample:
    return VitalsSample(seq, 1000 * seq, 72.0, 98.0, 33.0, 1.0, Activity.REST, EventLabel.NONE)


def _seal(client: Session, seq: int, topic: str = REC) -> bytes:
    return client.seal(_sample(seq).encode(), topic.encode())


@pytest.mark.parametrize(
    "topic",
    [
        "iomt/gw-02/rec/wearable-0001",
        LAYOUT.topic(TopicKind.RESPONSE, DEVICE),  # our own outgoing topic
        "x",
    ],
)
def test_topics_outside_the_layout(topic: str) -> None:
    proc = _processor()
    out = proc.handle(topic, b"\x03" * 40, 0.0, 0)
    assert out == Rejected(None, Reason.WRONG_TOPIC, "topic outside the gateway's layout")
    assert proc.rejected == {"wrong_topic": 1}


def test_handshake_size_at_the_limit_and_one_over() -> None:
    proc = _processor()
    at_limit = bytes(MAX_INIT_SIZE)
    assert proc.handle(HS, at_limit, 0.0, 0) == HandshakeRequest(DEVICE, at_limit)
    over = proc.handle(HS, bytes(MAX_INIT_SIZE + 1), 0.0, 0)
    assert over == Rejected(DEVICE, Reason.OVERSIZED, f"{MAX_INIT_SIZE + 1} bytes")
    assert proc.rejected == {"oversized": 1}


def test_handshake_burst_then_refill() -> None:
    proc = _processor(handshakes=2)
    frame = b"\x01" * 100
    assert [type(proc.handle(HS, frame, 0.0, 0)) for _ in range(2)] == [HandshakeRequest] * 2
    assert proc.handle(HS, frame, 0.0, 0) == Rejected(DEVICE, Reason.RATE_LIMITED, "handshakes")
    assert proc.handle(HS, frame, 4.9, 0) == Rejected(DEVICE, Reason.RATE_LIMITED, "handshakes")
    assert proc.handle(HS, frame, 5.0, 0) == HandshakeRequest(DEVICE, frame)  # 0.2/s
    assert proc.rejected == {"rate_limited": 2}


def test_each_device_has_its_own_handshake_budget() -> None:
    proc = _processor(handshakes=1)
    other = LAYOUT.topic(TopicKind.HANDSHAKE, "wearable-0002")
    assert proc.handle(HS, b"\x01", 0.0, 0) == HandshakeRequest(DEVICE, b"\x01")
    assert proc.handle(HS, b"\x01", 0.0, 0) == Rejected(DEVICE, Reason.RATE_LIMITED, "handshakes")
    assert proc.handle(other, b"\x01", 0.0, 0) == HandshakeRequest("wearable-0002", b"\x01")


def test_each_device_has_its_own_failure_budget() -> None:
    proc = _processor(records=1)
    other = LAYOUT.topic(TopicKind.RECORD, "wearable-0002")
    first = proc.handle(REC, b"garbage", 0.0, 0)
    assert isinstance(first, Rejected)
    assert (first.reason, first.quiet) == (Reason.MALFORMED, False)  # within the budget
    second = proc.handle(REC, b"garbage", 0.0, 0)
    assert isinstance(second, Rejected)
    # over the budget: still counted with its reason, but neither logged nor answered
    assert (second.reason, second.quiet) == (Reason.MALFORMED, True)
    other_out = proc.handle(other, b"garbage", 0.0, 0)
    assert isinstance(other_out, Rejected)
    assert (other_out.device_id, other_out.reason, other_out.quiet) == (
        "wearable-0002",
        Reason.MALFORMED,
        False,
    )
    assert proc.rejected == {"malformed": 3}
    assert proc.over_budget == 1


def test_an_oversized_handshake_costs_no_token() -> None:
    proc = _processor(handshakes=1)
    proc.handle(HS, bytes(MAX_INIT_SIZE + 1), 0.0, 0)
    assert proc.handle(HS, b"\x01", 0.0, 0) == HandshakeRequest(DEVICE, b"\x01")


def test_handshakes_and_records_have_separate_budgets(parties: Parties) -> None:
    proc = _processor(records=1, handshakes=1)
    client = _connect(parties, proc)
    assert isinstance(proc.handle(HS, b"\x01", 0.0, 0), HandshakeRequest)
    assert isinstance(proc.handle(REC, _seal(client.session, 1), 0.0, 0), Accepted)


def test_record_size_at_the_limit_and_one_over() -> None:
    proc = _processor()
    # at the limit the size check passes and the next check (the session) decides
    at_limit = proc.handle(REC, b"\x03" * MAX_RECORD, 0.0, 0)
    assert isinstance(at_limit, Rejected)
    assert at_limit.reason is Reason.UNKNOWN_SESSION
    over = proc.handle(REC, b"\x03" * (MAX_RECORD + 1), 0.0, 0)
    assert over == Rejected(DEVICE, Reason.OVERSIZED, f"{MAX_RECORD + 1} bytes")


def test_authentic_records_are_never_rate_limited(parties: Parties) -> None:
    proc = _processor(records=2)
    client = _connect(parties, proc)
    oversized = proc.handle(REC, b"\x03" * (MAX_RECORD + 1), 0.0, 0)
    assert isinstance(oversized, Rejected)
    assert oversized.quiet is False  # and it cost nothing of the failure budget
    for counter in (1, 2, 3, 4):
        assert isinstance(proc.handle(REC, _seal(client.session, counter), 0.0, 0), Accepted)
    failures = [proc.handle(REC, b"garbage", 0.0, 0) for _ in range(3)]
    assert [f.quiet for f in failures if isinstance(f, Rejected)] == [False, False, True]
    # garbage spent the failure budget, not the device's records
    assert isinstance(proc.handle(REC, _seal(client.session, 5), 0.0, 0), Accepted)
    assert proc.rejected == {"oversized": 1, "malformed": 3}
    assert proc.accepted == 5


def test_malformed_record_keeps_the_decoder_detail() -> None:
    proc = _processor()
    out = proc.handle(REC, b"\x03\x01", 0.0, 0)
    assert out == Rejected(
        DEVICE, Reason.MALFORMED, "record of 2 bytes is shorter than header and tag"
    )


def test_unknown_session_names_the_id_prefix(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    frame = bytearray(_seal(client.session, 1))
    frame[2:10] = bytes.fromhex("0123456789abcdef")
    out = proc.handle(REC, bytes(frame), 0.0, 0)
    assert out == Rejected(
        DEVICE, Reason.UNKNOWN_SESSION, "01234567", bytes.fromhex("0123456789abcdef")
    )


def test_a_session_is_bound_to_its_device(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc, device="wearable-0002")
    out = proc.handle(REC, _seal(client.session, 1), 0.0, 0)
    assert out == Rejected(DEVICE, Reason.WRONG_TOPIC, "session belongs to another")


def test_record_open_failures_keep_their_reason(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    good = _seal(client.session, 1)
    assert isinstance(proc.handle(REC, good, 1.0, 0), Accepted)
    gateway_side = proc.sessions.entries()[0].session
    # a second copy of a record already received is a duplicate, counted apart
    assert proc.handle(REC, good, 1.0, 0) == Duplicate(DEVICE)
    with pytest.raises(DuplicateError):
        gateway_side.open(good, REC.encode())
    tampered = bytearray(_seal(client.session, 2))
    tampered[-1] ^= 1
    out = proc.handle(REC, bytes(tampered), 1.0, 0)
    with pytest.raises(AuthenticationError) as auth_error:
        gateway_side.open(bytes(tampered), REC.encode())
    assert out == Rejected(DEVICE, Reason.TAMPERED, str(auth_error.value))
    assert proc.rejected == {"tampered": 1}
    assert proc.duplicates == 1


def test_authentic_but_unparseable_vitals(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    out = proc.handle(REC, client.session.seal(b"not vitals", REC.encode()), 1.0, 0)
    assert out == Rejected(DEVICE, Reason.BAD_PAYLOAD, _decode_error(b"not vitals"))
    assert proc.accepted == 0


def test_an_accepted_record_refreshes_its_session(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    entry = proc.sessions.entries()[0]
    entry.dirty = False
    out = proc.handle(REC, _seal(client.session, 7), 42.5, 123456)
    assert out == Accepted(
        DEVICE,
        vitals_row(DEVICE, _sample(7), 123456),
        session_id=client.session.session_id,
        record_id=(0, 7),  # (boot epoch, counter): what the acknowledgement names
    )
    assert (entry.last_seen, entry.dirty) == (42.5, True)
    assert entry.session.confirmed
    assert proc.handle(REC, _seal(client.session, 8), 43.0, 0).__class__ is Accepted
    assert proc.accepted == 2
    assert proc.rejected == {}


def test_a_rejected_record_does_not_refresh_its_session(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    entry = proc.sessions.entries()[0]
    entry.dirty = False
    proc.handle(REC, client.session.seal(b"not vitals", REC.encode()), 50.0, 0)
    assert (entry.last_seen, entry.dirty) == (0.0, False)


def _decode_error(payload: bytes) -> str:
    with pytest.raises(DecodeError) as info:
        decode_record(payload)
    return str(info.value)


def test_plaintext_baseline() -> None:
    proc = _processor(plaintext=True)
    out = proc.handle(REC, _sample(3).encode(), 0.0, 99)
    assert out == Accepted(DEVICE, vitals_row(DEVICE, _sample(3), 99), record_id=(0, 3))
    assert proc.accepted == 1
    bad = proc.handle(REC, b"not vitals", 0.0, 0)
    assert bad == Rejected(DEVICE, Reason.BAD_PAYLOAD, _decode_error(b"not vitals"))
    assert proc.accepted == 1
    assert isinstance(proc.handle(REC, _sample(4).encode(), 0.0, 99), Accepted)
    assert proc.accepted == 2
    assert proc.rejected == {"bad_payload": 1}


def test_plaintext_baseline_keeps_the_size_limit_and_never_rate_limits_records() -> None:
    proc = _processor(records=1, plaintext=True)
    assert proc.handle(REC, b"\x00" * (MAX_RECORD + 1), 0.0, 0).__class__ is Rejected
    assert isinstance(proc.handle(REC, _sample(1).encode(), 0.0, 0), Accepted)
    assert isinstance(proc.handle(REC, _sample(2).encode(), 0.0, 0), Accepted)


def test_an_accepted_rr_batch_becomes_its_beat_rows(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    beats = (
        RRBeat(0, 810, Rhythm.NORMAL, BeatClass.NORMAL),
        RRBeat(790, 790, Rhythm.AFIB, BeatClass.NORMAL),
    )
    batch = RRBatch(3, 1_700_000_000_000, beats)
    out = proc.handle(REC, client.session.seal(batch.encode(), REC.encode()), 2.0, 4242)
    assert out == Accepted(
        DEVICE,
        beats=rr_beat_rows(DEVICE, batch, 4242),
        session_id=client.session.session_id,
        record_id=(0, 3),
    )
    assert isinstance(out, Accepted)
    assert out.row is None
    assert [b[0] for b in out.beats] == [DEVICE, DEVICE]


def test_each_duplicate_is_counted(parties: Parties) -> None:
    proc = _processor()
    client = _connect(parties, proc)
    good = _seal(client.session, 1)
    assert isinstance(proc.handle(REC, good, 1.0, 0), Accepted)
    assert proc.handle(REC, good, 1.0, 0) == Duplicate(DEVICE)
    assert proc.handle(REC, good, 1.0, 0) == Duplicate(DEVICE)
    assert proc.duplicates == 2
    assert proc.rejected == {}
