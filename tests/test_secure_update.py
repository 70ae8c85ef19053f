"""The gateway's secure-round session and the coordinator's SecureRound between real sealed
envelopes, without a broker: replayed and foreign messages refused with their reason, a
request for both kinds of share refused and logged, unknown participants refused."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.secure_round import SecureRound, plan_round
from gateway.secure_update import SecureRoundRefusedError, SecureUpdateSession
from pqlink import ContentType, Identity, Registry, Role, seal_envelope
from pqlink._secagg_codec import UnmaskRequest
from pqlink.secagg import AggregateResult, SecAggClient
from pqlink.signed_batch import open_batch_item
from tests import secagg_harness as h
from wire.fl import RoundSettings
from wire.reasons import Reason
from wire.secagg import SecAggFrame, SecAggKind

SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=12)


@pytest.fixture(scope="module")
def parties() -> tuple[Identity, list[Identity], Registry]:
    return h.enrolled_parties(3)


def _up(gw: Identity, agg: Identity, frame: SecAggFrame) -> bytes:
    return seal_envelope(
        gw, [agg.public], frame.encode(), content_type=ContentType.SECAGG, round=frame.round
    )


def test_a_round_by_hand_with_hostile_messages_refused(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    agg, gws, registry = parties
    a = plan_round(1, [g.name for g in gws], SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    sessions = {g.name: SecureUpdateSession(a, g, registry) for g in gws}
    by_name = {g.name: g for g in gws}
    rng = np.random.default_rng(5)
    for s in sessions.values():
        s.set_update(rng.normal(0, 0.3, 16))
    first = _up(gws[0], agg, sessions[gws[0].name].start())
    secure.receive(first)
    secure.receive(first)  # replayed
    for g in gws[1:]:
        secure.receive(_up(g, agg, sessions[g.name].start()))
    outsider = Identity.generate("outsider", Role.GATEWAY)
    secure.receive(_up(outsider, agg, SecAggFrame(SecAggKind.ADVERT, 1, b"x")))  # unenrolled
    secure.receive(_up(gws[1], agg, SecAggFrame(SecAggKind.SHARES, 1, b"x")))  # wrong direction
    assert [(w, r) for w, r, _ in secure.report.rejections] == [
        (gws[0].name, Reason.REPLAY),
        ("-", Reason.UNENROLLED),
        (gws[1].name, Reason.UNEXPECTED_SENDER),
    ]
    server = secure.server

    def deliver(bundles: dict[int, bytes], kind: SecAggKind) -> list[tuple[str, SecAggFrame]]:
        out = []
        for u, body in bundles.items():
            step = sessions[a.name_of(u)].handle(SecAggFrame(kind, 1, body))
            assert step.rejected == []
            out += [(a.name_of(u), f) for f in step.outgoing]
        return out

    adverts = server.close_adverts()
    assert isinstance(adverts, dict)
    for name, frame in deliver(adverts, SecAggKind.ADVERTS):
        secure.receive(_up(by_name[name], agg, frame))
    shares = server.close_key_shares()
    assert isinstance(shares, dict)
    for name, frame in deliver(shares, SecAggKind.SHARES):
        assert frame.kind is SecAggKind.MASKED_INPUT
        server.receive_masked_input(a.participants[name], frame.body)
    # an active coordinator asks gw0 for both kinds of share of gw1: refused, and logged
    u1 = a.participants[gws[1].name]
    both = UnmaskRequest(1, tuple(sorted(a.participants.values())), (u1,)).to_bytes()
    step = sessions[gws[0].name].handle(SecAggFrame(SecAggKind.UNMASK_REQUEST, 1, both))
    assert step.outgoing == []
    assert step.finished
    assert [r.reason for r in step.rejected] == ["unmask_refused"]
    assert [e.name for e in step.events] == ["secagg_unmask_refused"]
    assert dict(step.events[0].fields)["reason"] == "both_kinds_requested"
    # the same session refuses a second (even honest) request: one request per round
    honest = server.close_inputs()
    assert isinstance(honest, bytes)
    again = sessions[gws[0].name].handle(SecAggFrame(SecAggKind.UNMASK_REQUEST, 1, honest))
    assert [r.reason for r in again.rejected] == ["unmask_refused"]


def test_a_round_naming_an_unknown_gateway_is_refused(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    _, gws, registry = parties
    a = plan_round(1, [g.name for g in gws] + ["stranger"], SETTINGS, 16)
    with pytest.raises(SecureRoundRefusedError, match="stranger"):
        SecureUpdateSession(a, gws[0], registry)
    b = plan_round(1, [g.name for g in gws[1:]], SETTINGS, 16)
    with pytest.raises(SecureRoundRefusedError, match="not a participant"):
        SecureUpdateSession(b, gws[0], registry)


def test_frames_of_another_round_are_refused_by_the_session(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    _, gws, registry = parties
    a = plan_round(4, [g.name for g in gws], SETTINGS, 16)
    s = SecureUpdateSession(a, gws[0], registry)
    s.start()
    step = s.handle(SecAggFrame(SecAggKind.ADVERTS, 3, b""))
    assert [r.reason for r in step.rejected] == ["wrong_round"]
    assert not step.finished


def test_bare_adverts_and_ciphertext_lists_are_checked_by_their_own_signature(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    """Adverts and ciphertext lists travel without an envelope: the coordinator takes the
    sender from the message and its own ML-DSA signature must verify under that sender's key;
    only those two kinds may come bare. The round completes with the exact sum."""
    agg, gws, registry = parties
    a = plan_round(2, [g.name for g in gws], SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    sessions = {g.name: SecureUpdateSession(a, g, registry) for g in gws}
    by_name = {g.name: g for g in gws}
    rng = np.random.default_rng(9)
    for s in sessions.values():
        s.set_update(rng.normal(0, 0.3, 16))
    adverts = {g.name: sessions[g.name].start() for g in gws}
    config, id1 = a.round_config(), a.participants[gws[1].name]
    impostor = Identity.generate("impostor", Role.GATEWAY).signing_key
    forged = SecAggClient(config, id1, impostor, {}).advertise()  # claims gw1, not its key
    stale = SecAggClient(
        plan_round(1, [g.name for g in gws], SETTINGS, 16).round_config(),
        id1,
        gws[1].signing_key,
        {},
    ).advertise()
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 2, forged).encode())
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 1, stale).encode())
    secure.receive(SecAggFrame(SecAggKind.UNMASK_RESPONSE, 2, b"x").encode())  # must be sealed
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 2, b"\x00").encode())  # truncated
    for f in adverts.values():
        secure.receive(f.encode())
    secure.receive(adverts[gws[0].name].encode())  # replayed
    assert [(w, r) for w, r, _ in secure.report.rejections] == [
        (gws[1].name, Reason.FORGED),
        ("-", Reason.WRONG_ROUND),
        ("-", Reason.WRONG_TYPE),
        ("-", Reason.MALFORMED),
        (gws[0].name, Reason.REPLAY),
    ]
    server = secure.server
    assert server.heard == 3
    coordinator = Registry()
    coordinator.enroll(agg.public)

    def deliver(kind: SecAggKind, bundles: dict[int, bytes]) -> list[SecAggFrame]:
        """Through the real signed batch, one signature for the stage."""
        frames = secure.sign_stage(kind, bundles)
        out = []
        for name, data in frames.items():
            item = open_batch_item(data, name, coordinator)
            step = sessions[name].handle(SecAggFrame.decode(item.payload))
            assert step.rejected == []
            out += step.outgoing
        return out

    bundles = server.close_adverts()
    assert isinstance(bundles, dict)
    for frame in deliver(SecAggKind.ADVERTS, bundles):
        assert frame.kind is SecAggKind.SHARE_KEYS
        secure.receive(frame.encode())  # bare: signed by its sender inside
    assert server.heard == 3
    assert len(secure.report.rejections) == 5
    shares = server.close_key_shares()
    assert isinstance(shares, dict)
    for frame in deliver(SecAggKind.SHARES, shares):
        u = int.from_bytes(frame.body[10:12], "big")
        server.receive_masked_input(u, frame.body)
    request = server.close_inputs()
    assert isinstance(request, bytes)
    for frame in deliver(SecAggKind.UNMASK_REQUEST, dict.fromkeys(server.survivors, request)):
        secure.receive(
            _up(by_name[a.name_of(int.from_bytes(frame.body[10:12], "big"))], agg, frame)
        )
    result = server.finish()
    assert isinstance(result, AggregateResult)
    encoded = [s.encoded for s in sessions.values() if s.encoded is not None]
    assert len(encoded) == 3
    want = np.sum(encoded, axis=0, dtype=np.uint64)
    assert np.array_equal(result.total, want & np.uint64((1 << a.modulus_bits) - 1))
