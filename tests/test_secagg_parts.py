"""The parts of secure aggregation on their own: message decoders (property tests), the
neighbour graph and its parameters, the modulus formula at its limit, the input encoding."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqlink._secagg_codec import (
    Advert,
    ForwardedKeyShares,
    KeyShares,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    decode_bundle,
    peek_header,
)
from pqlink._secagg_encoding import accumulate_masks
from pqlink.ascon import CXOF_MAX_CUSTOMIZATION, cxof128, cxof128_accumulate
from pqlink.secagg import (
    COMPLETE_GRAPH_UP_TO,
    InputEncoding,
    MalformedMessageError,
    RoundConfig,
    SecAggParameterError,
    choose_parameters,
    distributed_noise_std,
    expand_mask,
    modulus_bits_for,
    neighbour_graph,
)
from tests import secagg_harness as h

DECODERS: list[Callable[[bytes], object]] = [
    Advert.from_bytes,
    KeyShares.from_bytes,
    ForwardedKeyShares.from_bytes,
    MaskedInput.from_bytes,
    UnmaskRequest.from_bytes,
    UnmaskResponse.from_bytes,
    decode_bundle,
    peek_header,
]


def _valid_messages() -> list[bytes]:
    """One real message of every kind, from a three-client round."""
    config = h.make_config(3, threshold=2, min_survivors=3)
    r = h.start(config)
    out = []
    adverts = {u: c.advertise() for u, c in r.clients.items()}
    out.append(adverts[1])
    for u in r.clients:
        r.server.receive_advert(u, adverts[u])
    bundles = r.server.close_adverts()
    assert isinstance(bundles, dict)
    out.append(bundles[1])
    h.deliver(bundles, {u: c.receive_advert for u, c in r.clients.items()})
    for u, c in r.clients.items():
        ks = c.key_shares()
        out.append(ks)
        r.server.receive_key_shares(u, ks)
    fwd = r.server.close_key_shares()
    assert isinstance(fwd, dict)
    out.append(decode_bundle(fwd[3])[1][0])
    h.deliver(fwd, {u: c.receive_key_shares for u, c in r.clients.items()})
    ring, _ = h.random_inputs(config, np.random.default_rng(1))
    for u, c in r.clients.items():
        mi = c.masked_input(ring[u])
        out.append(mi)
        r.server.receive_masked_input(u, mi)
    request = r.server.close_inputs()
    assert isinstance(request, bytes)
    out.append(request)
    out.append(r.clients[1].unmask(request))
    return out


VALID = _valid_messages()


def _decoded_exactly_or_refused(decoder: Callable[[bytes], object], data: bytes) -> None:
    """Either MalformedMessageError (anything else fails the test), or a value that encodes
    back to exactly the bytes it came from."""
    try:
        value = decoder(data)
    except MalformedMessageError:
        return
    encode = getattr(value, "to_bytes", None)
    if encode is not None:
        assert encode() == data


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: getattr(d, "__qualname__", str(d)))
@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_decoders_raise_only_their_error_on_garbage(
    decoder: Callable[[bytes], object], data: bytes
) -> None:
    _decoded_exactly_or_refused(decoder, data)


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: getattr(d, "__qualname__", str(d)))
@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(VALID) - 1), cut=st.integers(0, 10_000), flip=st.integers(0, 255))
def test_decoders_raise_only_their_error_on_damaged_messages(
    decoder: Callable[[bytes], object], which: int, cut: int, flip: int
) -> None:
    msg = bytearray(VALID[which])
    position = cut % len(msg)
    msg[position] ^= flip
    for candidate in (bytes(msg), bytes(msg[:position])):
        _decoded_exactly_or_refused(decoder, candidate)


def test_every_valid_message_round_trips() -> None:
    by_kind = {peek_header(m).kind.name: m for m in VALID}
    decoders = {
        "ADVERT": Advert.from_bytes,
        "KEY_SHARES": KeyShares.from_bytes,
        "FORWARDED_KEY_SHARES": ForwardedKeyShares.from_bytes,
        "MASKED_INPUT": MaskedInput.from_bytes,
        "UNMASK_REQUEST": UnmaskRequest.from_bytes,
        "UNMASK_RESPONSE": UnmaskResponse.from_bytes,
    }
    assert set(decoders) <= set(by_kind)
    for kind, decode in decoders.items():
        assert decode(by_kind[kind]).to_bytes() == by_kind[kind]  # type: ignore[attr-defined]


def test_wrong_kind_and_version_named() -> None:
    advert = VALID[0]
    with pytest.raises(MalformedMessageError, match=r"message kind 1, expected 10 \(KEY_SHARES\)"):
        KeyShares.from_bytes(advert)
    with pytest.raises(MalformedMessageError, match="version 1, expected 2"):
        Advert.from_bytes(b"\x01" + advert[1:])
    with pytest.raises(MalformedMessageError, match="trailing"):
        Advert.from_bytes(advert + b"\x00")
    request = UnmaskRequest(5, (1, 2), (3,)).to_bytes()
    assert UnmaskRequest.from_bytes(request) == UnmaskRequest(5, (1, 2), (3,))
    from_client = request[:10] + b"\x00\x01" + request[12:]  # sender field: 1, not the server
    with pytest.raises(MalformedMessageError, match="unmask request from sender 1"):
        UnmaskRequest.from_bytes(from_client)


# --- graph and parameters --------------------------------------------------------------------


def test_complete_graph_up_to_the_threshold_then_harary() -> None:
    seed = bytes(32)
    ids = tuple(range(1, COMPLETE_GRAPH_UP_TO + 1))
    p = choose_parameters(COMPLETE_GRAPH_UP_TO, corrupt_fraction=0.0, dropout_fraction=0.1)
    assert p.complete
    assert p.degree == COMPLETE_GRAPH_UP_TO - 1
    graph = neighbour_graph(ids, p.degree, seed)
    assert all(graph[u] == set(ids) - {u} for u in ids)
    big = choose_parameters(1000, corrupt_fraction=0.05, dropout_fraction=0.1)
    assert not big.complete
    assert big.degree < 999
    assert big.privacy_failure_log2 <= -40
    assert big.correctness_failure_log2 <= -30


@pytest.mark.parametrize("n", [17, 50, 301])
def test_harary_graph_is_regular_symmetric_and_seeded(n: int) -> None:
    ids = tuple(range(1, n + 1))
    graph = neighbour_graph(ids, 10, b"\x01" * 32)
    assert all(len(graph[u]) == 10 for u in ids)
    assert all(u in graph[v] for u in ids for v in graph[u])
    assert all(u not in graph[u] for u in ids)
    assert neighbour_graph(ids, 10, b"\x01" * 32) == graph
    assert neighbour_graph(ids, 10, b"\x02" * 32) != graph


def test_threshold_keeps_corrupt_neighbours_below_2t_minus_k() -> None:
    # small rounds: the exact counts decide
    p = choose_parameters(10, corrupt_fraction=0.2, dropout_fraction=0.2)
    corrupt, dropped = 2, 2
    assert (p.degree, p.threshold) == (9, 6)
    assert 2 * p.threshold - p.degree > corrupt
    assert p.threshold <= p.degree - dropped
    with pytest.raises(SecAggParameterError, match="no threshold"):
        choose_parameters(10, corrupt_fraction=0.3, dropout_fraction=0.4)


def test_parameter_errors() -> None:
    with pytest.raises(SecAggParameterError, match="at least 2 clients, got 1"):
        choose_parameters(1, corrupt_fraction=0.0, dropout_fraction=0.0)
    with pytest.raises(SecAggParameterError, match="degree 3 must be even"):
        neighbour_graph(tuple(range(1, 30)), 3, bytes(32))
    with pytest.raises(SecAggParameterError, match="graph seed must be 32 bytes, got 31"):
        neighbour_graph((1, 2, 3), 2, bytes(31))


# --- modulus, encoding, noise, masks ----------------------------------------------------------


def test_modulus_bits_formula_known_answers() -> None:
    # 3 clients at 2 bits: |sum| <= 9, 19 residues: 5 bits (32), 4 would give 16
    assert modulus_bits_for(3, 2) == 5
    assert modulus_bits_for(1, 1) == 2  # {-1, 0, 1}
    assert modulus_bits_for(50, 16) == 23  # 2 * 50 * 65535 = 6,553,500 < 2^23
    with_noise = modulus_bits_for(50, 16, noise_std=1000.0, dimension=1106)
    tau = math.sqrt(2 * (math.log(2 * 1106) + 30 * math.log(2)))
    assert with_noise == (2 * (50 * 65535 + math.ceil(tau * 1000 * math.sqrt(50)))).bit_length()


@pytest.mark.parametrize("n", [3, 10])
def test_sum_at_the_magnitude_limit_never_wraps_and_one_bit_less_does(n: int) -> None:
    b = 6
    k = modulus_bits_for(n, b)
    top = (1 << b) - 1
    for sign in (1, -1):
        values = np.full(4, sign * top, dtype=np.int64)
        enc = InputEncoding(4, 1.0, b, k)
        total = sum((enc.to_ring(values) for _ in range(n)), np.zeros(4, dtype=np.uint64))
        assert np.array_equal(enc.signed_sum(total), values * n)
        small = InputEncoding(4, 1.0, b, k - 1)
        total = sum((small.to_ring(values) for _ in range(n)), np.zeros(4, dtype=np.uint64))
        assert not np.array_equal(small.signed_sum(total), values * n)


def test_quantisation_is_clipped_bounded_and_unbiased() -> None:
    enc = InputEncoding(1000, 2.0, 10, 32)
    rng = np.random.default_rng(0)
    big = np.full(1000, 5.0)  # norm 158, clipped to 2
    q = enc.quantise(big, rng)
    assert np.abs(q).max() <= 1023
    assert np.linalg.norm(q) <= enc.sensitivity
    x = rng.uniform(-0.05, 0.05, 1000)
    mean = np.mean([enc.quantise(x, rng) for _ in range(400)], axis=0)
    # stochastic rounding is unbiased: 400 draws average within 6 standard errors (0.5 / 20)
    assert np.abs(mean - x * enc.scale).max() < 0.15
    with pytest.raises(SecAggParameterError, match="update has 999 values, expected 1000"):
        enc.quantise(np.zeros(999), rng)
    with pytest.raises(SecAggParameterError, match="NaN"):
        enc.quantise(np.full(1000, np.nan), rng)


def test_distributed_noise_meets_the_target_at_min_survivors() -> None:
    sigma = distributed_noise_std(100.0, 1.2, 16)
    assert sigma == pytest.approx(1.2 * 100.0 / 4.0)
    # 16 survivors: variances add up to exactly the target; more survivors only add
    assert 16 * sigma**2 == pytest.approx((1.2 * 100.0) ** 2)
    enc = InputEncoding(20_000, 1.0, 8, 40, noise_std=sigma)
    rng = np.random.default_rng(1)
    total = np.sum([enc.noise(rng) for _ in range(16)], axis=0)
    assert np.std(total) == pytest.approx(120.0, rel=0.03)


def test_mask_expansion_is_the_cxof_stream() -> None:
    m32 = expand_mask(b"s" * 32, 9, b"self", 5, 20)
    m64 = expand_mask(b"s" * 32, 9, b"self", 5, 40)
    assert m32.dtype == np.uint64
    assert int(np.max(m32)) < 1 << 20
    assert int(np.max(m64)) < 1 << 40
    assert not np.array_equal(m32, expand_mask(b"s" * 32, 10, b"self", 5, 20))
    assert not np.array_equal(m32, expand_mask(b"s" * 32, 9, b"pair", 5, 20))
    assert np.array_equal(expand_mask(b"s" * 32, 9, b"self", 3, 20), m32[:3])


@pytest.mark.parametrize("bits", [20, 32, 33, 40, 64])
def test_accumulated_masks_equal_the_expanded_ones_exactly(bits: int) -> None:
    """The C accumulation adds and subtracts the very words expand_mask gives, modulo 2^k
    once reduced, for 4-byte (k <= 32) and 8-byte words."""
    rng = np.random.default_rng(bits)
    seeds = [bytes(rng.integers(0, 256, 32, dtype=np.uint8)) for _ in range(9)]
    signs = [1, -1, -1, 1, 1, -1, 1, -1, 1]
    start = rng.integers(0, 1 << 62, 300, dtype=np.uint64)
    want = start.copy()
    for seed, sign in zip(seeds, signs, strict=True):
        m = expand_mask(seed, 11, b"pair", 300, bits)
        want = want + m if sign > 0 else want - m
    got = start.copy()
    accumulate_masks(got, seeds, signs, round_id=11, purpose=b"pair", modulus_bits=bits)
    ring = np.uint64((1 << bits) - 1) if bits < 64 else np.uint64(2**64 - 1)
    assert np.array_equal(got & ring, want & ring)
    accumulate_masks(got, [], [], round_id=11, purpose=b"pair", modulus_bits=bits)
    assert np.array_equal(got & ring, want & ring)  # nothing to add: unchanged


def test_accumulation_refuses_bad_arguments() -> None:
    total = np.zeros(4, dtype=np.uint64)
    z_max = b"z" * CXOF_MAX_CUSTOMIZATION
    cxof128_accumulate(total.data, [b"s"], z_max, [1], 8)  # customization at its limit
    assert np.array_equal(total, np.frombuffer(cxof128(b"s", z_max, 32), "<u8"))
    with pytest.raises(ValueError, match="customization"):
        cxof128_accumulate(total.data, [b"s"], z_max + b"z", [1], 8)
    with pytest.raises(ValueError, match="word_bytes"):
        cxof128_accumulate(total.data, [b"s"], b"", [1], 5)
    with pytest.raises(ValueError, match="sign"):
        cxof128_accumulate(total.data, [b"s"], b"", [2], 8)
    with pytest.raises(ValueError, match="differ"):
        cxof128_accumulate(total.data, [b"s"], b"", [1, 1], 8)
    with pytest.raises(ValueError, match="uint64"):
        cxof128_accumulate(bytearray(12), [b"s"], b"", [1], 8)
    with pytest.raises(ValueError, match="contiguous uint64"):
        accumulate_masks(
            np.zeros(4, np.int64), [b"s"], [1], round_id=1, purpose=b"", modulus_bits=8
        )


def test_round_config_min_survivors_must_exceed_the_threshold() -> None:
    enc = InputEncoding(4, 1.0, 8, 16)
    ids = (1, 2, 3, 4)
    config = RoundConfig(1, bytes(32), ids, 3, 2, 3, enc)  # t + 1: accepted
    assert config.min_survivors == 3
    with pytest.raises(SecAggParameterError, match="need threshold < min_survivors"):
        RoundConfig(1, bytes(32), ids, 3, 2, 2, enc)
    assert RoundConfig(1, bytes(32), ids, 3, 2, 4, enc).min_survivors == 4
    with pytest.raises(SecAggParameterError, match="need threshold < min_survivors"):
        RoundConfig(1, bytes(32), ids, 3, 2, 5, enc)
    with pytest.raises(SecAggParameterError, match="threshold 4 outside"):
        RoundConfig(1, bytes(32), ids, 3, 4, 4, enc)


def test_secret_noise_stream_is_gaussian_and_fresh() -> None:
    enc = InputEncoding(40_000, 1.0, 8, 40, noise_std=25.0)
    first, second = enc.noise(), enc.noise()
    assert not np.array_equal(first, second)
    for draw in (first, second):
        assert abs(float(np.mean(draw))) < 0.5  # 6 standard errors of 25 / 200
        assert np.std(draw) == pytest.approx(25.0, rel=0.02)
        # the tails of a Gaussian: about 4.55% beyond two standard deviations
        assert np.mean(np.abs(draw) > 50) == pytest.approx(0.0455, abs=0.006)
    odd = InputEncoding(7, 1.0, 8, 40, noise_std=3.0).noise()
    assert odd.shape == (7,)
