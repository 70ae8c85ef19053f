"""Checks the aggregation building blocks without a broker: sample weighting of secure
rounds (extension, weights, the weighted mean), the FedAvgM schedule and velocity, the
crypto workers' partial messages and the masked partial sums they fold."""

from __future__ import annotations

import functools
import json
import math
import struct

import numpy as np
import pytest

from aggregator.masked import CheckedMasked, MaskedFolder, MaskedPartial, MaskedPartialError
from aggregator.momentum import FedAvgM, decayed_learning_rate
from aggregator.partials import Partial, PartialError, Rejection, make_partial
from aggregator.strategies import Contribution
from pqlink import ContentType, Identity, Registry, Role
from pqlink._secagg_codec import MaskedInput
from pqlink.secagg import MaskedVector
from tests.secagg_harness import enrolled_parties
from wire.envelopes import SealedCodec
from wire.reasons import Reason
from wire.secagg import SecAggFrame, SecAggKind
from wire.weighting import SampleWeighting

# --- sample weighting ---------------------------------------------------------------------


@pytest.mark.parametrize("cap", [0, -3, True, 2.5, 1.0, "4"])
def test_weighting_rejects_a_cap_that_is_not_a_positive_integer(cap: object) -> None:
    with pytest.raises(ValueError, match="weight cap"):
        SampleWeighting(cap)  # type: ignore[arg-type]


def test_weighting_accepts_a_cap_of_exactly_one() -> None:
    assert SampleWeighting(1).weight(1) == 1.0
    assert SampleWeighting(1).weight(0) == 0.0


@pytest.mark.parametrize(
    ("samples", "expected"), [(0, 0.0), (1, 0.1), (5, 0.5), (10, 1.0), (11, 1.0), (500, 1.0)]
)
def test_weight_is_the_capped_count_over_the_cap(samples: int, expected: float) -> None:
    assert SampleWeighting(10).weight(samples) == pytest.approx(expected, abs=0.0)


@pytest.mark.parametrize("samples", [-1, True, False, 3.0, "3"])
def test_weight_rejects_a_count_that_is_not_a_non_negative_integer(samples: object) -> None:
    with pytest.raises(ValueError, match="sample count"):
        SampleWeighting(10).weight(samples)  # type: ignore[arg-type]


def test_encoding_adds_one_coordinate_and_widens_the_clip_by_root_two() -> None:
    assert SampleWeighting.encoding_dimension(3) == 4
    assert SampleWeighting.encoding_dimension(0) == 1
    assert SampleWeighting.encoding_clip(2.0) == pytest.approx(2.0 * math.sqrt(2.0))
    assert SampleWeighting.encoding_clip(3.0) == pytest.approx(math.sqrt(18.0))


def test_extend_keeps_an_update_within_the_clip_and_appends_weight_times_clip() -> None:
    out = SampleWeighting(10).extend([3.0, 4.0], 5, 10.0)  # norm 5 <= 10, w = 0.5
    assert out.dtype == np.float64
    assert out.tolist() == [1.5, 2.0, 5.0]


def test_extend_scales_an_update_above_the_clip_down_to_it() -> None:
    out = SampleWeighting(10).extend([3.0, 4.0], 5, 2.5)  # norm 5 -> 2.5: (1.5, 2), w = 0.5
    np.testing.assert_allclose(out, [0.75, 1.0, 1.25], rtol=1e-15)
    full = SampleWeighting(4).extend([[0.0, -6.0], [8.0, 0.0]], 9, 5.0)  # flattened, w = 1
    np.testing.assert_allclose(full, [0.0, -3.0, 4.0, 0.0, 5.0], rtol=1e-15)


def test_extended_vector_norm_stays_within_the_encoding_clip() -> None:
    weighting = SampleWeighting(7)
    out = weighting.extend(np.full(5, 100.0), 7, 1.5)
    assert float(np.linalg.norm(out)) == pytest.approx(weighting.encoding_clip(1.5))


def test_extend_computes_in_double_precision_from_single_precision_input() -> None:
    out = SampleWeighting(10).extend(np.array([0.1], dtype=np.float32), 3, 1.0)
    assert out[0] == np.float64(np.float32(0.1)) * 0.3
    assert out[1] == 0.3


