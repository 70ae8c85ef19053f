"""The ingest logic without a broker: each bad input maps to its reason, honest traffic flows."""

from __future__ import annotations

import pytest

from gateway.ingest import Accepted, HandshakeRequest, IngestProcessor, Rejected
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
        record_limiter=RateLimiter(100, burst),
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
    assert out.row[:3] == (DEVICE, 1, 1000)
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
            (other_device, client.seal(_record(3), other_device.encode())),
        ],
        Reason.OVERSIZED: [(REC, b"\x03" * 513)],
        Reason.MALFORMED: [(REC, b""), (REC, b"garbage"), (REC, good[:20])],
        Reason.UNKNOWN_SESSION: [(REC, good[:2] + b"\xff" * 8 + good[10:])],
        Reason.TAMPERED: [(REC, bytes(tampered))],
        Reason.REPLAY: [(REC, good)],
        Reason.BAD_PAYLOAD: [(REC, client.seal(b"not vitals", REC.encode()))],
    }
    for reason, inputs in cases.items():
        for topic, payload in inputs:
            assert _reason(proc, topic, payload) is reason, (reason, topic)
    assert proc.rejected[Reason.MALFORMED.value] == 3
    # and the session still works for honest traffic
    assert isinstance(proc.handle(REC, client.seal(_record(9), REC.encode()), 2.0, 0), Accepted)


def test_flood_is_rate_limited_per_device(parties: Parties) -> None:
    proc = _processor(burst=50)
    client = _established(parties, proc)
    outcomes = [proc.handle(REC, client.seal(_record(i), REC.encode()), 1.0, 0) for i in range(80)]
    accepted = sum(isinstance(o, Accepted) for o in outcomes)
    assert accepted == 50
    assert proc.rejected[Reason.RATE_LIMITED.value] == 30


@pytest.mark.parametrize("topic", ["iomt/gw-01/rec/bad id", "iomt/gw-01/zz/wearable-0001", "x"])
def test_malformed_topics(topic: str) -> None:
    assert _reason(_processor(), topic, b"\x03" * 40) is Reason.WRONG_TOPIC
