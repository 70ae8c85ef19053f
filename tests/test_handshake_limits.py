"""The handshake at its exact limits: clock skew, replay-cache lifetime, negotiation, sizes.

Every negative case names the exact error class and its reason; the clock is injected, so each
limit is probed at its value and one millisecond beyond."""

from __future__ import annotations

import os

import pytest

from pqlink import (
    AuthenticationError,
    DecodeError,
    ErrorReason,
    HandshakeConfig,
    HandshakeInitiator,
    HandshakeResponder,
    Identity,
    InitiatorState,
    InitReplayCache,
    LocalProtocolError,
    NegotiationError,
    PqlinkError,
    ReplayError,
    RevokedPeerError,
    Role,
    SessionRole,
    SigAlg,
    Suite,
    UnknownPeerError,
    parse_init,
    parse_response,
)
from pqlink.handshake import (
    _INIT_CONTEXT,
    MAX_INIT_SIZE,
    MAX_RESPONSE_SIZE,
    RESPONDER_DEFAULT,
    _encode_init_core,
)
from pqlink.keys import HybridPrivateKey

from .conftest import Parties

HYBRID = Suite.X25519MLKEM768_ASCON128_SHA256
PURE = Suite.MLKEM768_ASCON128_SHA256
T0 = 1_800_000_000.0  # wall clock of the initiator when it stamps its init


def _raises(exc_type: type[PqlinkError], reason: ErrorReason, call: object, *args: object) -> None:
    """Call and check the exact class (not a subclass or a parent) and the reason."""
    with pytest.raises(PqlinkError) as err:
        call(*args)  # type: ignore[operator]
    assert type(err.value) is exc_type, repr(err.value)
    assert err.value.reason is reason, repr(err.value)


def _responder(
    parties: Parties, config: HandshakeConfig | None = None, cache: InitReplayCache | None = None
) -> HandshakeResponder:
    return HandshakeResponder(parties.gateway, parties.sensor_registry(), config, cache)


def _init(parties: Parties, config: HandshakeConfig | None = None, now: float = T0) -> bytes:
    return HandshakeInitiator(parties.sensor, parties.gateway.public, config).start(now=now)


def _forged_init(
    signer: Identity,
    *,
    name: str | None = None,
    versions: tuple[int, ...] = (1,),
    suites: tuple[int, ...] = (HYBRID,),
    responder: str = "gw-01",
    sig_alg: SigAlg | None = None,
    now: float = T0,
) -> bytes:
    """An init signed by `signer` (so the signature verifies) with any field bent."""
    core = _encode_init_core(
        versions,
        suites,
        name or signer.name,
        responder,
        sig_alg or signer.signing_key.alg,
        int(now * 1000),
        os.urandom(16),
        HybridPrivateKey.generate().public_key().raw,
    )
    sig = signer.signing_key.sign(core, _INIT_CONTEXT)
    return core + len(sig).to_bytes(2, "big") + sig


# --- clock skew and the replay cache ----------------------------------------------------------


def test_default_skew_is_120_seconds_on_both_sides() -> None:
    assert HandshakeConfig().max_clock_skew == 120.0
    assert RESPONDER_DEFAULT.max_clock_skew == 120.0


@pytest.mark.parametrize(
    ("offset", "ok"), [(120.0, True), (120.001, False), (-120.0, True), (-120.001, False)]
)
def test_default_skew_probed_at_its_value_and_one_ms_beyond(
    parties: Parties, offset: float, ok: bool
) -> None:
    frame = _init(parties)
    responder = _responder(parties)
    if ok:
        assert responder.respond(frame, now=T0 + offset).session.peer == parties.sensor.public
    else:
        _raises(ReplayError, ErrorReason.CLOCK_SKEW, responder.respond, frame, T0 + offset)
        assert len(responder.replay_cache) == 0  # nothing remembered for a refused init


@pytest.mark.parametrize("skew", [5.0, 30.0])
def test_configured_skew_probed_exactly(parties: Parties, skew: float) -> None:
    config = HandshakeConfig(max_clock_skew=skew)
    frame = _init(parties)
    _responder(parties, config).respond(frame, now=T0 + skew)
    _raises(
        ReplayError,
        ErrorReason.CLOCK_SKEW,
        _responder(parties, config).respond,
        frame,
        T0 + skew + 0.001,
    )
    _raises(
        ReplayError,
        ErrorReason.CLOCK_SKEW,
        _responder(parties, config).respond,
        frame,
        T0 - skew - 0.001,
    )


