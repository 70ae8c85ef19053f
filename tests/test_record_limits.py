"""The record layer at its exact limits: window edges, epoch jumps, counter end, restore checks.

Every negative case names the exact error class and its reason, so a check that is removed or
moved by one shows up here rather than as some other failure further on."""

from __future__ import annotations

import time

import pytest

from pqlink import (
    AuthenticationError,
    DecodeError,
    ErrorReason,
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
    SessionRole,
    peek_session_id,
)
from pqlink.record import (
    _STATE,
    HEADER_SIZE,
    MAX_EPOCH,
    MAX_RECORD_PAYLOAD,
    MAX_RECORD_SIZE,
    TAG_SIZE,
    export_session,
    restore_session,
)

from .conftest import Parties

TOPIC = b"iomt/rec/wearable-0001"
LAST_COUNTER = (1 << 64) - 2  # the highest counter a sender may use


def _raises(exc_type: type[PqlinkError], reason: ErrorReason, call: object, *args: object) -> None:
    """Call and check the exact class (not a subclass or a parent) and the reason."""
    with pytest.raises(PqlinkError) as err:
        call(*args)  # type: ignore[operator]
    assert type(err.value) is exc_type, repr(err.value)
    assert err.value.reason is reason, repr(err.value)


def _pair(
    parties: Parties, rekey: RekeyPolicy | None = None, window: int = 1024
) -> tuple[Session, Session]:
    cfg = HandshakeConfig(rekey=rekey or RekeyPolicy(), replay_window=window)
    init = HandshakeInitiator(parties.sensor, parties.gateway.public, cfg)
    responder = HandshakeResponder(parties.gateway, parties.sensor_registry(), cfg)
    result = responder.respond(init.start(), monotonic=0.0)
    return init.receive(result.response, now=0.0), result.session


# --- replay window ----------------------------------------------------------------------------


def test_window_default_size_is_1024() -> None:
    assert ReplayWindow().size == 1024
    assert ReplayWindow().highest == -1
    assert ReplayWindow(1).size == 1
    with pytest.raises(ValueError, match="window size must be >= 1, got 0"):
        ReplayWindow(0)


def test_window_edges_1023_and_1024_behind() -> None:
    w = ReplayWindow()
    w.accept(5000)
    w.check(5000 - 1023)  # the oldest counter still inside
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 5000 - 1024)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 0)
    w.accept(5000 - 1023)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 5000 - 1023)
    w.check(5001)
    w.check(4999)


def test_window_keeps_history_when_it_moves_by_less_than_its_size() -> None:
    w = ReplayWindow(64)
    for c in (0, 1, 2, 5):
        w.accept(c)
    w.accept(60)  # moves by 55
    for c in (1, 2, 5, 60):
        _raises(ReplayError, ErrorReason.DUPLICATE, w.check, c)
    for c in (3, 4, 6, 59, 61):
        w.check(c)
    w.accept(66)  # 0 and 1 fall out (66 and 65 behind); 2 is 64 behind: outside too
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 2)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 5)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 60)
    w.check(3)  # 63 behind, never seen
    assert w.highest == 66


def test_window_marks_the_newest_after_a_jump_beyond_its_size() -> None:
    w = ReplayWindow(16)
    w.accept(3)
    w.accept(1000)  # jump of 997 > 16: history is gone, the newest is recorded
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 1000)
    w.check(999)
    w.check(985)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 984)
    w.accept(1016)  # a jump of exactly the size: 1000 is now 16 behind, outside
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 1016)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 1000)
    w.accept(1031)  # a jump of size-1 keeps 1016 (15 behind)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 1016)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 1031)
    w.check(1030)


def test_window_takes_a_jump_across_the_whole_counter_space() -> None:
    # The window must not shift its history by the jump: a shift of 2^64 would not fit memory.
    w = ReplayWindow()
    w.accept(0)
    w.accept(1)
    w.accept(LAST_COUNTER)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, LAST_COUNTER)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 1)
    w.check(LAST_COUNTER - 1)
    assert w.highest == LAST_COUNTER


