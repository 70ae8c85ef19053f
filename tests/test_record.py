"""The record layer: tamper, truncation, replay, reordering, topic binding, key updates."""

from __future__ import annotations

import pytest

from pqlink import (
    AuthenticationError,
    DecodeError,
    HandshakeConfig,
    HandshakeInitiator,
    HandshakeResponder,
    LocalProtocolError,
    PqlinkError,
    RekeyPolicy,
    ReplayError,
    ReplayWindow,
    Session,
    SessionExpiredError,
    peek_session_id,
)
from pqlink.record import HEADER_SIZE, MAX_RECORD_PAYLOAD, export_session, restore_session

from .conftest import Parties

TOPIC = b"iomt/rec/wearable-0001"


def _pair(
    parties: Parties,
    rekey: RekeyPolicy | None = None,
    window: int = 1024,
    now: float | None = None,
) -> tuple[Session, Session]:
    cfg = HandshakeConfig(rekey=rekey or RekeyPolicy(), replay_window=window)
    init = HandshakeInitiator(parties.sensor, parties.gateway.public, cfg)
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry(), cfg)
    result = responder.respond(init.start())
    return init.receive(result.response, now=now), result.session


def test_round_trip_both_directions(parties: Parties) -> None:
    client, server = _pair(parties)
    for i in range(10):
        payload = bytes([i]) * (i * 7)
        assert server.open(client.seal(payload, TOPIC), TOPIC) == payload
        assert client.open(server.seal(payload, TOPIC), TOPIC) == payload


def test_every_byte_tampered_is_rejected(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"heart_rate=72;spo2=98;" * 2, TOPIC)
    for pos in range(len(frame)):
        bad = bytearray(frame)
        bad[pos] ^= 0x20
        with pytest.raises(PqlinkError):
            server.open(bytes(bad), TOPIC)
    # nothing above consumed the counter: the genuine record still opens
    assert server.open(frame, TOPIC).startswith(b"heart_rate")


def test_truncation_is_rejected(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"x" * 64, TOPIC)
    for n in range(len(frame)):
        with pytest.raises((DecodeError, AuthenticationError)):
            server.open(frame[:n], TOPIC)


def test_topic_is_bound(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"vitals", TOPIC)
    with pytest.raises(AuthenticationError):
        server.open(frame, b"iomt/rec/wearable-0002")


def test_record_of_other_session_is_rejected(parties: Parties) -> None:
    client, _server = _pair(parties)
    _client2, server2 = _pair(parties)
    with pytest.raises(DecodeError, match="another session"):
        server2.open(client.seal(b"x", TOPIC), TOPIC)


def test_replay_is_rejected(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"x", TOPIC)
    server.open(frame, TOPIC)
    with pytest.raises(ReplayError, match="already"):
        server.open(frame, TOPIC)


def test_reordering_inside_window_accepted_outside_rejected(parties: Parties) -> None:
    client, server = _pair(parties, window=64)
    frames = [client.seal(str(i).encode(), TOPIC) for i in range(200)]
    # deliver 0..9 reversed: all accepted
    for i in reversed(range(10)):
        assert server.open(frames[i], TOPIC) == str(i).encode()
    # jump ahead to 150: 100 is 50 behind (inside 64), 80 is 70 behind (outside)
    server.open(frames[150], TOPIC)
    assert server.open(frames[100], TOPIC) == b"100"
    with pytest.raises(ReplayError, match="outside"):
        server.open(frames[80], TOPIC)
    with pytest.raises(ReplayError):
        server.open(frames[100], TOPIC)


def test_replay_window_unit() -> None:
    w = ReplayWindow(8)
    for c in (5, 3, 7, 15):
        w.check(c)
        w.accept(c)
    with pytest.raises(ReplayError):
        w.check(7)
    with pytest.raises(ReplayError):
        w.check(7 - 1)  # 8 behind 15 is outside
    w.check(8)
    assert w.highest == 15
    with pytest.raises(ValueError, match="window"):
        ReplayWindow(0)


