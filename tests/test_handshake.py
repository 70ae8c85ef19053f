"""The handshake: establishment, negotiation, and every way an init or response can be wrong."""

from __future__ import annotations

import time

import pytest

from pqlink import (
    AuthenticationError,
    DecodeError,
    HandshakeConfig,
    HandshakeInitiator,
    HandshakeResponder,
    InitiatorState,
    LocalProtocolError,
    NegotiationError,
    PqlinkError,
    Registry,
    ReplayError,
    RevokedPeerError,
    SignatureError,
    Suite,
    UnknownPeerError,
    parse_init,
    parse_response,
)
from pqlink.handshake import InitReplayCache

from .conftest import Parties

HYBRID = Suite.X25519MLKEM768_ASCON128_SHA256
PURE = Suite.MLKEM768_ASCON128_SHA256
TOPIC = b"iomt/rec/wearable-0001"
#: The ML-KEM-only suite is opt-in: a responder that accepts it lists it.
OPT_IN = HandshakeConfig(suites=(HYBRID, PURE))


def _responder(parties: Parties, **kw: object) -> HandshakeResponder:
    return HandshakeResponder(parties.gateway, parties.sensor_registry(), **kw)  # type: ignore[arg-type]


def _initiator(parties: Parties, config: HandshakeConfig | None = None) -> HandshakeInitiator:
    return HandshakeInitiator(parties.sensor, parties.gateway.public, config)


def _check_session_pair(
    init: HandshakeInitiator, frame: bytes, responder: HandshakeResponder
) -> None:
    result = responder.respond(frame)
    client = init.receive(result.response)
    server = result.session
    assert client.session_id == server.session_id
    assert init.state is InitiatorState.ESTABLISHED
    assert not server.confirmed
    assert server.open(client.seal(b"hello gateway", TOPIC), TOPIC) == b"hello gateway"
    confirmed: bool = server.confirmed  # a fresh read: opening a record changed it
    assert confirmed
    assert client.open(server.seal(b"hello sensor", TOPIC), TOPIC) == b"hello sensor"


@pytest.mark.parametrize("sensor_name", ["sensor", "sensor65"])
def test_handshake_establishes_matching_sessions(parties: Parties, sensor_name: str) -> None:
    ident = getattr(parties, sensor_name)
    init = HandshakeInitiator(ident, parties.gateway.public)
    responder = _responder(parties)
    frame = init.start()
    result = responder.respond(frame)
    assert result.initiator == ident.public
    assert result.session.suite == HYBRID
    client = init.receive(result.response)
    assert client.open(result.session.seal(b"x", TOPIC), TOPIC) == b"x"


def test_pure_mlkem_suite_when_both_agree(parties: Parties) -> None:
    init = _initiator(parties, HandshakeConfig(suites=(PURE,)))
    responder = _responder(parties, config=OPT_IN)
    frame = init.start()
    result = responder.respond(frame)
    assert result.session.suite == PURE
    client = init.receive(result.response)
    assert client.session_id == result.session.session_id


def test_responder_preference_wins(parties: Parties) -> None:
    init = _initiator(parties, HandshakeConfig(suites=(PURE, HYBRID)))
    result = _responder(parties, config=OPT_IN).respond(init.start())
    assert result.session.suite == HYBRID
    init.receive(result.response)


def test_sessions_are_fresh_each_time(parties: Parties) -> None:
    responder = _responder(parties)
    ids = set()
    for _ in range(3):
        init = _initiator(parties)
        result = responder.respond(init.start())
        ids.add(init.receive(result.response).session_id)
    assert len(ids) == 3


def _init_regions(frame: bytes) -> dict[str, tuple[int, int]]:
    msg = parse_init(frame)
    pos = 0
    regions: dict[str, tuple[int, int]] = {}

    def take(name: str, n: int) -> None:
        nonlocal pos
        regions[name] = (pos, pos + n)
        pos += n

    take("type", 1)
    take("versions", 1 + len(msg.versions))
    take("suites", 1 + 2 * len(msg.suites))
    take("initiator", 1 + len(msg.initiator))
    take("responder", 1 + len(msg.responder))
    take("sig_alg", 1)
    take("timestamp", 8)
    take("random", 16)
    take("key_share", len(msg.key_share))
    take("sig_len", 2)
    take("signature", len(msg.signature))
    assert pos == len(frame)
    return regions


