"""Secure aggregation's input encoding at its limits: the modulus formula against the
documented bound on a grid, every parameter check at its exact value and one past it, the
quantisation's extremes, and the noise stream's count, mean and spread."""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import pytest

from pqlink._secagg_encoding import (
    InputEncoding,
    _standard_gaussians,
    distributed_noise_std,
    modulus_bits_for,
)
from pqlink._secagg_graph import SecAggParameterError


def _documented_bits(n: int, b: int, sigma: float, d: int, eta: int) -> int:
    """k = ceil(log2(2 M + 1)), M = n (2^b - 1) + ceil(tau sigma sqrt(n)),
    tau = sqrt(2 ln(2 d 2^eta)) (no noise term without noise)."""
    m = n * (2**b - 1)
    if sigma > 0:
        m += math.ceil(math.sqrt(2 * math.log(2 * d * 2**eta)) * sigma * math.sqrt(n))
    return math.ceil(math.log2(2 * m + 1))


@pytest.mark.parametrize("sigma", [0.0, 0.5, 3.0, 40.0, 1000.0])
def test_modulus_bits_follow_the_documented_bound(sigma: float) -> None:
    for n in (1, 3, 50):
        for b in (1, 8, 16):
            for d, eta in ((1, 30), (2, 30), (1106, 30), (1106, 31), (1, 40)):
                got = modulus_bits_for(n, b, noise_std=sigma, dimension=d, eta=eta)
                assert got == _documented_bits(n, b, sigma, d, eta), (n, b, d, eta)
            assert modulus_bits_for(n, b, noise_std=sigma) == _documented_bits(n, b, sigma, 1, 30)


def test_modulus_bits_defaults_on_a_fine_noise_grid() -> None:
    # small bounds, so that any change of tau moves some result across a power of two
    for step in range(1, 400):
        sigma = step / 8
        assert modulus_bits_for(1, 1, noise_std=sigma) == _documented_bits(1, 1, sigma, 1, 30)
        assert modulus_bits_for(2, 1, noise_std=sigma, dimension=1106) == _documented_bits(
            2, 1, sigma, 1106, 30
        )


def test_modulus_bits_limits() -> None:
    assert modulus_bits_for(1, 52) == 53
    for clients, bits in ((0, 8), (1, 0), (1, 53)):
        with pytest.raises(
            SecAggParameterError, match=r"^need clients >= 1 and precision bits in 1\.\.52$"
        ):
            modulus_bits_for(clients, bits)
    # the most clients whose sum still fits in 64 bits at 52 bits of precision, and one more
    most = (2**63 - 1) // (2**52 - 1)
    assert modulus_bits_for(most, 52) == 64
    with pytest.raises(SecAggParameterError, match=r"^65 bits needed, over 64: lower"):
        modulus_bits_for(most + 1, 52)
    # the smallest noise adds one unit to the bound: 1 client at 1 bit, 2 * (1 + 1) + 1 = 5
    assert modulus_bits_for(1, 1) == 2
    assert modulus_bits_for(1, 1, noise_std=math.nextafter(0.0, 1.0)) == 3


def _encoding(**overrides: float) -> InputEncoding:
    values: dict[str, float] = {
        "dimension": 4,
        "clip": 1.0,
        "precision_bits": 8,
        "modulus_bits": 16,
        "noise_std": 0.0,
    }
    values.update(overrides)
    return InputEncoding(
        int(values["dimension"]),
        values["clip"],
        int(values["precision_bits"]),
        int(values["modulus_bits"]),
        values["noise_std"],
    )