def test_window_late_accept_sets_only_its_own_bit() -> None:
    w = ReplayWindow(8)
    w.accept(10)
    w.accept(7)
    _raises(ReplayError, ErrorReason.DUPLICATE, w.check, 7)
    for c in (3, 4, 5, 6, 8, 9):
        w.check(c)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, w.check, 2)


def test_sessions_replay_at_the_window_edge(parties: Parties) -> None:
    client, server = _pair(parties)
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(1026)]
    assert server.open(frames[1025], TOPIC) == b"1025"
    assert server.open(frames[2], TOPIC) == b"2"  # 1023 behind
    _raises(ReplayError, ErrorReason.DUPLICATE, server.open, frames[2], TOPIC)
    _raises(ReplayError, ErrorReason.OUTSIDE_WINDOW, server.open, frames[1], TOPIC)  # 1024
    _raises(ReplayError, ErrorReason.DUPLICATE, server.open, frames[1025], TOPIC)
    assert server.window.size == 1024


def test_window_mask_stays_within_its_size_and_exports(parties: Parties) -> None:
    client, server = _pair(parties, window=16)
    assert (client.window.size, server.window.size) == (16, 16)
    for _ in range(40):
        server.open(client.seal(b"x", TOPIC, now=0.0), TOPIC)
    state = export_session(server)
    assert len(state) == _STATE.size + 2
    assert restore_session(state, parties.sensor.public).window.highest == 39


# --- sealing and opening ----------------------------------------------------------------------


