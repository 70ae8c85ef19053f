"""Adverts sent ahead of their round, without a broker: kept only for the round they name,
refused with a reason when forged, repeated or for another round, expired when that round
never happens; a client round on keys made ahead still sums exactly."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.secure_round import SecureRound, plan_round
from gateway.secure_update import SecureRoundRefusedError, SecureUpdateSession
from pqlink import Identity, Registry, Role
from pqlink.secagg import (
    AggregateResult,
    ForgedMessageError,
    ReplayedMessageError,
    RoundKeys,
    SecAggClient,
    SecAggServer,
    SecAggStateError,
    WrongRoundError,
    check_advert,
)
from tests import secagg_harness as h
from wire.fl import RoundSettings
from wire.reasons import Reason
from wire.secagg import AnnouncedAdverts, SecAggFrame, SecAggKind

SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=12)


@pytest.fixture(scope="module")
def parties() -> tuple[Identity, list[Identity], Registry]:
    return h.enrolled_parties(3)


def test_a_round_on_keys_made_ahead_sums_exactly() -> None:
    config = h.make_config(5, threshold=2, min_survivors=3, dimension=32)
    keys = h.verify_keys(config.participants)
    server = SecAggServer(config, keys)
    clients = {}
    for u in config.participants:
        ahead = RoundKeys(config.round_id, u, h.identity(u))  # made while idle
        fresh = RoundKeys(config.round_id, u, h.identity(u), config.graph_seed)
        # each kind of advert only for its own kind of opening
        with pytest.raises(
            WrongRoundError,
            match=rf"^advert of {u} made for a full setup: not this opening's kind$",
        ):
            server.receive_advert(u, fresh.advert, ahead=True)
        with pytest.raises(
            WrongRoundError, match=rf"^advert of {u} made ahead: not this opening's kind$"
        ):
            server.receive_advert(u, ahead.advert)
        server.receive_advert(u, ahead.advert, ahead=True)
        clients[u] = SecAggClient(config, u, h.identity(u), keys, advertised=ahead)
    r = h.Round(config, server, clients)
    bundles = server.close_adverts()
    assert isinstance(bundles, dict)
    h.deliver(bundles, {u: c.receive_advert for u, c in clients.items()})
    for u, c in clients.items():
        server.receive_key_shares(u, c.key_shares())
    fwd = server.close_key_shares()
    assert isinstance(fwd, dict)
    h.deliver(fwd, {u: c.receive_key_shares for u, c in clients.items()})
    ring, plain = h.random_inputs(config, np.random.default_rng(4))
    result = h.finish(r, ring, dropped=frozenset({2}))
    assert isinstance(result, AggregateResult)
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in (1, 3, 4, 5)))


def test_keys_made_for_another_round_or_client_are_refused() -> None:
    config = h.make_config(3, round_id=7, threshold=1, min_survivors=2)
    keys = h.verify_keys(config.participants)
    for round_id, owner in ((6, 1), (8, 1), (7, 2)):
        ahead = RoundKeys(round_id, owner, h.identity(owner))
        with pytest.raises(SecAggStateError, match="keys made for"):
            SecAggClient(config, 1, h.identity(1), keys, advertised=ahead)
    client = SecAggClient(config, 1, h.identity(1), keys, advertised=RoundKeys(7, 1, h.identity(1)))
    with pytest.raises(SecAggStateError, match="expected start"):
        client.advertise()  # its advert went out ahead: it never advertises twice


def test_an_advert_ahead_is_checked_for_its_round_and_signature() -> None:
    ahead = RoundKeys(8, 2, h.identity(2))
    assert check_advert(ahead.advert, 8, h.identity(2).public_key()) == 2
    with pytest.raises(WrongRoundError):
        check_advert(ahead.advert, 9, h.identity(2).public_key())
    with pytest.raises(ForgedMessageError):
        check_advert(ahead.advert, 8, h.identity(3).public_key())
    bound = RoundKeys(8, 2, h.identity(2), b"\x42" * 32)
    with pytest.raises(WrongRoundError, match="made for a full setup"):
        check_advert(bound.advert, 8, h.identity(2).public_key())


def test_kept_adverts_serve_only_their_round() -> None:
    store = AdvertsAhead()
    a, b = RoundKeys(6, 1, h.identity(1)), RoundKeys(6, 2, h.identity(2))
    store.offer(6, "gw1", h.identity(1).public_key(), a.advert)
    with pytest.raises(ReplayedMessageError):
        store.offer(6, "gw1", h.identity(1).public_key(), a.advert)
    with pytest.raises(ForgedMessageError):
        store.offer(6, "gw2", h.identity(1).public_key(), b.advert)
    store.offer(6, "gw2", h.identity(2).public_key(), b.advert)
    assert store.missing({"gw1": 1, "gw2": 2, "gw3": 3}) == 1
    # round 6 skipped: round 7 finds nothing, and nothing of round 6 stays behind
    assert store.take(7, {"gw1": 1, "gw2": 2}) is None
    assert (len(store), store.round) == (0, -1)
    # complete, but a participant's id changed: the full setup, nothing kept either
    store.offer(6, "gw1", h.identity(1).public_key(), a.advert)
    store.offer(6, "gw2", h.identity(2).public_key(), b.advert)
    assert store.take(6, {"gw1": 2, "gw2": 1}) is None
    assert len(store) == 0
    store.offer(6, "gw1", h.identity(1).public_key(), a.advert)
    store.offer(6, "gw2", h.identity(2).public_key(), b.advert)
    assert store.take(6, {"gw1": 1, "gw2": 2}) == {1: a.advert, 2: b.advert}
    assert store.take(6, {"gw1": 1, "gw2": 2}) is None  # keys serve one round


def test_the_coordinator_keeps_next_round_adverts_and_refuses_others(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    agg, gws, registry = parties
    a = plan_round(5, [g.name for g in gws], SETTINGS, 16)
    store = AdvertsAhead()
    secure = SecureRound(a, agg, registry, ahead=store)
    sessions = {g.name: SecureUpdateSession(a, g, registry) for g in gws}
    made = {name: s.keys_ahead() for name, s in sessions.items()}
    for _, frame in made.values():
        assert frame.round == 6
        secure.receive(frame.encode())
    assert (len(store), store.round) == (3, 6)
    assert secure.server.heard == 0  # not this round's adverts
    # for round 7 (two ahead), or forged: refused with their reason, none kept
    u0 = a.participants[gws[0].name]
    skipped = RoundKeys(7, u0, gws[0].signing_key)
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 7, skipped.advert).encode())
    impostor = Identity.generate("impostor", Role.GATEWAY).signing_key
    forged = RoundKeys(6, u0, impostor)
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 6, forged.advert).encode())
    secure.receive(made[gws[1].name][1].encode())  # the same advert again
    assert [(w, r) for w, r, _ in secure.report.rejections] == [
        ("-", Reason.WRONG_ROUND),
        (gws[0].name, Reason.FORGED),
        (gws[1].name, Reason.REPLAY),
    ]
    assert len(store) == 3
    # round 6 never happens: round 7's opening finds them expired, and their adverts are
    # refused by round 7 itself
    b = plan_round(7, [g.name for g in gws], SETTINGS, 16)
    assert store.take(7, b.participants) is None
    later = SecureRound(b, agg, registry, ahead=store)
    later.receive(made[gws[2].name][1].encode())
    assert [r for _, r, _ in later.report.rejections] == [Reason.WRONG_ROUND]
    assert later.server.heard == 0


def test_a_gateway_without_keys_for_the_round_refuses_a_pipelined_opening(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    _, gws, registry = parties
    a = plan_round(3, [g.name for g in gws], SETTINGS, 16)
    made = RoundKeys(2, a.participants[gws[0].name], gws[0].signing_key)  # for round 2
    with pytest.raises(SecureRoundRefusedError, match="keys made for"):
        SecureUpdateSession(a, gws[0], registry, advertised=made)
    opening = AnnouncedAdverts(a, b"bundle")
    assert AnnouncedAdverts.decode(opening.encode()) == opening


def test_a_stale_advert_made_ahead_cannot_stand_in_for_a_fresh_one(
    parties: tuple[Identity, list[Identity], Registry],
) -> None:
    # the round opens with the full setup while an advert made ahead for it is still queued:
    # refused, and the gateway's fresh advert (bound to this announcement) is taken
    agg, gws, registry = parties
    a = plan_round(4, [g.name for g in gws], SETTINGS, 16)
    secure = SecureRound(a, agg, registry, ahead=AdvertsAhead())
    u0 = a.participants[gws[0].name]
    stale = RoundKeys(4, u0, gws[0].signing_key)
    secure.receive(SecAggFrame(SecAggKind.ADVERT, 4, stale.advert).encode())
    assert [(w, r) for w, r, _ in secure.report.rejections] == [(gws[0].name, Reason.WRONG_ROUND)]
    assert secure.server.heard == 0
    fresh = SecureUpdateSession(a, gws[0], registry).start()
    secure.receive(fresh.encode())
    assert secure.server.heard == 1


def test_a_fresh_store_expects_no_round_and_holds_nothing() -> None:
    store = AdvertsAhead()
    assert (len(store), store.round) == (0, -1)
    assert store.missing({"gw1": 1, "gw2": 2}) == 2


def test_a_round_taken_leaves_nothing_kept_or_expected() -> None:
    store = AdvertsAhead()
    a = RoundKeys(6, 1, h.identity(1))
    store.offer(6, "gw1", h.identity(1).public_key(), a.advert)
    assert (len(store), store.round) == (1, 6)
    assert store.take(6, {"gw1": 1}) == {1: a.advert}
    assert (len(store), store.round) == (0, -1)


def test_expired_adverts_are_logged_with_both_rounds_and_their_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="aggregator.adverts_ahead")
    store = AdvertsAhead()
    store.expire()  # nothing kept: nothing to say
    store.offer(6, "gw1", h.identity(1).public_key(), RoundKeys(6, 1, h.identity(1)).advert)
    store.offer(6, "gw2", h.identity(2).public_key(), RoundKeys(6, 2, h.identity(2)).advert)
    store.expect(6)  # the round they were made for: kept
    assert (len(store), caplog.messages) == (2, [])
    store.expect(8)  # round 6 never opened: dropped, and round 8's are awaited
    assert caplog.messages == ["secagg_adverts_expired round=8 for_round=6 adverts=2"]
    assert (len(store), store.round) == (0, 8)
    store.offer(8, "gw1", h.identity(1).public_key(), RoundKeys(8, 1, h.identity(1)).advert)
    store.expire()
    assert caplog.messages[1:] == ["secagg_adverts_expired round=-1 for_round=8 adverts=1"]
    assert (len(store), store.round) == (0, -1)