def test_rekey_after_record_budget(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=5), now=0.0)
    for i in range(23):
        frame = client.seal(b"r%d" % i, TOPIC, now=0.0)
        assert server.open(frame, TOPIC) == b"r%d" % i
    assert client.send_epoch == 4
    assert server.recv_epoch == 4


def test_rekey_after_time_budget(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_seconds=10.0), now=0.0)
    server.open(client.seal(b"a", TOPIC, now=1.0), TOPIC)
    assert client.send_epoch == 0
    server.open(client.seal(b"b", TOPIC, now=11.0), TOPIC)
    assert client.send_epoch == 1
    assert server.recv_epoch == 1


def test_reordering_across_a_key_update(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=4), now=0.0)
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(8)]
    assert frames[4][1] == 1  # epoch byte
    assert server.open(frames[5], TOPIC) == b"5"  # epoch 1 first
    assert server.open(frames[2], TOPIC) == b"2"  # late epoch-0 record still opens
    assert server.open(frames[4], TOPIC) == b"4"


def test_lost_epochs_are_skipped_within_limit(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=1), now=0.0)
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(10)]
    assert server.open(frames[3], TOPIC) == b"3"  # epochs 1, 2 lost
    with pytest.raises(AuthenticationError, match="epoch"):
        server.open(frames[9], TOPIC)  # 6 epochs ahead: beyond the limit


def test_forged_epoch_does_not_advance_receiver(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = bytearray(client.seal(b"x", TOPIC))
    frame[1] = 1
    with pytest.raises(AuthenticationError):
        server.open(bytes(frame), TOPIC)
    assert server.recv_epoch == 0


def test_epoch_budget_exhaustion_demands_new_handshake(parties: Parties) -> None:
    client, _server = _pair(parties, rekey=RekeyPolicy(max_records=1), now=0.0)
    for _ in range(256):
        client.seal(b"x", TOPIC, now=0.0)
    with pytest.raises(SessionExpiredError):
        client.seal(b"x", TOPIC, now=0.0)


def test_oversized_records(parties: Parties) -> None:
    client, server = _pair(parties)
    with pytest.raises(LocalProtocolError):
        client.seal(b"x" * (MAX_RECORD_PAYLOAD + 1), TOPIC)
    frame = client.seal(b"x" * MAX_RECORD_PAYLOAD, TOPIC)
    assert len(server.open(frame, TOPIC)) == MAX_RECORD_PAYLOAD
    with pytest.raises(DecodeError, match="limit"):
        server.open(frame + b"\0", TOPIC)


def test_peek_session_id(parties: Parties) -> None:
    client, _ = _pair(parties)
    frame = client.seal(b"x", TOPIC)
    assert peek_session_id(frame) == client.session_id
    with pytest.raises(DecodeError):
        peek_session_id(frame[:HEADER_SIZE])
    with pytest.raises(DecodeError):
        peek_session_id(b"\x01" + frame[1:])


def test_rekey_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_records"):
        RekeyPolicy(max_records=0)
    with pytest.raises(ValueError, match="max_seconds"):
        RekeyPolicy(max_seconds=0)


def test_exported_session_resumes_where_it_stopped(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=3), now=0.0)
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(10)]
    for f in frames[:7]:
        server.open(f, TOPIC)
    resumed = restore_session(export_session(server), server.peer)
    assert resumed.session_id == server.session_id
    assert resumed.recv_epoch == server.recv_epoch
    with pytest.raises(ReplayError):
        resumed.open(frames[6], TOPIC)  # the replay window came along
    assert [resumed.open(f, TOPIC) for f in frames[7:]] == [b"7", b"8", b"9"]
    with pytest.raises(DecodeError):
        restore_session(export_session(server)[:-1], server.peer)
    with pytest.raises(DecodeError):
        restore_session(b"\x02" + export_session(server)[1:], server.peer)