def test_payload_limit_exact(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(bytes(MAX_RECORD_PAYLOAD), TOPIC, now=0.0)
    assert len(frame) == MAX_RECORD_SIZE == HEADER_SIZE + MAX_RECORD_PAYLOAD + TAG_SIZE
    assert server.open(frame, TOPIC) == bytes(MAX_RECORD_PAYLOAD)
    _raises(
        LocalProtocolError,
        ErrorReason.PAYLOAD_TOO_LARGE,
        client.seal,
        bytes(MAX_RECORD_PAYLOAD + 1),
        TOPIC,
    )
    _raises(DecodeError, ErrorReason.TOO_LARGE, server.open, frame + b"\0", TOPIC)


def test_shortest_record_opens_and_one_byte_less_is_truncated(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"", TOPIC, now=0.0)
    assert len(frame) == HEADER_SIZE + TAG_SIZE
    assert server.open(frame, TOPIC) == b""
    _raises(DecodeError, ErrorReason.TRUNCATED, server.open, frame[:-1], TOPIC)
    _raises(DecodeError, ErrorReason.TRUNCATED, peek_session_id, frame[:-1])
    assert peek_session_id(frame) == client.session_id


def test_wrong_type_and_wrong_session(parties: Parties) -> None:
    client, server = _pair(parties)
    frame = client.seal(b"x", TOPIC, now=0.0)
    _raises(DecodeError, ErrorReason.WRONG_TYPE, server.open, b"\x02" + frame[1:], TOPIC)
    _raises(DecodeError, ErrorReason.WRONG_TYPE, peek_session_id, b"\x04" + frame[1:])
    other = bytearray(frame)
    other[2] ^= 1
    _raises(DecodeError, ErrorReason.WRONG_SESSION, server.open, bytes(other), TOPIC)
    _raises(AuthenticationError, ErrorReason.BAD_TAG, server.open, frame, TOPIC + b"x")
    assert server.open(frame, TOPIC) == b"x"


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_open_and_seal_accept_bytes_like(parties: Parties, kind: type) -> None:
    client, server = _pair(parties)
    frame = client.seal(kind(b"vitals"), kind(TOPIC), now=0.0)
    assert server.open(kind(frame), kind(TOPIC)) == b"vitals"
    assert peek_session_id(kind(frame)) == server.session_id


def _confirmed(session: Session) -> bool:
    return session.confirmed


def test_key_confirmation_flag(parties: Parties) -> None:
    client, server = _pair(parties)
    assert client.confirmed is True
    assert _confirmed(server) is False
    frame = client.seal(b"x", TOPIC, now=0.0)
    _raises(AuthenticationError, ErrorReason.BAD_TAG, server.open, frame, b"other/topic")
    assert _confirmed(server) is False  # a record that fails does not confirm
    server.open(frame, TOPIC)
    assert _confirmed(server) is True
    restored = restore_session(export_session(server), parties.sensor.public)
    assert restored.confirmed is True
    _c2, fresh = _pair(parties)
    assert restore_session(export_session(fresh), parties.sensor.public).confirmed is False


def test_rekey_by_time_at_exactly_max_seconds(parties: Parties) -> None:
    client, _server = _pair(parties, rekey=RekeyPolicy(max_seconds=10.0))
    client.seal(b"a", TOPIC, now=9.999)
    assert client.send_epoch == 0
    client.seal(b"b", TOPIC, now=10.0)
    assert client.send_epoch == 1
    client.seal(b"c", TOPIC, now=19.999)
    assert client.send_epoch == 1
    client.seal(b"d", TOPIC, now=20.0)
    assert client.send_epoch == 2


def test_rekey_by_count_at_exactly_max_records(parties: Parties) -> None:
    client, _server = _pair(parties, rekey=RekeyPolicy(max_records=3))
    epochs = [client.seal(b"x", TOPIC, now=0.0)[1] for _ in range(7)]
    assert epochs == [0, 0, 0, 1, 1, 1, 2]
    assert client.records_sent == 7


def test_rekey_policy_defaults_and_bounds() -> None:
    assert RekeyPolicy() == RekeyPolicy(max_records=65536, max_seconds=3600.0)
    assert RekeyPolicy(max_records=1, max_seconds=1e-9).max_records == 1
    with pytest.raises(ValueError, match="max_records must be >= 1, got 0"):
        RekeyPolicy(max_records=0)
    with pytest.raises(ValueError, match="max_seconds must be > 0, got 0"):
        RekeyPolicy(max_seconds=0)


@pytest.mark.parametrize(
    ("jump", "opens"), [(1, True), (3, True), (4, True), (5, False), (6, False)]
)
def test_epoch_jump_limit_is_4(parties: Parties, jump: int, opens: bool) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=1))
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(jump + 1)]
    assert frames[jump][1] == jump
    if opens:
        assert server.open(frames[jump], TOPIC) == b"%d" % jump
        assert server.recv_epoch == jump
    else:
        _raises(AuthenticationError, ErrorReason.EPOCH_UNUSABLE, server.open, frames[jump], TOPIC)
        assert server.recv_epoch == 0
        assert server.open(frames[0], TOPIC) == b"0"  # nothing was consumed


def test_only_the_previous_epoch_stays_open(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=2))
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(6)]
    assert [f[1] for f in frames] == [0, 0, 1, 1, 2, 2]
    assert server.open(frames[2], TOPIC) == b"2"
    assert server.open(frames[1], TOPIC) == b"1"  # epoch 0, the previous one: still open
    assert server.open(frames[4], TOPIC) == b"4"
    assert server.open(frames[3], TOPIC) == b"3"  # epoch 1, the previous one
    _raises(AuthenticationError, ErrorReason.EPOCH_UNUSABLE, server.open, frames[0], TOPIC)
    assert server.recv_epoch == 2


def test_a_jump_keeps_no_skipped_epoch(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=1))
    frames = [client.seal(b"%d" % i, TOPIC, now=0.0) for i in range(4)]
    assert server.open(frames[3], TOPIC) == b"3"  # from epoch 0 straight to 3
    _raises(AuthenticationError, ErrorReason.EPOCH_UNUSABLE, server.open, frames[2], TOPIC)
    _raises(AuthenticationError, ErrorReason.EPOCH_UNUSABLE, server.open, frames[0], TOPIC)