def test_every_init_region_tampered_is_rejected(parties: Parties) -> None:
    frame = _initiator(parties).start()
    regions = _init_regions(frame)
    for start, end in regions.values():
        for pos in sorted({start, (start + end) // 2, end - 1}):
            for flip in (0x01, 0x80):
                bad = bytearray(frame)
                bad[pos] ^= flip
                with pytest.raises(PqlinkError):
                    _responder(parties).respond(bytes(bad))
    # and the untampered frame is still fine: the failures above are due to the tampering
    assert _responder(parties).respond(frame).session is not None


def test_init_truncated_or_extended(parties: Parties) -> None:
    frame = _initiator(parties).start()
    for n in [0, 1, 5, 40, len(frame) // 2, len(frame) - 1]:
        with pytest.raises(DecodeError):
            _responder(parties).respond(frame[:n])
    with pytest.raises(DecodeError):
        _responder(parties).respond(frame + b"\0")


def test_replayed_init_is_rejected(parties: Parties) -> None:
    responder = _responder(parties)
    frame = _initiator(parties).start()
    responder.respond(frame)
    with pytest.raises(ReplayError, match="already used"):
        responder.respond(frame)


def test_stale_and_future_init_rejected(parties: Parties) -> None:
    now = time.time()
    frame = _initiator(parties).start(now=now - 600)
    with pytest.raises(ReplayError, match="timestamp"):
        _responder(parties).respond(frame, now=now)
    frame = _initiator(parties).start(now=now + 600)
    with pytest.raises(ReplayError, match="timestamp"):
        _responder(parties).respond(frame, now=now)


def test_replay_cache_forgets_expired_and_is_bounded() -> None:
    cache = InitReplayCache(max_entries=2)
    cache.check_and_add(b"a", expires=10.0, now=0.0)
    cache.check_and_add(b"b", expires=10.0, now=0.0)
    with pytest.raises(ReplayError, match="full"):
        cache.check_and_add(b"c", expires=10.0, now=1.0)
    cache.check_and_add(b"c", expires=30.0, now=11.0)  # a and b expired
    assert len(cache) == 1


def test_unenrolled_and_revoked_initiators(parties: Parties) -> None:
    frame = _initiator(parties).start()
    with pytest.raises(UnknownPeerError):
        HandshakeResponder(parties.gateway, Registry()).respond(frame)
    reg = parties.sensor_registry()
    reg.revoke("wearable-0001")
    with pytest.raises(RevokedPeerError):
        HandshakeResponder(parties.gateway, reg).respond(_initiator(parties).start())


def test_impostor_with_enrolled_name_fails_signature(parties: Parties) -> None:
    # Same device id as an enrolled sensor, but a different key.
    frame = HandshakeInitiator(parties.stranger, parties.gateway.public).start()
    with pytest.raises(SignatureError):
        _responder(parties).respond(frame)


def test_init_for_another_gateway_is_refused(parties: Parties) -> None:
    frame = HandshakeInitiator(parties.sensor, parties.other_gateway.public).start()
    with pytest.raises(UnknownPeerError, match="addressed"):
        _responder(parties).respond(frame)


def test_response_from_wrong_gateway_is_refused(parties: Parties) -> None:
    # The sensor expects gw-02; gw-01 answers (it was addressed, so a MITM relays to gw-01).
    init = HandshakeInitiator(parties.sensor, parties.other_gateway.public)
    frame = init.start()
    impostor = HandshakeResponder(
        parties.other_gateway.__class__(
            "gw-02", parties.gateway.role, parties.gateway.signing_key, parties.gateway.kem_key
        ),
        parties.sensor_registry(),
    )
    result = impostor.respond(frame)
    with pytest.raises(SignatureError):
        init.receive(result.response)
    assert init.state is InitiatorState.FAILED


def _response_regions(frame: bytes) -> dict[str, tuple[int, int]]:
    msg = parse_response(frame)
    sizes = [
        ("type", 1),
        ("version", 1),
        ("suite", 2),
        ("responder", 1 + len(msg.responder)),
        ("random", 16),
        ("kem_ct", len(msg.kem_ciphertext)),
        ("sig_len", 2),
        ("signature", len(msg.signature)),
        ("finished", 32),
    ]
    regions, pos = {}, 0
    for name, n in sizes:
        regions[name] = (pos, pos + n)
        pos += n
    assert pos == len(frame)
    return regions


def test_every_response_region_tampered_is_rejected(parties: Parties) -> None:
    responder = _responder(parties)
    probe = _initiator(parties)
    regions = _response_regions(responder.respond(probe.start()).response)
    for name, (start, end) in regions.items():
        for pos in sorted({start, (start + end) // 2, end - 1}):
            init = _initiator(parties)
            response = bytearray(responder.respond(init.start()).response)
            response[pos] ^= 0x04
            with pytest.raises(PqlinkError) as info:
                init.receive(bytes(response))
            assert init.state is InitiatorState.FAILED, name
            if name == "finished":
                assert isinstance(info.value, AuthenticationError)


def test_response_truncated(parties: Parties) -> None:
    responder = _responder(parties)
    for cut in (0, 3, 100, 1500, -1):
        init = _initiator(parties)
        response = responder.respond(init.start()).response
        with pytest.raises(DecodeError):
            init.receive(response[:cut])


def test_response_replayed_to_a_new_initiator(parties: Parties) -> None:
    responder = _responder(parties)
    first = _initiator(parties)
    old = responder.respond(first.start()).response
    first.receive(old)
    second = _initiator(parties)
    second.start()
    with pytest.raises(SignatureError):
        second.receive(old)


def test_downgrade_by_stripping_suites_is_detected(parties: Parties) -> None:
    # The initiator offers hybrid and pure; an attacker rewrites the offer to pure only.
    init = _initiator(parties, HandshakeConfig(suites=(HYBRID, PURE)))
    frame = bytearray(init.start())
    regions = _init_regions(bytes(frame))
    start, _ = regions["suites"]
    assert frame[start] == 2
    frame[start + 1 : start + 3] = PURE.to_bytes(2, "big")  # first offered suite: pure
    frame[start + 3 : start + 5] = PURE.to_bytes(2, "big")
    with pytest.raises(SignatureError):
        _responder(parties, config=OPT_IN).respond(bytes(frame))


def test_downgrade_by_rewriting_chosen_suite_is_detected(parties: Parties) -> None:
    init = _initiator(parties, HandshakeConfig(suites=(HYBRID, PURE)))
    response = bytearray(_responder(parties, config=OPT_IN).respond(init.start()).response)
    response[2:4] = PURE.to_bytes(2, "big")
    with pytest.raises(PqlinkError):
        init.receive(bytes(response))


def test_no_common_suite(parties: Parties) -> None:
    frame = _initiator(parties, HandshakeConfig(suites=(PURE,))).start()
    strict = _responder(parties, config=HandshakeConfig(suites=(HYBRID,)))
    with pytest.raises(NegotiationError, match="no common suite"):
        strict.respond(frame)


def test_state_machine_misuse(parties: Parties) -> None:
    init = _initiator(parties)
    with pytest.raises(LocalProtocolError):
        init.receive(b"")
    frame = init.start()
    with pytest.raises(LocalProtocolError):
        init.start()
    init.receive(_responder(parties).respond(frame).response)
    with pytest.raises(LocalProtocolError):
        init.receive(b"")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="versions"):
        HandshakeConfig(versions=(9,))
    with pytest.raises(ValueError, match="suites"):
        HandshakeConfig(suites=())