def test_replay_refused_for_the_whole_time_the_timestamp_is_acceptable(parties: Parties) -> None:
    skew = 120.0
    # Stamped a full skew ahead: acceptable from T0 - 2*skew (first seen) until T0 + skew.
    first_seen = T0 - skew
    frame = _init(parties, now=T0)
    responder = _responder(parties)
    responder.respond(frame, now=first_seen)
    for later in (first_seen + 1.0, T0, T0 + skew):
        _raises(ReplayError, ErrorReason.INIT_REPLAYED, responder.respond, frame, later)


def test_replay_cache_entry_lives_exactly_two_skews(parties: Parties) -> None:
    cache = InitReplayCache()
    responder = _responder(parties, cache=cache)
    responder.respond(_init(parties, now=T0), now=T0)
    assert len(cache) == 1
    # another handshake just before the entry's end keeps it; at its end it is dropped
    responder.respond(_init(parties, now=T0 + 240.0), now=T0 + 240.0)
    assert len(cache) == 2  # the first lives through T0 + 240
    responder.respond(_init(parties, now=T0 + 240.001), now=T0 + 240.001)
    assert len(cache) == 2  # the first is gone, the third was added


def test_replay_cache_bounds() -> None:
    assert InitReplayCache().max_entries == 100_000
    cache = InitReplayCache(max_entries=2)
    cache.check_and_add(b"a", expires=10.0, now=0.0)
    cache.check_and_add(b"b", expires=10.0, now=0.0)
    _raises(ReplayError, ErrorReason.REPLAY_CACHE_FULL, cache.check_and_add, b"c", 10.0, 0.0)
    _raises(ReplayError, ErrorReason.INIT_REPLAYED, cache.check_and_add, b"a", 10.0, 10.0)
    cache.check_and_add(b"c", 20.0, 10.001)  # a and b lived through 10.0 and are gone now
    assert len(cache) == 1
    cache.check_and_add(b"a", 20.0, 10.001)
    assert len(cache) == 2


# --- negotiation ------------------------------------------------------------------------------


def test_hybrid_is_the_only_default_on_both_sides() -> None:
    assert HandshakeConfig().suites == (HYBRID,)
    assert RESPONDER_DEFAULT.suites == (HYBRID,)
    assert HandshakeConfig().versions == (1,)


def test_ml_kem_only_init_refused_by_default_accepted_when_opted_in(parties: Parties) -> None:
    frame = _init(parties, HandshakeConfig(suites=(PURE,)))
    _raises(NegotiationError, ErrorReason.NO_COMMON_SUITE, _responder(parties).respond, frame, T0)
    opted = _responder(parties, HandshakeConfig(suites=(HYBRID, PURE)))
    assert opted.respond(frame, now=T0).session.suite is PURE


def test_no_common_version(parties: Parties) -> None:
    frame = _forged_init(parties.sensor, versions=(2, 3))
    _raises(NegotiationError, ErrorReason.NO_COMMON_VERSION, _responder(parties).respond, frame, T0)
    both = _forged_init(parties.sensor, versions=(2, 1))
    assert _responder(parties).respond(both, now=T0).response[1] == 1


def test_unknown_suites_in_the_offer_are_skipped(parties: Parties) -> None:
    frame = _forged_init(parties.sensor, suites=(0x7777, HYBRID))
    assert _responder(parties).respond(frame, now=T0).session.suite is HYBRID


def test_init_for_another_responder(parties: Parties) -> None:
    frame = _forged_init(parties.sensor, responder="gw-02")
    _raises(UnknownPeerError, ErrorReason.WRONG_RESPONDER, _responder(parties).respond, frame, T0)


def test_unknown_and_revoked_initiators(parties: Parties) -> None:
    frame = _forged_init(parties.sensor65, name="wearable-9999")
    _raises(UnknownPeerError, ErrorReason.UNKNOWN_PEER, _responder(parties).respond, frame, T0)
    registry = parties.sensor_registry()
    registry.revoke("wearable-0001")
    responder = HandshakeResponder(parties.gateway, registry)
    _raises(RevokedPeerError, ErrorReason.REVOKED_PEER, responder.respond, _init(parties), T0)


def test_signature_algorithm_must_be_the_enrolled_one(parties: Parties) -> None:
    # wearable-0001 is enrolled with ML-DSA-44; an init claiming ML-DSA-65 under its name
    impostor = Identity.generate("wearable-0001", Role.SENSOR, SigAlg.ML_DSA_65)
    frame = _forged_init(impostor)
    _raises(DecodeError, ErrorReason.SIG_ALG_MISMATCH, _responder(parties).respond, frame, T0)