def test_last_epoch_then_exhaustion(parties: Parties) -> None:
    client, _server = _pair(parties, rekey=RekeyPolicy(max_records=1))
    assert MAX_EPOCH == 255
    for _ in range(256):
        frame = client.seal(b"x", TOPIC, now=0.0)
    assert frame[1] == 255
    _raises(SessionExpiredError, ErrorReason.EPOCHS_EXHAUSTED, client.seal, b"x", TOPIC, 0.0)
    assert client.send_epoch == 255


# --- restore ----------------------------------------------------------------------------------

FIELDS = (
    "version",
    "sid",
    "role",
    "suite",
    "confirmed",
    "send_secret",
    "send_epoch",
    "send_epoch_start",
    "send_counter",
    "recv_secret",
    "recv_epoch",
    "top",
    "size",
    "max_records",
    "max_seconds",
)


def _state(session: Session, mask: bytes | None = None, **changes: object) -> bytes:
    exported = export_session(session)
    values = dict(zip(FIELDS, _STATE.unpack_from(exported), strict=True))
    values.update(changes)
    tail = exported[_STATE.size :] if mask is None else mask
    return _STATE.pack(*(values[f] for f in FIELDS)) + tail


def test_export_restore_round_trip_keeps_every_field(parties: Parties) -> None:
    client, server = _pair(parties, rekey=RekeyPolicy(max_records=2, max_seconds=99.0), window=40)
    for i in range(7):
        server.open(client.seal(b"%d" % i, TOPIC, now=0.0), TOPIC)
        client.open(server.seal(b"%d" % i, TOPIC, now=0.0), TOPIC)
    state = export_session(server)
    again = restore_session(state, parties.sensor.public, now=5.0)
    assert export_session(again) == state
    assert again.role is SessionRole.RESPONDER
    assert (again.send_epoch, again.recv_epoch, again.records_sent) == (3, 3, 7)
    assert again.rekey == RekeyPolicy(max_records=2, max_seconds=99.0)
    assert again.window.size == 40
    assert again.session_id == server.session_id
    assert again.suite == server.suite
    assert again.established_at == 5.0
    # it continues both directions where the original stopped
    assert again.open(client.seal(b"next", TOPIC, now=0.0), TOPIC) == b"next"
    assert client.open(again.seal(b"back", TOPIC, now=5.0), TOPIC) == b"back"
    restored_client = restore_session(export_session(client), parties.gateway.public)
    assert restored_client.role is SessionRole.INITIATOR


def test_counter_exhaustion_stops_before_the_last_value(parties: Parties) -> None:
    client, server = _pair(parties)
    near_end = restore_session(
        _state(client, send_counter=LAST_COUNTER - 1), parties.gateway.public
    )
    a = near_end.seal(b"a", TOPIC, now=0.0)
    b = near_end.seal(b"b", TOPIC, now=0.0)
    assert int.from_bytes(b[10:18], "big") == LAST_COUNTER
    _raises(SessionExpiredError, ErrorReason.COUNTER_EXHAUSTED, near_end.seal, b"c", TOPIC, 0.0)
    assert near_end.records_sent == LAST_COUNTER + 1
    assert server.open(a, TOPIC) == b"a"
    assert server.open(b, TOPIC) == b"b"


@pytest.mark.parametrize(
    ("changes", "mask"),
    [
        ({"version": 2}, None),
        ({"version": 0}, None),
        ({"size": 0}, b""),
        ({"size": (1 << 16) + 1}, bytes(8193)),
        ({"role": 2}, None),
        ({"confirmed": 2}, None),
        ({"send_epoch_start": 5, "send_counter": 4}, None),
        ({"top": -2}, None),
        ({"max_records": 0}, None),
        ({"max_seconds": 0.0}, None),
        ({"size": 12}, b"\x10\x00"),  # bit 12 set: beyond a 12-bit window
    ],
    ids=[
        "version-2",
        "version-0",
        "window-0",
        "window-65537",
        "role-2",
        "confirmed-2",
        "epoch-start-after-counter",
        "top-below-minus-1",
        "max-records-0",
        "max-seconds-0",
        "mask-bit-beyond-size",
    ],
)
def test_restore_refuses_each_bad_field(
    parties: Parties, changes: dict[str, object], mask: bytes | None
) -> None:
    _client, server = _pair(parties)
    state = _state(server, mask, **changes)
    _raises(DecodeError, ErrorReason.BAD_STATE, restore_session, state, parties.sensor.public)


