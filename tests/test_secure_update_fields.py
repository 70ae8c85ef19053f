"""The gateway's secure-round session frame by frame, without a broker: each refusal reported
with the frame's kind, its exact reason and detail; which frames finish the session; who may
take part; and the vector a gateway encodes, weighted by its sample count and rebuilt by hand
from the clip, the cap and the quantisation scale."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import numpy.typing as npt
import pytest

from aggregator.secure_round import plan_round
from gateway.secure_update import (
    Rejected,
    SecureRoundRefusedError,
    SecureUpdateSession,
    join_round,
)
from pqlink import Identity, Registry, Role
from pqlink._secagg_codec import encode_bundle
from pqlink.secagg import AggregateResult, SecAggServer, decode_bundle, peek_header
from tests import secagg_harness as h
from wire.fl import RoundSettings
from wire.secagg import SecAggFrame, SecAggKind, SecureRoundAnnouncement

#: No noise: a gateway's encoded vector is its quantised update alone.
SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=12)
DIMENSION = 4
UP = [SecAggKind.ADVERT, SecAggKind.SHARE_KEYS, SecAggKind.MASKED_INPUT, SecAggKind.UNMASK_RESPONSE]

Parties = tuple[Identity, list[Identity], Registry]


@pytest.fixture(scope="module")
def parties() -> Parties:
    return h.enrolled_parties(3)


def _exactly(text: str) -> str:
    return "^" + re.escape(text) + "$"


def _plan(gws: list[Identity], round_: int = 6, weight_cap: int = 0) -> SecureRoundAnnouncement:
    return plan_round(round_, [g.name for g in gws], SETTINGS, DIMENSION, weight_cap=weight_cap)


def _within_rounding(encoded: npt.NDArray[np.uint64], real: list[float], scale: float) -> None:
    """Every coordinate is the real value times the scale, rounded down or up (no noise)."""
    assert encoded.dtype == np.uint64
    assert encoded.shape == (len(real),)
    for got, value in zip(encoded.tolist(), real, strict=True):
        assert math.floor(value * scale - 1e-9) <= got <= math.ceil(value * scale + 1e-9)


# ---- who takes part --------------------------------------------------------------------


def test_join_round_gives_the_round_configuration_and_this_gateways_id(parties: Parties) -> None:
    _, gws, registry = parties
    a = _plan(gws)
    config, my_id = join_round(a, gws[1], registry)
    assert config == a.round_config()
    assert my_id == 2  # ids 1..n in name order: gw0, gw1, gw2


def test_an_announcement_with_parameters_that_do_not_fit_is_refused_with_the_check(
    parties: Parties,
) -> None:
    _, gws, registry = parties
    bad = dataclasses.replace(_plan(gws), threshold=5)
    with pytest.raises(
        SecureRoundRefusedError, match=_exactly("announcement: threshold 5 outside 1..degree")
    ):
        join_round(bad, gws[0], registry)


def test_a_participant_enrolled_in_another_role_or_revoked_is_not_a_gateway() -> None:
    gws = [Identity.generate(f"gw{i}", Role.GATEWAY) for i in range(2)]
    other = Identity.generate("gw2", Role.AGGREGATOR)
    gone = Identity.generate("gw3", Role.GATEWAY)
    registry = Registry()
    for identity in (*gws, other, gone):
        registry.enroll(identity.public)
    registry.revoke("gw3")
    a = plan_round(1, ["gw0", "gw1", "gw2", "gw3"], SETTINGS, DIMENSION)
    message = _exactly("participants not enrolled as gateways: ['gw2', 'gw3']")
    with pytest.raises(SecureRoundRefusedError, match=message):
        join_round(a, gws[0], registry)
    with pytest.raises(SecureRoundRefusedError, match=message):
        SecureUpdateSession(a, gws[0], registry)
    assert join_round(plan_round(1, ["gw0", "gw1"], SETTINGS, DIMENSION), gws[0], registry)[1] == 1


# ---- frames that do not move the round -------------------------------------------------


@pytest.mark.parametrize("round_", [5, 7])
def test_a_frame_of_another_round_is_refused_naming_its_round(
    parties: Parties, round_: int
) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws, 6), gws[0], registry)
    s.start()
    step = s.handle(SecAggFrame(SecAggKind.SHARES, round_, b""))
    assert step.rejected == [Rejected(SecAggKind.SHARES, "wrong_round", f"round {round_}")]
    assert (step.outgoing, step.events, step.finished) == ([], [], False)


@pytest.mark.parametrize("kind", UP)
def test_a_gateway_to_coordinator_frame_is_refused_as_the_wrong_direction(
    parties: Parties, kind: SecAggKind
) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    s.start()
    step = s.handle(SecAggFrame(kind, 6, b""))
    assert step.rejected == [Rejected(kind, "wrong_direction", kind.name)]
    assert (step.outgoing, step.finished) == ([], False)


def test_an_aborted_round_finishes_the_session_without_a_word(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    s.start()
    step = s.handle(SecAggFrame(SecAggKind.ABORTED, 6, b""))
    assert (step.outgoing, step.rejected, step.finished) == ([], [], True)


def test_shares_without_an_update_to_contribute_stop_the_session(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    assert s.encoded is None
    s.start()
    step = s.handle(SecAggFrame(SecAggKind.SHARES, 6, encode_bundle(6, [])))
    assert step.rejected == [
        Rejected(SecAggKind.SHARES, "SecureRoundRefusedError", "no update to contribute")
    ]
    assert (step.outgoing, step.finished) == ([], True)


def test_a_bundle_of_another_round_inside_the_frame_stops_the_session(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    s.start()
    step = s.handle(SecAggFrame(SecAggKind.ADVERTS, 6, encode_bundle(7, [])))
    assert step.rejected == [
        Rejected(SecAggKind.ADVERTS, "SecureRoundRefusedError", "bundle of round 7")
    ]
    assert (step.outgoing, step.finished) == ([], True)


# ---- a whole round with refused items --------------------------------------------------


def test_refused_items_are_reported_one_by_one_and_the_round_still_sums(
    parties: Parties,
) -> None:
    """gw0 gets a repeated and a truncated advert, then a repeated keys-and-shares message:
    each is reported with the bundle's kind, the error's reason and its message; the stage
    goes on, the honest unmasking request finishes every session and the sum is exact."""
    _, gws, registry = parties
    a = _plan(gws)
    sessions = {g.name: SecureUpdateSession(a, g, registry) for g in gws}
    updates = {"gw0": [0.5, 0.0, 0.25, 0.0], "gw1": [0.0, 0.5, 0.0, 0.0], "gw2": [0.125] * 4}
    for name, s in sessions.items():
        s.set_update(updates[name], samples=10)
    keys = {a.participants[g.name]: g.public.verify_key for g in gws}
    server = SecAggServer(a.round_config(), keys)
    for s in sessions.values():
        server.receive_advert(s.client_id, s.start().body)
    bundles = server.close_adverts()
    assert isinstance(bundles, dict)
    for s in sessions.values():
        _, items = decode_bundle(bundles[s.client_id])
        extra = [items[0], b"\x00"] if s.client_id == 1 else []
        step = s.handle(SecAggFrame(SecAggKind.ADVERTS, 6, encode_bundle(6, [*items, *extra])))
        if s.client_id == 1:
            first = peek_header(items[0]).sender
            assert step.rejected[0] == Rejected(
                SecAggKind.ADVERTS, "replayed", f"second message from {first} in this stage"
            )
            assert [(r.kind, r.reason) for r in step.rejected[1:]] == [
                (SecAggKind.ADVERTS, "malformed")
            ]
            assert step.rejected[1].detail.startswith("advert: truncated")
        else:
            assert step.rejected == []
        assert [(f.kind, f.round) for f in step.outgoing] == [(SecAggKind.SHARE_KEYS, 6)]
        assert not step.finished
        server.receive_key_shares(s.client_id, step.outgoing[0].body)
    shares = server.close_key_shares()
    assert isinstance(shares, dict)
    for s in sessions.values():
        _, items = decode_bundle(shares[s.client_id])
        extra = [items[-1]] if s.client_id == 1 else []
        step = s.handle(SecAggFrame(SecAggKind.SHARES, 6, encode_bundle(6, [*items, *extra])))
        if s.client_id == 1:
            last = peek_header(items[-1]).sender
            assert step.rejected == [
                Rejected(SecAggKind.SHARES, "replayed", f"second keys and shares from {last}")
            ]
        else:
            assert step.rejected == []
        assert [(f.kind, f.round) for f in step.outgoing] == [(SecAggKind.MASKED_INPUT, 6)]
        assert not step.finished
        server.receive_masked_input(s.client_id, step.outgoing[0].body)
    request = server.close_inputs()
    assert isinstance(request, bytes)
    for s in sessions.values():
        step = s.handle(SecAggFrame(SecAggKind.UNMASK_REQUEST, 6, request))
        assert step.rejected == []
        assert [(f.kind, f.round) for f in step.outgoing] == [(SecAggKind.UNMASK_RESPONSE, 6)]
        assert step.finished
        server.receive_unmask_response(s.client_id, step.outgoing[0].body)
    result = server.finish()
    assert isinstance(result, AggregateResult)
    total = [sum(u[i] for u in updates.values()) for i in range(DIMENSION)]
    # three stochastic roundings at most one unit each, at 4095 units per clip of 1.0
    signed = result.total.astype(np.int64)
    assert all(abs(int(got) - v * 4095) < 3 for got, v in zip(signed, total, strict=True))


# ---- the encoded update ----------------------------------------------------------------


def test_an_unweighted_update_is_quantised_at_its_own_clip(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    s.set_update([0.5, 0.25, 0.0, 0.125])
    assert s.encoded is not None
    _within_rounding(s.encoded, [0.5, 0.25, 0.0, 0.125], 4095 / 1.0)


def test_an_update_of_any_shape_is_taken_flat(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    s.set_update(np.array([[0.5, 0.25], [0.0, 0.125]]))
    assert s.encoded is not None
    _within_rounding(s.encoded, [0.5, 0.25, 0.0, 0.125], 4095 / 1.0)


def test_a_weighted_update_is_scaled_by_its_capped_count_with_the_weight_appended(
    parties: Parties,
) -> None:
    """Cap 4, 2 samples: weight 1/2; the encoding clips at sqrt(2) C, so 4095 units are
    sqrt(2); the last coordinate is the weight times the clip."""
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws, weight_cap=4), gws[0], registry)
    s.set_update([0.5, 0.0, 0.25, 0.0], samples=2)
    assert s.encoded is not None
    _within_rounding(s.encoded, [0.25, 0.0, 0.125, 0.0, 0.5], 4095 / math.sqrt(2.0))


def test_a_weighted_update_above_the_clip_and_the_cap_is_clipped_and_weighs_one(
    parties: Parties,
) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws, weight_cap=4), gws[0], registry)
    s.set_update([3.0, 4.0, 0.0, 0.0], samples=9)  # norm 5 -> (0.6, 0.8), weight 1
    assert s.encoded is not None
    _within_rounding(s.encoded, [0.6, 0.8, 0.0, 0.0, 1.0], 4095 / math.sqrt(2.0))


def test_a_weighted_update_without_a_sample_count_contributes_nothing(parties: Parties) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws, weight_cap=4), gws[0], registry)
    s.set_update([0.5, 0.5, 0.5, 0.5])
    assert s.encoded is not None
    assert s.encoded.tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("weight_cap", [0, 4])
@pytest.mark.parametrize("size", [DIMENSION - 1, DIMENSION + 1])
def test_an_update_of_the_wrong_size_is_refused_against_the_model_dimension(
    parties: Parties, weight_cap: int, size: int
) -> None:
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws, weight_cap=weight_cap), gws[0], registry)
    with pytest.raises(
        SecureRoundRefusedError, match=_exactly(f"update of {size} values, round of {DIMENSION}")
    ):
        s.set_update(np.zeros(size), samples=1)
    assert s.encoded is None


def test_a_list_holding_a_complex_value_is_refused_before_anything_is_encoded(
    parties: Parties,
) -> None:
    """Values are read as float64 at once: a complex number in a plain list cannot be one."""
    _, gws, registry = parties
    s = SecureUpdateSession(_plan(gws), gws[0], registry)
    with pytest.raises(TypeError, match="complex"):
        s.set_update([0.5 + 0.5j, 0.0, 0.0, 0.0])
    assert s.encoded is None