def test_initiator_checks_version_suite_and_responder_before_the_signature(
    parties: Parties,
) -> None:
    cases = [
        (1, b"\x02", NegotiationError, ErrorReason.VERSION_NOT_OFFERED),
        (2, b"\x00\x03", NegotiationError, ErrorReason.UNKNOWN_SUITE),
        (9, b"2", UnknownPeerError, ErrorReason.WRONG_RESPONDER),  # "gw-01" -> "gw-02"
    ]
    for offset, value, exc_type, reason in cases:
        init = HandshakeInitiator(parties.sensor, parties.gateway.public)
        response = bytearray(_responder(parties).respond(init.start(now=T0), now=T0).response)
        response[offset : offset + len(value)] = value
        _raises(exc_type, reason, init.receive, bytes(response))
        assert init.state is InitiatorState.FAILED


def test_initiator_refuses_a_suite_it_did_not_offer(parties: Parties) -> None:
    # A well-formed ML-KEM-only response, made for another initiator that offered it.
    other = HandshakeInitiator(
        parties.sensor, parties.gateway.public, HandshakeConfig(suites=(PURE,))
    )
    opted = _responder(parties, HandshakeConfig(suites=(HYBRID, PURE)))
    pure_response = opted.respond(other.start(now=T0), now=T0).response
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    init.start(now=T0)
    _raises(NegotiationError, ErrorReason.SUITE_NOT_OFFERED, init.receive, pure_response)
    assert other.receive(pure_response).suite is PURE