@pytest.mark.parametrize(
    ("changes", "mask"),
    [
        ({"size": 1}, b"\x01"),
        ({"size": 1 << 16}, bytes(8192)),
        ({"role": 1, "confirmed": 1}, None),
        ({"send_epoch_start": 4, "send_counter": 4}, None),
        ({"top": -1}, None),
        ({"size": 12}, b"\x08\x00"),
    ],
    ids=[
        "window-1",
        "window-65536",
        "responder-confirmed",
        "epoch-start-at-counter",
        "top-minus-1",
        "mask-top-bit-of-size",
    ],
)
def test_restore_accepts_each_field_at_its_limit(
    parties: Parties, changes: dict[str, object], mask: bytes | None
) -> None:
    _client, server = _pair(parties)
    restored = restore_session(_state(server, mask, **changes), parties.sensor.public)
    assert export_session(restored) == _state(server, mask, **changes)


def test_restore_refuses_truncated_and_padded_states(parties: Parties) -> None:
    _client, server = _pair(parties)
    state = export_session(server)
    for bad in (state[: _STATE.size - 1], state[:-1], state + b"\0", b""):
        _raises(DecodeError, ErrorReason.BAD_STATE, restore_session, bad, parties.sensor.public)


def test_session_id_must_be_8_bytes(parties: Parties) -> None:
    client, _server = _pair(parties)
    with pytest.raises(LocalProtocolError, match="8 bytes") as err:
        Session(
            session_id=bytes(7),
            role=SessionRole.INITIATOR,
            peer=parties.gateway.public,
            suite=1,
            send_secret=bytes(32),
            recv_secret=bytes(32),
            rekey=RekeyPolicy(),
            now=0.0,
        )
    assert err.value.reason is ErrorReason.BAD_STATE
    assert client.window.size == 1024


def test_wire_and_state_constants(parties: Parties) -> None:
    assert MAX_RECORD_PAYLOAD == 16384
    assert (HEADER_SIZE, TAG_SIZE, MAX_RECORD_SIZE) == (18, 16, 16418)
    _client, server = _pair(parties)
    state = export_session(server)
    assert state[0] == 1  # state format version
    assert state[1:9] == server.session_id
    direct = Session(
        session_id=bytes(8),
        role=SessionRole.RESPONDER,
        peer=parties.sensor.public,
        suite=1,
        send_secret=bytes(32),
        recv_secret=bytes(32),
        rekey=RekeyPolicy(),
        now=7.0,
    )
    assert direct.window.size == 1024
    assert export_session(direct)[_STATE.size :] == bytes(128)  # nothing received yet
    assert direct.confirmed is False
    assert direct.established_at == 7.0
    assert (direct.send_epoch, direct.recv_epoch, direct.records_sent) == (0, 0, 0)


def test_restore_messages_and_defaults(parties: Parties) -> None:
    _client, server = _pair(parties)
    state = export_session(server)
    with pytest.raises(DecodeError, match=r"^session state: bad replay window size$"):
        restore_session(state[: _STATE.size], parties.sensor.public)
    with pytest.raises(DecodeError, match=r"^session state: \d+ bytes is truncated$"):
        restore_session(state[: _STATE.size - 1], parties.sensor.public)
    with pytest.raises(DecodeError, match=r"^session state: max_records must be >= 1, got 0$"):
        restore_session(_state(server, max_records=0), parties.sensor.public)
    before = time.monotonic()
    restored = restore_session(state, parties.sensor.public)
    assert before <= restored.established_at <= time.monotonic()
    assert restored.peer is parties.sensor.public