def test_mean_divides_the_update_sum_by_the_weight_sum() -> None:
    weighting = SampleWeighting(1)
    signed = np.array([100, -50, 1000], dtype=np.int64)
    # floor: 2 survivors * 255 / sqrt 2 ~ 360.6 < 1000
    out = weighting.mean(signed, 2.0, 2, 8)
    np.testing.assert_allclose(out, [0.2, -0.1], rtol=1e-12)


def test_mean_floors_the_weight_sum_at_one_sample_per_survivor() -> None:
    weighting = SampleWeighting(2)
    signed = np.array([100, 50], dtype=np.int64)
    out = weighting.mean(signed, 2.0, 3, 8)
    # floor = 3 * (2^8 - 1) / sqrt(2) / 2
    np.testing.assert_allclose(out, [2.0 * 100 * math.sqrt(2.0) * 2 / (3 * 255)], rtol=1e-12)
    assert out.shape == (1,)


def test_mean_round_trips_an_exactly_quantised_weighted_round() -> None:
    weighting = SampleWeighting(4)
    clip, bits = 1.0, 16
    scale = ((1 << bits) - 1) / weighting.encoding_clip(clip)
    a = weighting.extend([0.6, 0.0], 4, clip)  # w = 1
    b = weighting.extend([0.0, 0.2], 1, clip)  # w = 1/4
    total = np.round((a + b) * scale).astype(np.int64)
    out = weighting.mean(total, clip, 2, bits)
    # (1 * (0.6, 0) + 0.25 * (0, 0.2)) / 1.25
    np.testing.assert_allclose(out, [0.48, 0.04], atol=1e-4)


@pytest.mark.parametrize("shape", [(1,), (0,), (2, 2), (1, 3)])
def test_mean_rejects_a_sum_without_a_weight_coordinate(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="weighted sum of shape"):
        SampleWeighting(3).mean(np.ones(shape, dtype=np.int64), 1.0, 1, 8)


def test_mean_accepts_the_smallest_sum_of_one_coordinate_and_its_weight() -> None:
    out = SampleWeighting(1).mean(np.array([7, 1000], dtype=np.int64), 1.0, 1, 4)
    np.testing.assert_allclose(out, [0.007], rtol=1e-12)


# --- FedAvgM --------------------------------------------------------------------------------


def test_decay_over_two_rounds_reaches_the_final_ratio_at_the_second() -> None:
    assert decayed_learning_rate(0.4, 0.5, 1, 2) == pytest.approx(0.4)
    assert decayed_learning_rate(0.4, 0.5, 2, 2) == pytest.approx(0.2)
    assert decayed_learning_rate(0.4, 0.5, 2, 1) == 0.4


def test_decay_follows_the_ratio_whatever_its_value() -> None:
    assert decayed_learning_rate(1.0, 2.0, 2, 2) == pytest.approx(2.0)
    assert decayed_learning_rate(1.0, 4.0, 2, 3) == pytest.approx(2.0)


def test_fedavgm_keeps_a_single_precision_velocity() -> None:
    strategy = FedAvgM(momentum=0.9, server_learning_rate=0.1)
    total = np.array([0.3, 0.7, 1.1], dtype=np.float32)
    first = strategy.aggregate(3.0, total, ())
    assert strategy.velocity is not None
    assert strategy.velocity.dtype == np.float32
    assert first.dtype == np.float32
    mean = total / np.float32(3.0)
    np.testing.assert_array_equal(strategy.velocity, mean)
    second = strategy.aggregate(3.0, total, ())
    expected_v = np.float32(0.9) * mean + mean
    np.testing.assert_array_equal(strategy.velocity, expected_v)
    np.testing.assert_array_equal(second, np.float32(0.1) * expected_v)


def test_fedavgm_starts_from_a_zero_velocity_of_the_update_shape() -> None:
    strategy = FedAvgM(momentum=0.5)
    step = strategy.aggregate(2.0, np.array([[2.0, 4.0]], dtype=np.float32), ())
    assert step.shape == (1, 2)
    np.testing.assert_array_equal(step, [[1.0, 2.0]])


# --- partials ------------------------------------------------------------------------------


def _vec(*values: float) -> np.ndarray[tuple[int], np.dtype[np.float32]]:
    return np.array(values, dtype=np.float32)


