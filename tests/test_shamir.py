"""Shamir secret sharing (pqlink.shamir): recovery from any t shares, secrecy below t,
known answers with fixed coefficients, and the typed errors at each limit."""

from __future__ import annotations

import itertools
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pqlink.shamir import (
    MAX_SHARES,
    PRIME,
    SHARE_SIZE,
    InvalidShareError,
    NotEnoughSharesError,
    ShamirParameterError,
    Share,
    recover_secret,
    split_secret,
)

SECRET = bytes(range(1, 33))
S = int.from_bytes(SECRET, "big")


def test_known_answer_with_fixed_coefficients() -> None:
    # f(x) = S + 2x + 3x^2
    shares = split_secret(SECRET, 3, 4, coefficients=[2, 3])
    assert [(s.index, s.value) for s in shares] == [
        (1, S + 5),
        (2, S + 16),
        (3, S + 33),
        (4, S + 56),
    ]
    # coefficients at the top of the field wrap: f(x) = S + (p-1)x = S - x mod p
    wrapped = split_secret(SECRET, 2, 3, coefficients=[PRIME - 1])
    assert [s.value for s in wrapped] == [S - 1, S - 2, S - 3]
    assert recover_secret(wrapped[1:], 2) == SECRET


def test_share_encoding_known_answer() -> None:
    share = Share(0x0102, 0x0A0B)
    assert share.to_bytes() == b"\x01\x02" + bytes(64) + b"\x0a\x0b"
    assert Share.from_bytes(share.to_bytes()) == share
    assert repr(share) == "Share(index=258, <secret>)"


@pytest.mark.parametrize(("t", "n"), [(1, 1), (1, 3), (2, 3), (3, 5), (5, 5)])
def test_any_t_shares_recover(t: int, n: int) -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, t, n)
    for subset in itertools.combinations(shares, t):
        assert recover_secret(subset, t) == secret
        assert recover_secret(reversed(subset), t) == secret


def test_more_than_t_shares_recover() -> None:
    secret = os.urandom(32)
    shares = split_secret(secret, 4, 9)
    assert recover_secret(random.sample(shares, 7), 4) == secret


def test_t_minus_one_shares_refused() -> None:
    shares = split_secret(SECRET, 4, 6)
    with pytest.raises(NotEnoughSharesError, match=r"^3 shares, threshold 4$"):
        recover_secret(shares[:3], 4)
    assert recover_secret(shares[:4], 4) == SECRET


def test_t_minus_one_shares_are_uniform_whatever_the_secret() -> None:
    # Chi-square on the low byte of each of t-1 = 2 shares, for two very different secrets:
    # both must look uniform over 256 bins (df = 255; the 0.999 quantile is about 330.5).
    trials = 6000
    for secret in (bytes(32), b"\xff" * 32):
        for position in range(2):
            counts = [0] * 256
            for _ in range(trials):
                counts[split_secret(secret, 3, 5)[position].value & 0xFF] += 1
            expected = trials / 256
            chi2 = sum((c - expected) ** 2 / expected for c in counts)
            assert chi2 < 330.5, f"secret {secret[:1].hex()}.., share {position + 1}: {chi2:.1f}"


def test_wrong_share_is_detected() -> None:
    # A share garbled in transit is caught with probability 1 - 2^-265; a share crafted to
    # shift the secret is not (the Lagrange weights are public), which is why secure
    # aggregation checks every recovered seed against its owner's signed commitment.
    shares = list(split_secret(SECRET, 3, 5))
    shares[1] = Share(shares[1].index, int.from_bytes(os.urandom(65), "big") % PRIME)
    with pytest.raises(InvalidShareError, match="do not interpolate to a 32-byte secret"):
        recover_secret(shares[:3], 3)
    mixed = [*split_secret(SECRET, 3, 5)[:2], split_secret(os.urandom(32), 3, 5)[2]]
    with pytest.raises(InvalidShareError, match="do not interpolate"):
        recover_secret(mixed, 3)


def test_duplicate_index_rejected() -> None:
    shares = split_secret(SECRET, 2, 3)
    with pytest.raises(InvalidShareError, match=r"^share index 2 given twice$"):
        recover_secret([shares[1], shares[1]], 2)
    # a duplicate beyond the first t is still refused
    with pytest.raises(InvalidShareError, match=r"^share index 1 given twice$"):
        recover_secret([shares[0], shares[1], Share(1, 7)], 2)


def test_index_range_exact_and_one_over() -> None:
    assert Share(1, 0).index == 1
    assert Share(MAX_SHARES, PRIME - 1).index == MAX_SHARES
    with pytest.raises(InvalidShareError, match=r"^share index 0 outside 1..65535$"):
        Share(0, 1)
    with pytest.raises(InvalidShareError, match=r"^share index 65536 outside 1..65535$"):
        Share(MAX_SHARES + 1, 1)
    with pytest.raises(InvalidShareError, match="value is not a field element"):
        Share(1, PRIME)
    with pytest.raises(InvalidShareError, match="value is not a field element"):
        Share.from_bytes(b"\x00\x01" + PRIME.to_bytes(66, "big"))
    with pytest.raises(InvalidShareError, match=r"^share index 0 outside"):
        Share.from_bytes(bytes(SHARE_SIZE))