def test_encoding_parameters_at_their_limits() -> None:
    tiny = math.nextafter(0.0, 1.0)
    accepted: list[dict[str, float]] = [
        {"dimension": 1},
        {"dimension": 1 << 26},
        {"clip": tiny},
        {"precision_bits": 1, "modulus_bits": 2},
        {"precision_bits": 63, "modulus_bits": 64},
        {"noise_std": 0.0},
        {"noise_std": 1e300},
    ]
    for ok in accepted:
        _encoding(**ok)
    refused: list[tuple[dict[str, float], str]] = [
        ({"dimension": 0}, r"^dimension 0 outside 1\.\.2\^26$"),
        ({"dimension": (1 << 26) + 1}, r"^dimension 67108865 outside"),
        ({"clip": 0.0}, r"^clip 0\.0 must be positive and finite$"),
        ({"clip": math.inf}, r"^clip inf must be"),
        ({"clip": math.nan}, r"^clip nan must be"),
        ({"precision_bits": 0}, r"^need 1 <= precision bits < modulus bits <= 64$"),
        ({"precision_bits": 16}, r"^need 1 <= precision bits"),
        ({"precision_bits": 8, "modulus_bits": 65}, r"^need 1 <= precision bits"),
        ({"noise_std": -tiny}, r"^noise std -5e-324 must be finite and >= 0$"),
        ({"noise_std": math.inf}, r"^noise std inf must be"),
        ({"noise_std": math.nan}, r"^noise std nan must be"),
    ]
    for overrides, message in refused:
        with pytest.raises(SecAggParameterError, match=message):
            _encoding(**overrides)


def test_quantisation_reaches_both_ends_exactly() -> None:
    enc = _encoding(precision_bits=8)
    top = 2**8 - 1
    rng = np.random.default_rng(0)
    assert enc.quantise([1.0, 0.0, 0.0, 0.0], rng).tolist() == [top, 0, 0, 0]
    assert enc.quantise([0.0, -1.0, 0.0, 0.0], rng).tolist() == [0, -top, 0, 0]
    # far over the clip: scaled down to it, never past either end
    assert enc.quantise([0.0, 0.0, 3e9, 0.0], rng).tolist() == [0, 0, top, 0]
    assert enc.quantise(np.array([[0.0, 0.0], [0.0, -1e150]]), rng).tolist() == [0, 0, 0, -top]
    out = enc.quantise([0.5, -0.5, 0.5, -0.5], rng)
    assert out.dtype == np.int64
    # exactly on a quantisation step: no coin can move it
    assert enc.quantise([0.0, 3 / top, 0.0, 0.0], rng).tolist() == [0, 3, 0, 0]


def test_quantisation_rounds_up_with_the_fraction_as_probability() -> None:
    enc = _encoding(dimension=20_000, precision_bits=8)
    # a quarter of a step in every coordinate (norm 0.14, under the clip): up with p = 1/4
    coins = enc.quantise(np.full(20_000, 0.25 / (2**8 - 1)), np.random.default_rng(1))
    assert set(coins.tolist()) == {0, 1}
    assert abs(float(coins.mean()) - 0.25) < 0.02  # 6 standard errors


def test_zero_noise_is_zeros_of_the_dimension() -> None:
    enc = _encoding(dimension=7)
    for rng in (None, np.random.default_rng(2)):
        zeros = enc.noise(rng)
        assert zeros.dtype == np.int64
        assert zeros.tolist() == [0] * 7


def test_noise_is_centred_with_the_configured_spread() -> None:
    enc = _encoding(dimension=40_000, noise_std=50.0)
    for rng in (None, np.random.default_rng(3)):
        noise = enc.noise(rng)
        assert noise.dtype == np.int64
        assert noise.shape == (40_000,)
        assert abs(float(noise.mean())) < 5 * 50 / math.sqrt(40_000)
        assert float(noise.std()) == pytest.approx(50.0, rel=0.03)
    unit = _encoding(dimension=40_000, noise_std=1.0)
    assert float(unit.noise(np.random.default_rng(4)).std()) == pytest.approx(1.0, rel=0.05)
    tiny = _encoding(dimension=10, noise_std=1e-9)  # rounds to zero, but is drawn
    assert tiny.noise().tolist() == [0] * 10


