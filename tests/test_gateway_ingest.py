"""The ingest logic without a broker: each bad input maps to its reason, honest traffic flows,
and what fails authentication never costs an honest device its records."""

from __future__ import annotations

import pytest

from gateway.ingest import (
    Accepted,
    Duplicate,
    HandshakeRequest,
    IngestProcessor,
    Rejected,
)
from gateway.sessions import RateLimiter, SessionEntry, SessionTable
from pqlink import HandshakeInitiator, HandshakeResponder, Session
from wire.reasons import Reason
from wire.topics import TopicKind, TopicLayout
from wire.vitals import Activity, EventLabel, VitalsSample

from .conftest import Parties

LAYOUT = TopicLayout("iomt", "gw-01")
DEVICE = "wearable-0001"
REC = LAYOUT.topic(TopicKind.RECORD, DEVICE)


def _processor(burst: int = 1000) -> IngestProcessor:
    return IngestProcessor(
        LAYOUT,
        SessionTable(100, 60, 600),
        max_record_bytes=512,
        failure_limiter=RateLimiter(100, burst),
        handshake_limiter=RateLimiter(0.2, 3),
    )


def _established(parties: Parties, proc: IngestProcessor) -> Session:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    result = HandshakeResponder(parties.gateway, parties.sensor_registry()).respond(init.start())
    proc.sessions.add(SessionEntry(result.session, DEVICE, 0.0, 0.0), 0.0)
    return init.receive(result.response)


def _record(seq: int) -> bytes:
    return VitalsSample(
        seq, 1000 * seq, 72.0, 98.0, 33.0, 1.0, Activity.REST, EventLabel.NONE
    ).encode()


def test_honest_record_is_accepted(parties: Parties) -> None:
    proc = _processor()
    client = _established(parties, proc)
    out = proc.handle(REC, client.seal(_record(1), REC.encode()), 1.0, 5)
    assert isinstance(out, Accepted)
    assert out.row is not None
    assert out.row[:4] == (DEVICE, 0, 1, 1000)  # (device, boot epoch, seq, timestamp)
    assert proc.accepted == 1


def test_handshake_topic_yields_request(parties: Parties) -> None:
    proc = _processor()
    frame = HandshakeInitiator(parties.sensor, parties.gateway.public).start()
    out = proc.handle(LAYOUT.topic(TopicKind.HANDSHAKE, DEVICE), frame, 0.0, 0)
    assert out == HandshakeRequest(DEVICE, frame)
    for _ in range(2):
        proc.handle(LAYOUT.topic(TopicKind.HANDSHAKE, DEVICE), frame, 0.0, 0)
    limited = proc.handle(LAYOUT.topic(TopicKind.HANDSHAKE, DEVICE), frame, 0.0, 0)
    assert isinstance(limited, Rejected)
    assert limited.reason is Reason.RATE_LIMITED


def _reason(proc: IngestProcessor, topic: str, payload: bytes) -> Reason:
    out = proc.handle(topic, payload, 1.0, 0)
    assert isinstance(out, Rejected), out
    return out.reason