def test_parameters_at_their_limits() -> None:
    assert len(split_secret(SECRET, 1, 1)) == 1
    with pytest.raises(ShamirParameterError, match=r"^threshold 0 outside 1..3$"):
        split_secret(SECRET, 0, 3)
    with pytest.raises(ShamirParameterError, match=r"^threshold 4 outside 1..3$"):
        split_secret(SECRET, 4, 3)
    with pytest.raises(ShamirParameterError, match=r"^share count 0 outside 1..65535$"):
        split_secret(SECRET, 1, 0)
    with pytest.raises(ShamirParameterError, match=r"^share count 65536 outside 1..65535$"):
        split_secret(SECRET, 1, MAX_SHARES + 1)
    with pytest.raises(ShamirParameterError, match=r"^secret must be 32 bytes, got 31$"):
        split_secret(SECRET[:31], 1, 1)
    with pytest.raises(ShamirParameterError, match=r"^secret must be 32 bytes, got 33$"):
        split_secret(SECRET + b"\x00", 1, 1)
    with pytest.raises(ShamirParameterError, match=r"^need 2 coefficients"):
        split_secret(SECRET, 3, 3, coefficients=[1])
    with pytest.raises(ShamirParameterError, match=r"^need 1 coefficients"):
        split_secret(SECRET, 2, 3, coefficients=[PRIME])
    with pytest.raises(ShamirParameterError, match=r"^threshold 0 must be at least 1$"):
        recover_secret([], 0)


@given(st.binary())
def test_share_decoder_raises_only_its_error(data: bytes) -> None:
    try:
        share = Share.from_bytes(data)
    except InvalidShareError:
        return
    assert share.to_bytes() == data


def test_shares_at_chosen_indices() -> None:
    # f(x) = S + 2x + 3x^2 at the holders' own ids
    shares = split_secret(SECRET, 3, 3, indices=[7, 300, MAX_SHARES], coefficients=[2, 3])
    assert [(s.index, s.value) for s in shares] == [
        (7, S + 14 + 147),
        (300, S + 600 + 270_000),
        (MAX_SHARES, S + 2 * MAX_SHARES + 3 * MAX_SHARES**2),
    ]
    assert recover_secret(reversed(shares), 3) == SECRET
    with pytest.raises(ShamirParameterError, match=r"^need 3 distinct indices$"):
        split_secret(SECRET, 2, 3, indices=[1, 2, 2])
    with pytest.raises(ShamirParameterError, match=r"^need 3 distinct indices$"):
        split_secret(SECRET, 2, 3, indices=[1, 2])
    with pytest.raises(ShamirParameterError, match=r"^share indices must lie in 1..65535$"):
        split_secret(SECRET, 2, 2, indices=[1, MAX_SHARES + 1])
    with pytest.raises(ShamirParameterError, match=r"^share indices must lie in 1..65535$"):
        split_secret(SECRET, 2, 2, indices=[0, 1])


def test_exactly_the_first_t_shares_are_interpolated() -> None:
    shares = split_secret(SECRET, 3, 5)
    garbled = Share(shares[3].index, (shares[3].value + 1) % PRIME)
    # a share beyond the first t takes no part in the result
    assert recover_secret([*shares[:3], garbled], 3) == SECRET
    with pytest.raises(InvalidShareError, match="do not interpolate"):
        recover_secret([garbled, *shares[:2]], 3)


@pytest.mark.parametrize("t", [2, 3, 5])
def test_t_minus_one_shares_interpolate_to_no_secret(t: int) -> None:
    # the t-1 random coefficients make the polynomial of degree t-1: the one of degree t-2
    # through any t-1 shares misses the secret (it is off the 256-bit range but for 2^-265)
    shares = split_secret(SECRET, t, t)
    with pytest.raises(InvalidShareError, match="do not interpolate"):
        recover_secret(shares[: t - 1], t - 1)
    assert recover_secret(shares, t) == SECRET


def test_recovered_value_at_the_top_of_the_secret_range() -> None:
    assert recover_secret([Share(1, 2**256 - 1)], 1) == b"\xff" * 32
    assert recover_secret([Share(1, 0)], 1) == bytes(32)
    with pytest.raises(InvalidShareError, match="do not interpolate to a 32-byte secret"):
        recover_secret([Share(1, 2**256)], 1)


def test_coefficients_at_the_ends_of_the_field() -> None:
    # a zero coefficient is a field element like any other: f(x) = S
    assert [s.value for s in split_secret(SECRET, 2, 3, coefficients=[0])] == [S, S, S]
    assert [s.value for s in split_secret(SECRET, 3, 3, coefficients=[0, 0])] == [S, S, S]
    with pytest.raises(ShamirParameterError, match=r"^need 1 coefficients in 0..p-1$"):
        split_secret(SECRET, 2, 3, coefficients=[-1])


def test_the_largest_share_count_is_taken() -> None:
    shares = split_secret(SECRET, 1, MAX_SHARES)
    assert len(shares) == MAX_SHARES
    assert shares[-1] == Share(MAX_SHARES, S)


def test_share_encoding_at_the_top_indices() -> None:
    top = Share(MAX_SHARES, PRIME - 1)
    assert top.to_bytes() == b"\xff\xff" + (PRIME - 1).to_bytes(66, "big")
    assert Share.from_bytes(top.to_bytes()) == top
    half = Share(0x8000, 1)
    assert half.to_bytes() == b"\x80\x00" + bytes(65) + b"\x01"
    assert Share.from_bytes(b"\x80\x00" + bytes(65) + b"\x01") == half