def test_make_partial_sums_sample_weighted_deltas() -> None:
    rej = Rejection(Reason.MALFORMED, "gw-x", 4, "bad")
    p = make_partial(
        "w1",
        4,
        [Contribution("gw-a", 2, _vec(1.0, 0.5)), Contribution("gw-b", 3, _vec(-1.0, 2.0))],
        False,
        [rej],
        {"checked": 3},
    )
    assert p.worker == "w1"
    assert p.round == 4
    assert p.contributors == (("gw-a", 2), ("gw-b", 3))
    assert p.weighted_sum is not None
    np.testing.assert_array_equal(p.weighted_sum, [-1.0, 7.0])
    assert p.individual == ()
    assert p.rejections == (rej,)
    assert p.metrics == {"checked": 3}
    assert p.total_weight == 5


def test_make_partial_without_contributions_has_no_sum() -> None:
    p = make_partial("w1", 2, [], False)
    assert p.weighted_sum is None
    assert p.rejections == ()
    assert p.metrics == {}
    assert p.total_weight == 0


def test_make_partial_for_robust_rules_keeps_individual_updates() -> None:
    contributions = [Contribution("gw-a", 2, _vec(1.0)), Contribution("gw-b", 1, _vec(3.0))]
    p = make_partial("w2", 1, contributions, True)
    assert p.weighted_sum is None
    assert p.individual == tuple(contributions)


def test_partial_round_trips_a_sum_with_rejections_and_metrics() -> None:
    p = Partial(
        "w1",
        9,
        (("gw-a", 2), ("gw-b", 5)),
        _vec(1.5, -2.0, 0.25),
        (),
        (
            Rejection(Reason.MALFORMED, "gw-c", 9, "bad frame"),
            Rejection(Reason.TAMPERED, None, None, ""),
        ),
        {"latency_ms": 12.5},
    )
    data = p.encode()
    (n,) = struct.unpack_from(">I", data)
    header = data[4 : 4 + n]
    assert header == json.dumps(json.loads(header), separators=(",", ":")).encode()
    assert len(data) == 4 + n + 3 * 4
    back = Partial.decode(data, 3)
    assert back.worker == "w1"
    assert back.round == 9
    assert back.contributors == (("gw-a", 2), ("gw-b", 5))
    assert back.weighted_sum is not None
    assert back.weighted_sum.dtype == np.float32
    np.testing.assert_array_equal(back.weighted_sum, [1.5, -2.0, 0.25])
    assert back.individual == ()
    assert back.rejections == p.rejections
    assert isinstance(back.rejections[0].reason, Reason)
    assert back.metrics == {"latency_ms": 12.5}


def test_partial_round_trips_individual_updates_in_order() -> None:
    p = Partial(
        "w2",
        3,
        (("gw-a", 2), ("gw-b", 7)),
        None,
        (Contribution("gw-a", 2, _vec(1.0, 2.0)), Contribution("gw-b", 7, _vec(3.0, 4.0))),
    )
    data = p.encode()
    (n,) = struct.unpack_from(">I", data)
    assert len(data) == 4 + n + 2 * 2 * 4
    back = Partial.decode(data, 2)
    assert back.weighted_sum is None
    assert [c.gateway for c in back.individual] == ["gw-a", "gw-b"]
    assert [c.samples for c in back.individual] == [2, 7]
    np.testing.assert_array_equal(back.individual[0].delta, [1.0, 2.0])
    np.testing.assert_array_equal(back.individual[1].delta, [3.0, 4.0])
    assert back.individual[0].delta.dtype == np.float32
    assert back.metrics == {}


def test_partial_individual_without_a_contributor_entry_counts_zero_samples() -> None:
    header = {
        "worker": "w",
        "round": 1,
        "contributors": [],
        "has_sum": True,
        "individual": ["gw-z"],
        "rejections": [],
    }
    blob = json.dumps(header).encode()
    data = struct.pack(">I", len(blob)) + blob + _vec(1.0).tobytes() + _vec(5.0).tobytes()
    back = Partial.decode(data, 1)
    assert back.metrics == {}
    assert back.weighted_sum is not None
    np.testing.assert_array_equal(back.weighted_sum, [1.0])
    assert back.individual[0].gateway == "gw-z"
    assert back.individual[0].samples == 0
    np.testing.assert_array_equal(back.individual[0].delta, [5.0])