def test_every_bad_input_has_its_reason(parties: Parties) -> None:
    proc = _processor()
    client = _established(parties, proc)
    good = client.seal(_record(1), REC.encode())
    tampered = bytearray(client.seal(_record(2), REC.encode()))
    tampered[-1] ^= 1
    other_device = LAYOUT.topic(TopicKind.RECORD, "wearable-0002")
    assert proc.handle(REC, good, 1.0, 0).__class__ is Accepted
    cases = {
        Reason.WRONG_TOPIC: [
            ("iomt/gw-02/rec/x", good),
            (LAYOUT.topic(TopicKind.RESPONSE, DEVICE), good),
            (LAYOUT.topic(TopicKind.ACK, DEVICE), good),
            (LAYOUT.topic(TopicKind.NOTICE, DEVICE), good),
            (other_device, client.seal(_record(3), other_device.encode())),
        ],
        Reason.OVERSIZED: [(REC, b"\x03" * 513)],
        Reason.MALFORMED: [(REC, b""), (REC, b"garbage"), (REC, good[:20])],
        Reason.UNKNOWN_SESSION: [(REC, good[:2] + b"\xff" * 8 + good[10:])],
        Reason.TAMPERED: [(REC, bytes(tampered))],
        Reason.BAD_PAYLOAD: [(REC, client.seal(b"not vitals", REC.encode()))],
    }
    for reason, inputs in cases.items():
        for topic, payload in inputs:
            assert _reason(proc, topic, payload) is reason, (reason, topic)
    assert proc.rejected[Reason.MALFORMED.value] == 3
    # a redelivery of a record already taken is a duplicate, not an attack
    assert proc.handle(REC, good, 1.0, 0) == Duplicate(DEVICE)
    assert proc.duplicates == 1
    assert Reason.REPLAY.value not in proc.rejected
    # and the session still works for honest traffic
    assert isinstance(proc.handle(REC, client.seal(_record(9), REC.encode()), 2.0, 0), Accepted)


def test_record_left_of_the_window_is_a_replay(parties: Parties) -> None:
    proc = _processor()
    client = _established(parties, proc)
    frames = [client.seal(_record(i), REC.encode()) for i in range(1026)]
    assert isinstance(proc.handle(REC, frames[-1], 1.0, 0), Accepted)
    assert isinstance(proc.handle(REC, frames[2], 1.0, 0), Accepted)  # 1023 behind: inside
    assert _reason(proc, REC, frames[1]) is Reason.REPLAY  # 1024 behind: outside


def test_authentic_records_are_never_dropped_for_rate(parties: Parties) -> None:
    proc = _processor(burst=50)
    client = _established(parties, proc)
    outcomes = [proc.handle(REC, client.seal(_record(i), REC.encode()), 1.0, 0) for i in range(80)]
    assert sum(isinstance(o, Accepted) for o in outcomes) == 80
    assert not proc.rejected


def test_garbage_on_a_device_topic_spends_its_own_budget(parties: Parties) -> None:
    burst = 50
    proc = _processor(burst=burst)
    client = _established(parties, proc)
    forged = bytearray(client.seal(_record(0), REC.encode()))
    outcomes = []
    for i in range(1, 2001):
        # an attacker copies the header of a real record (session id, a fresh counter)
        forged[10:18] = (10_000 + i).to_bytes(8, "big")
        garbage = proc.handle(REC, bytes(forged), 1.0, 0)
        assert isinstance(garbage, Rejected)
        assert garbage.reason is Reason.TAMPERED
        outcomes.append(garbage)
        if i % 10 == 0:
            honest = proc.handle(REC, client.seal(_record(i), REC.encode()), 1.0, 0)
            assert isinstance(honest, Accepted), honest
    # exactly `burst` failures are logged and answered, the rest only counted
    assert sum(not o.quiet for o in outcomes) == burst
    assert proc.over_budget == 2000 - burst
    assert proc.accepted == 200
    assert proc.rejected[Reason.TAMPERED.value] == 2000


def test_unknown_session_names_the_session(parties: Parties) -> None:
    proc = _processor(burst=1)
    client = _established(parties, proc)
    good = client.seal(_record(1), REC.encode())
    stray = good[:2] + b"\xaa" * 8 + good[10:]
    first = proc.handle(REC, stray, 1.0, 0)
    assert isinstance(first, Rejected)
    assert (first.reason, first.session_id, first.quiet) == (
        Reason.UNKNOWN_SESSION,
        b"\xaa" * 8,
        False,
    )
    second = proc.handle(REC, stray, 1.0, 0)
    assert isinstance(second, Rejected)
    assert second.quiet  # over the budget of 1: no log line, no answer


@pytest.mark.parametrize("topic", ["iomt/gw-01/rec/bad id", "iomt/gw-01/zz/wearable-0001", "x"])
def test_malformed_topics(topic: str) -> None:
    assert _reason(_processor(), topic, b"\x03" * 40) is Reason.WRONG_TOPIC