def test_bad_finished_mac(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    response = bytearray(_responder(parties).respond(init.start(now=T0), now=T0).response)
    response[-1] ^= 1
    _raises(AuthenticationError, ErrorReason.BAD_FINISHED, init.receive, bytes(response))
    _raises(LocalProtocolError, ErrorReason.WRONG_STATE, init.receive, bytes(response))


def test_state_machine_reasons(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    _raises(LocalProtocolError, ErrorReason.WRONG_STATE, init.receive, b"")
    frame = init.start(now=T0)
    _raises(LocalProtocolError, ErrorReason.WRONG_STATE, init.start)
    session = init.receive(_responder(parties).respond(frame, now=T0).response, now=3.0)
    assert session.established_at == 3.0
    assert init.state is InitiatorState.ESTABLISHED
    _raises(LocalProtocolError, ErrorReason.WRONG_STATE, init.receive, b"")


# --- frames: sizes, counts, lengths, trailing bytes -------------------------------------------


def test_init_size_is_the_documented_formula(parties: Parties) -> None:
    frame = _init(parties)
    # type, counts, one version, one suite, two ids, alg, time, random, share, sig length, sig
    expected = 1 + 1 + 1 + 1 + 2 + (1 + 13) + (1 + 5) + 1 + 8 + 16 + 1216 + 2 + 2420
    assert len(frame) == expected == 3689
    assert len(HandshakeInitiator(parties.sensor65, parties.gateway.public).start()) == 4578


def test_init_size_limit_exact(parties: Parties) -> None:
    frame = _init(parties)
    assert MAX_INIT_SIZE == 8192
    padded = frame + bytes(MAX_INIT_SIZE - len(frame))
    _raises(DecodeError, ErrorReason.TRAILING_BYTES, parse_init, padded)
    _raises(DecodeError, ErrorReason.TOO_LARGE, parse_init, padded + b"\0")
    _raises(DecodeError, ErrorReason.TRAILING_BYTES, _responder(parties).respond, frame + b"\0", T0)


def test_response_size_limit_and_trailing_bytes(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    response = _responder(parties).respond(init.start(now=T0), now=T0).response
    assert MAX_RESPONSE_SIZE == 8192
    padded = response + bytes(MAX_RESPONSE_SIZE - len(response))
    _raises(DecodeError, ErrorReason.TRAILING_BYTES, parse_response, padded)
    _raises(DecodeError, ErrorReason.TOO_LARGE, parse_response, padded + b"\0")
    _raises(DecodeError, ErrorReason.TRAILING_BYTES, init.receive, response + b"\0")


def test_response_size_is_as_documented(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    response = _responder(parties).respond(init.start(now=T0), now=T0).response
    assert len(response) == 1 + 1 + 2 + 1 + 5 + 16 + 1120 + 2 + 3309 + 32 == 4489
    opted = HandshakeInitiator(
        parties.sensor, parties.gateway.public, HandshakeConfig(suites=(PURE,))
    )
    pure = _responder(parties, HandshakeConfig(suites=(HYBRID, PURE))).respond(
        opted.start(now=T0), now=T0
    )
    assert len(pure.response) == 4489 - 32
    assert opted.receive(pure.response).suite is PURE


@pytest.mark.parametrize(("count", "ok"), [(0, False), (1, True), (8, True), (9, False)])
def test_init_offer_counts(parties: Parties, count: int, ok: bool) -> None:
    frame = _forged_init(parties.sensor, versions=(1,) * count)
    if ok:
        assert parse_init(frame).versions == (1,) * count
    else:
        _raises(DecodeError, ErrorReason.BAD_COUNT, parse_init, frame)
    frame = _forged_init(parties.sensor, suites=(HYBRID,) * count)
    if ok:
        assert parse_init(frame).suites == (HYBRID,) * count
    else:
        _raises(DecodeError, ErrorReason.BAD_COUNT, parse_init, frame)


def test_init_signature_length_must_match_its_algorithm(parties: Parties) -> None:
    frame = bytearray(_init(parties))
    sig_len_at = len(frame) - 2420 - 2
    assert frame[sig_len_at : sig_len_at + 2] == (2420).to_bytes(2, "big")
    frame[sig_len_at : sig_len_at + 2] = (3309).to_bytes(2, "big")
    _raises(DecodeError, ErrorReason.BAD_SIGNATURE_LENGTH, parse_init, bytes(frame))
    bad_alg = bytearray(_init(parties))
    alg_at = sig_len_at - 1216 - 16 - 8 - 1
    assert bad_alg[alg_at] == SigAlg.ML_DSA_44
    bad_alg[alg_at] = 3
    _raises(DecodeError, ErrorReason.UNKNOWN_SIG_ALG, parse_init, bytes(bad_alg))


def test_response_signature_length_must_be_an_ml_dsa_one(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    response = _responder(parties).respond(init.start(now=T0), now=T0).response
    at = len(response) - 32 - 3309 - 2
    assert response[at : at + 2] == (3309).to_bytes(2, "big")
    for length in (2420, 3309):
        body = response[:at] + length.to_bytes(2, "big") + bytes(length) + bytes(32)
        assert len(parse_response(body).signature) == length
    for length in (0, 2419, 3310, 4627):
        body = response[:at] + length.to_bytes(2, "big") + bytes(length) + bytes(32)
        _raises(DecodeError, ErrorReason.BAD_SIGNATURE_LENGTH, parse_response, body)


def test_wrong_frame_types(parties: Parties) -> None:
    frame = _init(parties)
    _raises(DecodeError, ErrorReason.WRONG_TYPE, parse_init, b"\x02" + frame[1:])
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    response = _responder(parties).respond(init.start(now=T0), now=T0).response
    _raises(DecodeError, ErrorReason.WRONG_TYPE, parse_response, b"\x01" + response[1:])
    _raises(DecodeError, ErrorReason.TRUNCATED, parse_response, response[:-1])
    _raises(DecodeError, ErrorReason.TRUNCATED, parse_init, frame[:-1])


def test_bytes_like_frames(parties: Parties) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    result = _responder(parties).respond(memoryview(init.start(now=T0)), now=T0)
    session = init.receive(bytearray(result.response))
    assert session.session_id == result.session.session_id


def test_config_bounds() -> None:
    assert len(HandshakeConfig(suites=(HYBRID,) * 8).suites) == 8
    with pytest.raises(ValueError, match="1 to 8 suites"):
        HandshakeConfig(suites=(HYBRID,) * 9)
    with pytest.raises(ValueError, match="1 to 8 suites"):
        HandshakeConfig(suites=())
    with pytest.raises(ValueError, match="max_clock_skew must be > 0, got 0"):
        HandshakeConfig(max_clock_skew=0)
    assert HandshakeConfig(max_clock_skew=0.001).max_clock_skew == 0.001
    with pytest.raises(ValueError, match="non-empty subset"):
        HandshakeConfig(versions=())
    with pytest.raises(ValueError, match="non-empty subset"):
        HandshakeConfig(versions=(1, 2))


def _holds_ephemeral(init: HandshakeInitiator) -> bool:
    return init._ephemeral is not None


def test_sessions_take_the_injected_clocks_and_the_ephemeral_key_is_erased(
    parties: Parties,
) -> None:
    init = HandshakeInitiator(parties.sensor, parties.gateway.public)
    assert not _holds_ephemeral(init)
    frame = init.start(now=T0)
    assert parse_init(frame).timestamp_ms == int(T0 * 1000)
    result = _responder(parties).respond(frame, now=T0, monotonic=42.0)
    assert result.session.established_at == 42.0
    assert _holds_ephemeral(init)
    # response: type, version, suite, "gw-01" with its length, then the responder's random
    assert parse_response(result.response).random == result.response[10:26]
    session = init.receive(result.response, now=43.0)
    assert session.established_at == 43.0
    assert session.peer is parties.gateway.public
    assert result.session.peer == parties.sensor.public
    assert result.session.role is SessionRole.RESPONDER
    assert session.role is SessionRole.INITIATOR
    assert not _holds_ephemeral(init)
    failed = HandshakeInitiator(parties.sensor, parties.gateway.public)
    failed.start(now=T0)
    _raises(DecodeError, ErrorReason.TRUNCATED, failed.receive, b"\x02")
    assert not _holds_ephemeral(failed)