def test_partial_sum_and_individuals_decode_from_consecutive_slices() -> None:
    p = Partial(
        "w3",
        2,
        (("gw-a", 1),),
        _vec(9.0, 8.0, 7.0),
        (
            Contribution("gw-a", 1, _vec(1.0, 2.0, 3.0)),
            Contribution("gw-b", 0, _vec(4.0, 5.0, 6.0)),
        ),
    )
    back = Partial.decode(p.encode(), 3)
    assert back.weighted_sum is not None
    np.testing.assert_array_equal(back.weighted_sum, [9.0, 8.0, 7.0])
    np.testing.assert_array_equal(back.individual[0].delta, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(back.individual[1].delta, [4.0, 5.0, 6.0])
    assert back.individual[1].samples == 0


@pytest.mark.parametrize("cut", [1, 4])
def test_partial_with_a_short_body_is_malformed(cut: int) -> None:
    data = make_partial("w", 1, [Contribution("gw-a", 1, _vec(1.0, 2.0))], False).encode()
    with pytest.raises(PartialError, match="does not hold 1 vectors"):
        Partial.decode(data[:-cut], 2)


def test_partial_with_a_broken_header_is_malformed() -> None:
    with pytest.raises(PartialError, match="malformed partial"):
        Partial.decode(struct.pack(">I", 2) + b"{}", 1)


# --- masked partial sums --------------------------------------------------------------------


def _u64(*values: int) -> np.ndarray[tuple[int], np.dtype[np.uint64]]:
    return np.array(values, dtype=np.uint64)


def _masked(who: str, rnd: int, sender: int, bits: int, *values: int) -> CheckedMasked:
    return CheckedMasked((who, MaskedVector(rnd, sender, bits, _u64(*values))))


def test_masked_partial_round_trips_its_header_and_sum() -> None:
    p = MaskedPartial(
        "w1",
        7,
        (("gw0", 1), ("gw1", 2)),
        16,
        _u64(1, 65535, 2**63),
        (
            Rejection(Reason.DUPLICATE, "gw1", 7, "twice in a batch"),
            Rejection(Reason.TAMPERED, None, None, "x"),
        ),
    )
    data = p.encode()
    (n,) = struct.unpack_from(">I", data)
    header = data[4 : 4 + n]
    assert header == json.dumps(json.loads(header), separators=(",", ":")).encode()
    assert data[4 + n :] == struct.pack("<3Q", 1, 65535, 2**63)
    back = MaskedPartial.decode(data)
    assert back.worker == "w1"
    assert back.round == 7
    assert back.senders == (("gw0", 1), ("gw1", 2))
    assert back.modulus_bits == 16
    assert back.total is not None
    assert back.total.dtype == np.uint64
    assert back.total.tolist() == [1, 65535, 2**63]
    assert back.rejections == p.rejections
    assert isinstance(back.rejections[0].reason, Reason)


def test_masked_partial_without_a_sum_has_an_empty_body() -> None:
    p = MaskedPartial("w2", -1, (), 0, None, (Rejection(Reason.MALFORMED, "gw3", 2, "bad"),))
    data = p.encode()
    (n,) = struct.unpack_from(">I", data)
    assert len(data) == 4 + n
    back = MaskedPartial.decode(data)
    assert back.total is None
    assert back == p
    assert MaskedPartial("w", 1, (), 8, None).rejections == ()


@pytest.mark.parametrize("cut", [1, 7])
def test_masked_partial_with_a_body_not_of_whole_words_is_malformed(cut: int) -> None:
    data = MaskedPartial("w", 1, (("gw0", 1),), 16, _u64(1, 2)).encode()
    with pytest.raises(MaskedPartialError, match="masked partial body of"):
        MaskedPartial.decode(data[:-cut])


@pytest.mark.parametrize(
    "header",
    [
        b"{}",
        b'{"worker":"w","round":1,"senders":[],"modulus_bits":"x","rejections":[]}',
        b'{"worker":"w","round":1,"senders":[["a"]],"modulus_bits":8,"rejections":[]}',
        b'{"worker":"w","round":1,"senders":[],"modulus_bits":8,"rejections":[["nope",null,null,""]]}',
        b"not json",
    ],
)
def test_masked_partial_with_a_broken_header_is_malformed(header: bytes) -> None:
    with pytest.raises(MaskedPartialError, match="malformed masked partial"):
        MaskedPartial.decode(struct.pack(">I", len(header)) + header)


def test_masked_partial_too_short_for_its_length_is_malformed() -> None:
    with pytest.raises(MaskedPartialError, match="malformed masked partial"):
        MaskedPartial.decode(b"\x00\x00")


def _folder() -> MaskedFolder:
    agg, _, registry = _parties()
    return MaskedFolder("w9", agg, registry)


def test_fold_sums_masked_inputs_modulo_the_ring() -> None:
    folder = _folder()
    out = folder.fold(
        [
            _masked("gw1", 5, 2, 8, 200, 3),
            _masked("gw0", 5, 1, 8, 100, 255),
        ]
    )
    assert len(out) == 1
    p = out[0]
    assert (p.worker, p.round, p.modulus_bits) == ("w9", 5, 8)
    assert p.senders == (("gw0", 1), ("gw1", 2))
    assert p.total is not None
    assert p.total.tolist() == [(200 + 100) % 256, (3 + 255) % 256]
    assert p.rejections == ()


def test_fold_wraps_a_full_64_bit_ring() -> None:
    out = _folder().fold([_masked("a", 1, 1, 64, 2**64 - 1, 5), _masked("b", 1, 2, 64, 3, 2**63)])
    assert out[0].total is not None
    assert out[0].total.tolist() == [2, 2**63 + 5]
    assert out[0].modulus_bits == 64


def test_fold_keeps_the_top_word_of_a_63_bit_ring() -> None:
    out = _folder().fold([_masked("a", 1, 1, 63, 2**62), _masked("b", 1, 2, 63, 2**62 + 1)])
    assert out[0].total is not None
    assert out[0].total.tolist() == [1]


def test_fold_makes_one_partial_per_round_ring_and_length_in_order() -> None:
    out = _folder().fold(
        [
            _masked("a", 4, 1, 16, 1),
            _masked("a", 3, 1, 16, 2),
            _masked("b", 3, 2, 16, 3),
            _masked("c", 3, 3, 12, 4),
            _masked("d", 3, 4, 16, 5, 6),
        ]
    )
    summary = [
        (p.round, p.modulus_bits, p.senders, None if p.total is None else p.total.tolist())
        for p in out
    ]
    assert summary == [
        (3, 12, (("c", 3),), [4]),
        (3, 16, (("a", 1), ("b", 2)), [5]),
        (3, 16, (("d", 4),), [5, 6]),
        (4, 16, (("a", 1),), [1]),
    ]


def test_fold_counts_a_gateway_twice_in_a_batch_once() -> None:
    bad = Rejection(Reason.MALFORMED, "gx", 6, "broken")
    out = _folder().fold(
        [
            _masked("gw0", 6, 1, 8, 10),
            CheckedMasked(bad),
            _masked("gw0", 6, 1, 8, 20),
        ]
    )
    assert len(out) == 1
    p = out[0]
    assert p.total is not None
    assert p.total.tolist() == [10]
    assert p.senders == (("gw0", 1),)
    assert p.worker == "w9"
    assert (p.round, p.modulus_bits) == (6, 8)
    assert p.rejections == (bad, Rejection(Reason.DUPLICATE, "gw0", 6, "twice in a batch"))


def test_fold_puts_rejections_on_the_first_partial_only() -> None:
    bad = Rejection(Reason.TAMPERED, None, None, "x")
    out = _folder().fold([_masked("a", 2, 1, 8, 1), _masked("a", 1, 1, 8, 2), CheckedMasked(bad)])
    assert [p.round for p in out] == [1, 2]
    assert out[0].rejections == (bad,)
    assert out[0].senders == (("a", 1),)
    assert out[0].total is not None
    assert out[0].total.tolist() == [2]
    assert out[1].rejections == ()


def test_fold_of_only_rejections_is_one_empty_partial() -> None:
    bad = Rejection(Reason.MALFORMED, "gw0", 3, "x")
    out = _folder().fold([CheckedMasked(bad)])
    assert out == [MaskedPartial("w9", -1, (), 0, None, (bad,))]
    assert _folder().fold([]) == []


# --- checking sealed masked inputs ----------------------------------------------------------


@functools.cache
def _parties() -> tuple[Identity, list[Identity], Registry]:
    return enrolled_parties(2)


def _sealed(
    inner: SecAggFrame,
    *,
    envelope_round: int,
    content_type: ContentType = ContentType.MASKED_INPUT,
    sender: int = 0,
) -> bytes:
    agg, gws, _ = _parties()
    return SealedCodec().seal(
        gws[sender], [agg.public], inner.encode(), content_type=content_type, round=envelope_round
    )


def _masked_frame(
    rnd: int, *, frame_round: int | None = None, body_round: int | None = None
) -> SecAggFrame:
    body = MaskedInput(
        rnd if body_round is None else body_round, 3, 16, 2, struct.pack("<2I", 7, 65535)
    )
    return SecAggFrame(
        SecAggKind.MASKED_INPUT, rnd if frame_round is None else frame_round, body.to_bytes()
    )


def _checker(max_envelope_bytes: int = 64 * 1024 * 1024) -> MaskedFolder:
    agg, _, registry = _parties()
    return MaskedFolder("w1", agg, registry, max_envelope_bytes=max_envelope_bytes)


def test_check_opens_a_sealed_masked_input() -> None:
    checked = _checker().check(_sealed(_masked_frame(12), envelope_round=12, sender=1))
    assert not isinstance(checked.outcome, Rejection)
    who, m = checked.outcome
    assert who == "gw1"
    assert (m.round_id, m.sender, m.modulus_bits) == (12, 3, 16)
    assert m.vector.tolist() == [7, 65535]


def test_check_rejects_a_frame_of_another_content_type() -> None:
    checked = _checker().check(
        _sealed(_masked_frame(4), envelope_round=4, content_type=ContentType.SECAGG)
    )
    assert checked.outcome == Rejection(Reason.WRONG_TYPE, "gw0", 4, "SECAGG")


@pytest.mark.parametrize(
    ("inner", "detail"),
    [
        (SecAggFrame(SecAggKind.MASKED_INPUT, 4, b"junk"), None),
        (
            SecAggFrame(SecAggKind.UNMASK_RESPONSE, 4, b""),
            "UNMASK_RESPONSE of round 4 in a masked input",
        ),
        (_masked_frame(4, frame_round=5), "MASKED_INPUT of round 5 in a masked input"),
        (_masked_frame(4, body_round=9), "round differs"),
    ],
)
def test_check_rejects_a_malformed_masked_input(inner: SecAggFrame, detail: str | None) -> None:
    checked = _checker().check(_sealed(inner, envelope_round=4))
    assert isinstance(checked.outcome, Rejection)
    assert checked.outcome.reason is Reason.MALFORMED
    assert (checked.outcome.gateway, checked.outcome.round) == ("gw0", 4)
    if detail is not None:
        assert checked.outcome.detail == detail


def test_check_rejects_a_sender_that_is_not_enrolled() -> None:
    agg, _, _ = _parties()
    stranger = Identity.generate("gw-x", Role.GATEWAY)
    frame = SealedCodec().seal(
        stranger,
        [agg.public],
        _masked_frame(2).encode(),
        content_type=ContentType.MASKED_INPUT,
        round=2,
    )
    checked = _checker().check(frame)
    assert isinstance(checked.outcome, Rejection)
    assert checked.outcome.reason is Reason.UNENROLLED
    assert (checked.outcome.gateway, checked.outcome.round) == (None, None)


def test_check_enforces_the_envelope_size_limit() -> None:
    frame = _sealed(_masked_frame(2), envelope_round=2)
    at_limit = _checker(max_envelope_bytes=len(frame)).check(frame)
    assert not isinstance(at_limit.outcome, Rejection)
    over = _checker(max_envelope_bytes=len(frame) - 1).check(frame)
    assert isinstance(over.outcome, Rejection)
    assert over.outcome.reason is Reason.OVERSIZED  # as the plain path's size check says
    assert (
        over.outcome.detail
        == f"envelope of {len(frame)} bytes exceeds the {len(frame) - 1}-byte limit"
    )


def test_check_rejects_bytes_that_are_not_an_envelope() -> None:
    checked = _checker().check(b"\x00" * 40)
    assert isinstance(checked.outcome, Rejection)
    assert checked.outcome.reason is Reason.MALFORMED
    assert checked.outcome.gateway is None


def test_fold_goes_on_after_a_duplicate_and_a_rejection() -> None:
    bad = Rejection(Reason.MALFORMED, "gx", 6, "broken")
    out = _folder().fold(
        [
            _masked("gw0", 6, 1, 8, 10),
            _masked("gw0", 6, 1, 8, 20),
            _masked("gw1", 6, 2, 8, 30),
            CheckedMasked(bad),
            _masked("gw2", 6, 3, 8, 40),
        ]
    )
    assert len(out) == 1
    assert out[0].senders == (("gw0", 1), ("gw1", 2), ("gw2", 3))
    assert out[0].total is not None
    assert out[0].total.tolist() == [80]
    assert out[0].rejections == (Rejection(Reason.DUPLICATE, "gw0", 6, "twice in a batch"), bad)