@pytest.mark.parametrize("count", [1, 2, 3, 1001])
def test_secret_gaussians_have_the_count_asked(count: int) -> None:
    assert _standard_gaussians(count).shape == (count,)


def test_secret_gaussians_are_standard_and_never_infinite() -> None:
    draws = _standard_gaussians(200_000)
    assert np.all(np.isfinite(draws))
    assert abs(float(draws.mean())) < 5 / math.sqrt(200_000)
    assert float(draws.std()) == pytest.approx(1.0, rel=0.01)
    # both tails, symmetric: a shifted or truncated uniform would skew them
    assert float(np.mean(draws > 2.0)) == pytest.approx(0.02275, rel=0.1)
    assert float(np.mean(draws < -2.0)) == pytest.approx(0.02275, rel=0.1)


def test_distributed_noise_std_limits() -> None:
    assert distributed_noise_std(10.0, 0.0, 1) == 0.0
    assert distributed_noise_std(10.0, 2.0, 1) == 20.0
    assert distributed_noise_std(10.0, 2.0, 4) == 10.0
    for sensitivity, z, survivors in ((10.0, 2.0, 0), (10.0, -1e-9, 4)):
        with pytest.raises(
            SecAggParameterError,
            match=r"^need min_survivors >= 1 and a noise multiplier >= 0$",
        ):
            distributed_noise_std(sensitivity, z, survivors)


def test_signed_sum_reads_the_ring_back_from_a_plain_list() -> None:
    enc = _encoding(modulus_bits=16)
    assert enc.signed_sum(np.array([0, 1, 2**15 - 1, 2**15, 2**16 - 1], np.uint64)).tolist() == [
        0,
        1,
        2**15 - 1,
        -(2**15),
        -1,
    ]
    ring = enc.to_ring(np.array([-3, 3], np.int64))
    assert enc.signed_sum(ring.tolist()).tolist() == [-3, 3]  # type: ignore[arg-type,unused-ignore]


def test_encode_is_quantise_plus_noise_and_decodes_back() -> None:
    enc = _encoding(dimension=6, clip=2.0, precision_bits=12, modulus_bits=20)
    update = np.array([0.5, -0.25, 1.0, -1.0, 0.0, 0.125])
    ring = enc.encode(update, np.random.default_rng(5))
    assert ring.dtype == np.uint64
    assert np.array_equal(ring, enc.to_ring(enc.quantise(update, np.random.default_rng(5))))
    decoded = enc.decode_sum(ring)
    assert decoded.dtype == np.float64
    assert np.all(np.abs(decoded - update) <= 1 / enc.scale)
    noisy = _encoding(dimension=40_000, clip=1.0, precision_bits=8, modulus_bits=20, noise_std=30)
    zeros = np.zeros(40_000)
    values = noisy.signed_sum(noisy.encode(zeros, np.random.default_rng(6)))
    assert float(values.std()) == pytest.approx(30.0, rel=0.05)
    assert abs(float(values.mean())) < 5 * 30 / math.sqrt(40_000)


class _Coins:
    """Rounding coins that all come up `value`: to put a coin between two fractions."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self, size: int) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        return np.full(size, self.value)


def test_quantisation_scales_in_double_precision_whatever_the_input_type() -> None:
    # a float32 update (what training produces): scaled in float64 its fraction is
    # 0.0805728, in float32 0.0805740; a coin between them tells the two apart
    enc = _encoding(dimension=1, clip=1.0, precision_bits=8)
    value = np.array([0.12580617], dtype=np.float32)
    coin = cast(np.random.Generator, _Coins(0.0805735))
    assert enc.quantise(value, coin).tolist() == [32]
    assert enc.quantise(value.astype(np.float64), coin).tolist() == [32]
    assert enc.quantise([0.12580617], coin).tolist() == [32]
