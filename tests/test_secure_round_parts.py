"""The coordinator's secure round piece by piece, without a broker: the plan of a round (ids,
threshold, noise and ring width, derived by hand), frames sealed to the named gateways only,
every refusal recorded with its gateway, reason and detail, adverts sent ahead taken or
refused before the opening, masked partial sums checked against the announcement, a fresh
setup after a failed pipelined opening."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pytest

from aggregator.adverts_ahead import AdvertsAhead
from aggregator.masked import MaskedPartial
from aggregator.partials import Rejection
from aggregator.secure_round import SecureRound, plan_round
from gateway.secure_update import SecureUpdateSession
from pqlink import ContentType, Identity, PqlinkError, Registry, Role, seal_envelope
from pqlink.secagg import AggregateResult, RoundKeys, open_masked_input
from pqlink.signed_batch import open_batch_item
from tests import secagg_harness as h
from wire.envelopes import SealedCodec
from wire.fl import RoundSettings
from wire.reasons import Reason
from wire.secagg import SecAggFrame, SecAggKind, SecureRoundAnnouncement

SETTINGS = RoundSettings(clip_norm=1.0, secure_aggregation=True, precision_bits=12)
NOISY = RoundSettings(
    clip_norm=1.0, noise_multiplier=1.9, secure_aggregation=True, precision_bits=12
)
Parties = tuple[Identity, list[Identity], Registry]


@pytest.fixture(scope="module")
def parties() -> Parties:
    return h.enrolled_parties(3)


def _names(parties: Parties) -> list[str]:
    return [g.name for g in parties[1]]


def _up(
    gw: Identity,
    agg: Identity,
    frame: SecAggFrame,
    *,
    content_type: ContentType = ContentType.SECAGG,
    round_: int | None = None,
) -> bytes:
    return seal_envelope(
        gw,
        [agg.public],
        frame.encode(),
        content_type=content_type,
        round=frame.round if round_ is None else round_,
    )


def _ring_bits(n: int, b: int, sigma: float, d: int) -> int:
    """The ring width of pqlink's rule, from its statement: n inputs of magnitude at most
    2^b - 1 plus noise of deviation sigma sqrt(n), bounded by tau sigma sqrt(n) with
    tau = sqrt(2 ln(2 d 2^30)) on all d coordinates; k = ceil(log2(2 M + 1))."""
    tau = math.sqrt(2.0 * (math.log(2.0 * d) + 30 * math.log(2.0)))
    bound = n * (2**b - 1) + math.ceil(tau * sigma * math.sqrt(n))
    return math.ceil(math.log2(2 * bound + 1))


# --- plan_round ----------------------------------------------------------------------------


def test_a_plan_numbers_the_gateways_in_name_order_and_sizes_the_ring_for_their_sum() -> None:
    a = plan_round(4, ["gw2", "gw0", "gw1", "gw0"], SETTINGS, 16)
    assert a.participants == {"gw0": 1, "gw1": 2, "gw2": 3}
    assert (a.round, a.dimension, a.clip, a.precision_bits) == (4, 16, 1.0, 12)
    # three gateways: the complete graph, degree 2, threshold 2 // 2 + 1 = 2, and 3 survivors
    assert (a.degree, a.threshold, a.min_survivors) == (2, 2, 3)
    # no noise: 3 inputs of at most 4095 sum within +-12285, 24571 residues need 15 bits
    assert (a.noise_std, a.modulus_bits) == (0.0, 15)
    assert (a.weight_cap, a.weighting, a.encoded_dimension) == (0, None, 16)
    assert len(a.graph_seed) == 32
    assert plan_round(4, ["gw0", "gw1", "gw2"], SETTINGS, 16).graph_seed != a.graph_seed


def test_a_round_needs_one_survivor_more_than_the_threshold() -> None:
    names = [f"gw{i}" for i in range(5)]
    a = plan_round(1, names, SETTINGS, 16)
    # five gateways: complete graph of degree 4, threshold 4 // 2 + 1 = 3, survivors 3 + 1
    assert (a.degree, a.threshold, a.min_survivors) == (4, 3, 4)
    assert a.participants == {name: i + 1 for i, name in enumerate(names)}
    # five inputs of at most 4095: +-20475, 40951 residues need 16 bits
    assert a.modulus_bits == 16


def test_noise_per_gateway_covers_the_sum_of_the_fewest_survivors() -> None:
    a = plan_round(1, ["gw0", "gw1", "gw2"], NOISY, 16)
    # sensitivity: clip * (2^12 - 1) / clip + sqrt(16) = 4099 quantisation units; any 3
    # survivors together carry z * 4099, so each adds z * 4099 / sqrt(3)
    sigma = 1.9 * 4099 / math.sqrt(3)
    assert a.noise_std == pytest.approx(sigma, rel=1e-12)
    # 12285 + ceil(6.9657 * 4496.46 * sqrt(3)) = 66535: 133071 residues need 18 bits (over a
    # single coordinate tau would be 6.5556 and 17 bits would do; without noise 15)
    assert a.modulus_bits == _ring_bits(3, 12, sigma, 16) == 18
    assert a.round_config().encoding.noise_std == a.noise_std


def test_a_weighted_round_masks_one_more_coordinate_and_noises_it_too() -> None:
    a = plan_round(2, ["gw0", "gw1", "gw2"], NOISY, 15, weight_cap=5)
    assert (a.weight_cap, a.dimension, a.encoded_dimension) == (5, 15, 16)
    assert a.encoded_clip == pytest.approx(math.sqrt(2.0))
    # clip sqrt(2) C scaled to 4095, plus sqrt(16): the same 4099 as above
    sigma = 1.9 * 4099 / math.sqrt(3)
    assert a.noise_std == pytest.approx(sigma, rel=1e-12)
    assert a.modulus_bits == 18


# --- SecureRound: the report, sealing, a restarted setup ----------------------------------


def test_a_round_reports_under_its_own_announcement(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(3, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    assert secure.report.announcement is a
    assert (secure.report.outcome, secure.report.rejections) == (None, [])


def test_a_sealed_frame_opens_only_for_the_gateways_it_names(parties: Parties) -> None:
    agg, gws, registry = parties
    a = plan_round(3, _names(parties), SETTINGS, 16)
    sealed = SecureRound(a, agg, registry).seal(
        [gws[0].name, gws[2].name], SecAggKind.UNMASK_REQUEST, b"request"
    )
    coordinator = Registry()
    coordinator.enroll(agg.public)
    for gw in (gws[0], gws[2]):
        opened = SealedCodec().open(sealed, gw, coordinator)
        assert (opened.sender, opened.content_type, opened.round) == (
            "aggregator",
            ContentType.SECAGG,
            3,
        )
        assert SecAggFrame.decode(opened.payload) == SecAggFrame(
            SecAggKind.UNMASK_REQUEST, 3, b"request"
        )
    with pytest.raises(PqlinkError, match="not addressed to 'gw1'"):
        SealedCodec().open(sealed, gws[1], coordinator)


def test_a_restarted_setup_forgets_the_adverts_taken_so_far(parties: Parties) -> None:
    agg, gws, registry = parties
    a = plan_round(3, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    sessions = [SecureUpdateSession(a, g, registry) for g in gws]
    first = sessions[0].start().encode()
    secure.receive(first)
    secure.receive(sessions[1].start().encode())
    before = secure.server
    assert before.heard == 2
    secure.restart_setup()
    assert secure.server is not before
    assert secure.server.config == a.round_config()
    assert (secure.server.heard, secure.server.awaited) == (0, 3)
    secure.receive(first)  # not a replay to the fresh server
    assert secure.server.heard == 1
    assert secure.report.rejections == []


# --- SecureRound.receive: each refusal with its gateway, reason and detail ----------------


def test_bare_frames_are_refused_with_their_reason_and_detail(
    parties: Parties, caplog: pytest.LogCaptureFixture
) -> None:
    agg, gws, registry = parties
    a = plan_round(3, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    u0 = a.participants[gws[0].name]
    with caplog.at_level(logging.WARNING, logger="aggregator.secure_round"):
        secure.receive(SecAggFrame(SecAggKind.UNMASK_RESPONSE, 3, b"x").encode())
        stale = RoundKeys(2, u0, gws[0].signing_key).advert
        secure.receive(SecAggFrame(SecAggKind.ADVERT, 2, stale).encode())
        # the next round's advert, with nowhere to keep it
        ahead = RoundKeys(4, u0, gws[0].signing_key).advert
        secure.receive(SecAggFrame(SecAggKind.ADVERT, 4, ahead).encode())
        stranger = RoundKeys(3, 9, h.identity(9)).advert
        secure.receive(SecAggFrame(SecAggKind.ADVERT, 3, stranger).encode())
    assert secure.report.rejections == [
        ("-", Reason.WRONG_TYPE, "UNMASK_RESPONSE without an envelope"),
        ("-", Reason.WRONG_ROUND, "frame of round 2"),
        ("-", Reason.WRONG_ROUND, "frame of round 4"),
        ("-", Reason.UNEXPECTED_SENDER, "client 9 is not a participant"),
    ]
    assert caplog.messages == [
        "secagg_message_rejected round=3 gateway=- reason=wrong_type "
        "detail=UNMASK_RESPONSE without an envelope",
        "secagg_message_rejected round=3 gateway=- reason=wrong_round detail=frame of round 2",
        "secagg_message_rejected round=3 gateway=- reason=wrong_round detail=frame of round 4",
        "secagg_message_rejected round=3 gateway=- reason=unexpected_sender "
        "detail=client 9 is not a participant",
    ]
    assert secure.server.heard == 0


def test_sealed_frames_are_refused_with_their_sender_reason_and_detail(
    parties: Parties, caplog: pytest.LogCaptureFixture
) -> None:
    agg, gws, registry = parties
    a = plan_round(3, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    advert = SecAggFrame(SecAggKind.ADVERT, 3, b"x")
    garbage = b"not an envelope"
    with pytest.raises(PqlinkError) as opening:
        SealedCodec().open(garbage, agg, registry)
    with caplog.at_level(logging.WARNING, logger="aggregator.secure_round"):
        secure.receive(garbage)
        secure.receive(_up(gws[0], agg, advert, content_type=ContentType.MASKED_INPUT))
        secure.receive(_up(gws[1], agg, advert, round_=4))  # envelope and frame disagree
        secure.receive(_up(gws[1], agg, SecAggFrame(SecAggKind.ADVERT, 2, b"x")))
        secure.receive(_up(gws[2], agg, SecAggFrame(SecAggKind.SHARES, 3, b"x")))
    assert secure.report.rejections == [
        ("-", Reason.MALFORMED, str(opening.value)),
        (gws[0].name, Reason.WRONG_TYPE, "MASKED_INPUT"),
        (gws[1].name, Reason.WRONG_ROUND, "frame of round 3"),
        (gws[1].name, Reason.WRONG_ROUND, "frame of round 2"),
        (gws[2].name, Reason.UNEXPECTED_SENDER, "SHARES does not travel to the server"),
    ]
    assert caplog.messages[1] == (
        f"secagg_message_rejected round=3 gateway={gws[0].name} reason=wrong_type "
        "detail=MASKED_INPUT"
    )
    # an honest advert in an envelope is taken
    secure.receive(_up(gws[0], agg, SecureUpdateSession(a, gws[0], registry).start()))
    assert secure.server.heard == 1
    assert len(secure.report.rejections) == 5


# --- SecureRound.receive_ahead --------------------------------------------------------------


def test_adverts_sent_ahead_for_the_round_are_kept_for_its_opening(parties: Parties) -> None:
    agg, gws, registry = parties
    a = plan_round(5, _names(parties), SETTINGS, 16)
    store = AdvertsAhead()
    secure = SecureRound(a, agg, registry, ahead=store)
    made = {g.name: RoundKeys(5, a.participants[g.name], g.signing_key).advert for g in gws}
    for advert in made.values():
        secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, advert).encode())
    assert secure.report.rejections == []
    assert secure.server.heard == 0  # kept, not yet taken by the round
    assert store.take(5, a.participants) == {a.participants[n]: v for n, v in made.items()}


def test_anything_but_an_advert_of_the_round_is_refused_before_the_opening(
    parties: Parties,
) -> None:
    agg, gws, registry = parties
    a = plan_round(5, _names(parties), SETTINGS, 16)
    store = AdvertsAhead()
    secure = SecureRound(a, agg, registry, ahead=store)
    u0 = a.participants[gws[0].name]
    advert = RoundKeys(5, u0, gws[0].signing_key).advert
    secure.receive_ahead(_up(gws[0], agg, SecAggFrame(SecAggKind.ADVERT, 5, advert)))
    secure.receive_ahead(SecAggFrame(SecAggKind.SHARE_KEYS, 5, b"x").encode())
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 6, advert).encode())
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 4, advert).encode())
    stranger = RoundKeys(5, 9, h.identity(9)).advert
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, stranger).encode())
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, advert).encode())
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, advert).encode())  # again
    assert secure.report.rejections == [
        ("-", Reason.WRONG_STAGE, "only adverts sent ahead are taken before the opening"),
        ("-", Reason.WRONG_STAGE, "SHARE_KEYS before the round opened"),
        ("-", Reason.WRONG_ROUND, "advert of round 6"),
        ("-", Reason.WRONG_ROUND, "advert of round 4"),
        ("-", Reason.UNEXPECTED_SENDER, "client 9 is not a participant"),
        (gws[0].name, Reason.REPLAY, f"second advert of {gws[0].name} for round 5"),
    ]
    assert len(store) == 1


def test_a_forged_advert_ahead_is_refused_under_the_gateway_it_claims(parties: Parties) -> None:
    agg, gws, registry = parties
    a = plan_round(5, _names(parties), SETTINGS, 16)
    store = AdvertsAhead()
    secure = SecureRound(a, agg, registry, ahead=store)
    impostor = Identity.generate("impostor", Role.GATEWAY).signing_key
    forged = RoundKeys(5, a.participants[gws[1].name], impostor).advert
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, forged).encode())
    assert [(w, r) for w, r, _ in secure.report.rejections] == [(gws[1].name, Reason.FORGED)]
    assert len(store) == 0


def test_without_a_store_adverts_ahead_are_dropped_and_others_still_refused(
    parties: Parties,
) -> None:
    agg, gws, registry = parties
    a = plan_round(5, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    advert = RoundKeys(5, a.participants[gws[0].name], gws[0].signing_key).advert
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 5, advert).encode())
    assert secure.report.rejections == []
    assert secure.server.heard == 0
    secure.receive_ahead(SecAggFrame(SecAggKind.ADVERT, 4, advert).encode())
    assert secure.report.rejections == [("-", Reason.WRONG_ROUND, "advert of round 4")]


# --- SecureRound.receive_partial ----------------------------------------------------------


def _partial(
    a: SecureRoundAnnouncement,
    senders: tuple[tuple[str, int], ...] = (("gw0", 1), ("gw1", 2)),
    *,
    round_: int | None = None,
    bits: int | None = None,
    total: np.ndarray | None = None,
    rejections: tuple[Rejection, ...] = (),
) -> MaskedPartial:
    if total is None:
        total = np.zeros(a.encoded_dimension, dtype=np.uint64)
    return MaskedPartial(
        "worker-1",
        a.round if round_ is None else round_,
        senders,
        a.modulus_bits if bits is None else bits,
        total,
        rejections,
    )


def test_a_workers_refusals_are_recorded_under_their_gateways(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(6, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    refused = (
        Rejection(Reason.BAD_SIGNATURE, None, None, "no signer"),
        Rejection(Reason.MALFORMED, "gw1", 6, "round differs"),
    )
    empty = MaskedPartial("worker-1", 6, (), a.modulus_bits, None, refused)
    assert secure.receive_partial(empty) == []
    assert secure.report.rejections == [
        ("-", Reason.BAD_SIGNATURE, "no signer"),
        ("gw1", Reason.MALFORMED, "round differs"),
    ]


def test_a_partial_without_a_sum_counts_nobody(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(6, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    partial = MaskedPartial("worker-1", 6, (("gw0", 1),), a.modulus_bits, None)
    assert secure.receive_partial(partial) == []
    assert secure.report.rejections == []


def test_a_partial_of_another_round_or_ring_is_refused_whole(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(6, _names(parties), SETTINGS, 16)
    assert a.modulus_bits == 15
    secure = SecureRound(a, agg, registry)
    for partial in (
        _partial(a, round_=7),
        _partial(a, round_=5),
        _partial(a, bits=16),
        _partial(a, bits=14),
    ):
        assert secure.receive_partial(partial) == []
    assert secure.report.rejections == [
        ("gw0,gw1", Reason.WRONG_ROUND, "masked partial of round 7"),
        ("gw0,gw1", Reason.WRONG_ROUND, "masked partial of round 5"),
        ("gw0,gw1", Reason.MALFORMED, "partial mod 2^16"),
        ("gw0,gw1", Reason.MALFORMED, "partial mod 2^14"),
    ]


def test_a_partial_whose_input_claims_another_id_is_refused_whole(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(6, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    swapped = (("gw0", 1), ("gw1", 3), ("gw2", 2))
    assert secure.receive_partial(_partial(a, swapped)) == []
    assert secure.report.rejections == [("gw1", Reason.UNEXPECTED_SENDER, "input claims id 3")]
    assert secure.receive_partial(_partial(a, (("stranger", 4),))) == []
    assert secure.report.rejections[1:] == [
        ("stranger", Reason.UNEXPECTED_SENDER, "input claims id 4")
    ]


def test_a_partial_before_the_inputs_stage_is_refused_by_the_server(parties: Parties) -> None:
    agg, _, registry = parties
    a = plan_round(6, _names(parties), SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    assert secure.receive_partial(_partial(a)) == []
    assert secure.report.rejections == [
        ("gw0,gw1", Reason.WRONG_STAGE, "server is adverts, expected inputs")
    ]


@dataclass
class _Setup:
    announcement: SecureRoundAnnouncement
    secure: SecureRound
    sessions: dict[str, SecureUpdateSession]
    masked: dict[str, bytes]  # each gateway's masked input
    coordinator: Registry


def _through_shares(parties: Parties, round_: int) -> _Setup:
    """A round over real sessions up to the inputs stage; the masked inputs kept aside."""
    agg, gws, registry = parties
    a = plan_round(round_, [g.name for g in gws], SETTINGS, 16)
    secure = SecureRound(a, agg, registry)
    sessions = {g.name: SecureUpdateSession(a, g, registry) for g in gws}
    rng = np.random.default_rng(round_)
    for s in sessions.values():
        s.set_update(rng.normal(0.0, 0.3, 16))
        secure.receive(s.start().encode())
    coordinator = Registry()
    coordinator.enroll(agg.public)
    setup = _Setup(a, secure, sessions, {}, coordinator)
    bundles = secure.server.close_adverts()
    assert isinstance(bundles, dict)
    for _, frame in _deliver(setup, SecAggKind.ADVERTS, bundles):
        secure.receive(frame.encode())
    shares = secure.server.close_key_shares()
    assert isinstance(shares, dict)
    for name, frame in _deliver(setup, SecAggKind.SHARES, shares):
        assert frame.kind is SecAggKind.MASKED_INPUT
        setup.masked[name] = frame.body
    assert secure.report.rejections == []
    return setup


def _deliver(
    setup: _Setup, kind: SecAggKind, bundles: dict[int, bytes]
) -> list[tuple[str, SecAggFrame]]:
    out = []
    for name, data in setup.secure.sign_stage(kind, bundles).items():
        item = open_batch_item(data, name, setup.coordinator)
        step = setup.sessions[name].handle(SecAggFrame.decode(item.payload))
        assert step.rejected == []
        out += [(name, f) for f in step.outgoing]
    return out


def _masked_sum(setup: _Setup, names: list[str]) -> np.ndarray:
    """What a crypto worker folds: the masked vectors added modulo 2^k."""
    total = np.zeros(setup.announcement.encoded_dimension, dtype=np.uint64)
    for name in names:
        total += open_masked_input(setup.masked[name]).vector
    return total & np.uint64((1 << setup.announcement.modulus_bits) - 1)


def test_partials_of_the_inputs_stage_sum_to_the_exact_total(parties: Parties) -> None:
    setup = _through_shares(parties, 8)
    a, secure = setup.announcement, setup.secure
    ids = a.participants
    first = _partial(
        a, (("gw0", ids["gw0"]), ("gw1", ids["gw1"])), total=_masked_sum(setup, ["gw0", "gw1"])
    )
    assert secure.receive_partial(first) == ["gw0", "gw1"]
    assert secure.server.heard == 2
    # the same gateways again: the whole partial refused, nothing counted twice
    assert secure.receive_partial(first) == []
    assert secure.report.rejections == [
        ("gw0,gw1", Reason.REPLAY, f"input of client {ids['gw0']} counted already")
    ]
    assert secure.server.heard == 2
    last = _partial(a, (("gw2", ids["gw2"]),), total=_masked_sum(setup, ["gw2"]))
    assert secure.receive_partial(last) == ["gw2"]
    request = secure.server.close_inputs()
    assert isinstance(request, bytes)
    assert secure.server.survivors == (1, 2, 3)
    for name, frame in _deliver(
        setup, SecAggKind.UNMASK_REQUEST, dict.fromkeys(secure.server.survivors, request)
    ):
        secure.server.receive_unmask_response(ids[name], frame.body)
    result = secure.server.finish()
    assert isinstance(result, AggregateResult)
    encoded = [s.encoded for s in setup.sessions.values() if s.encoded is not None]
    assert len(encoded) == 3
    want = np.sum(encoded, axis=0, dtype=np.uint64) & np.uint64((1 << a.modulus_bits) - 1)
    assert np.array_equal(result.total, want)
