"""The server's side of distributed crypto processing, without a broker: masked inputs opened
by workers (`open_masked_input`), folded into partial sums and handed to the server
(`receive_masked_sum`) next to inputs it took itself; the exact sum either way, and every
refusal with its error. Also the round configuration's limits at their exact values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pqlink._secagg_codec import MaskedInput
from pqlink.secagg import (
    AggregateResult,
    MalformedMessageError,
    ReplayedMessageError,
    RoundConfig,
    SecAggParameterError,
    UnexpectedSenderError,
    open_masked_input,
)
from tests import secagg_harness as h


def _masked_round(n: int = 5) -> tuple[h.Round, dict[int, bytes], dict[int, np.ndarray]]:
    config = h.make_config(n, threshold=2, min_survivors=3, dimension=16)
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(11))
    masked = {u: r.clients[u].masked_input(ring[u]) for u in config.participants}
    return r, masked, plain


def _fold(messages: list[bytes], bits: int, dimension: int) -> np.ndarray:
    """What a crypto worker does: open each input, sum modulo 2^k."""
    total = np.zeros(dimension, dtype=np.uint64)
    for m in messages:
        total += open_masked_input(m, bits, dimension).vector
    return total & np.uint64((1 << bits) - 1)


def _unmask(r: h.Round) -> AggregateResult:
    """The rounds' unmasking, every input already with the server."""
    result = h.finish(r, {})
    assert isinstance(result, AggregateResult), result
    return result


def test_partial_sums_from_two_workers_and_a_direct_input_sum_exactly() -> None:
    r, masked, plain = _masked_round(5)
    enc = r.config.encoding
    r.server.receive_masked_sum([1, 2], _fold([masked[1], masked[2]], enc.modulus_bits, 16))
    r.server.receive_masked_sum([4, 5], _fold([masked[4], masked[5]], enc.modulus_bits, 16))
    r.server.receive_masked_input(3, masked[3])
    result = _unmask(r)
    assert result.survivors == (1, 2, 3, 4, 5)
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in range(1, 6)))
    assert np.array_equal(result.decoded_sum(), result.signed_sum() / enc.scale)


def test_partial_sums_with_a_client_gone_after_sharing_keys() -> None:
    r, masked, plain = _masked_round(5)
    bits = r.config.encoding.modulus_bits
    r.server.receive_masked_sum([1, 3], _fold([masked[1], masked[3]], bits, 16))
    r.server.receive_masked_sum([4], _fold([masked[4]], bits, 16))
    r.server.receive_masked_sum([5], _fold([masked[5]], bits, 16))
    result = _unmask(r)  # client 2 never sent its input
    assert (result.survivors, result.dropped) == ((1, 3, 4, 5), (2,))
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in (1, 3, 4, 5)))


def test_partial_sums_refused_whole_with_their_reason() -> None:
    r, masked, _ = _masked_round(4)
    bits = r.config.encoding.modulus_bits
    good = _fold([masked[1]], bits, 16)
    cases: list[tuple[list[int], np.ndarray, type[Exception], str]] = [
        ([1], good.astype(np.int64), MalformedMessageError, r"^partial sum is not 16 u64 values$"),
        ([1], good[:15], MalformedMessageError, r"^partial sum is not 16 u64 values$"),
        (
            [1],
            good | np.uint64(1 << bits),
            MalformedMessageError,
            r"^partial sum holds values over 2\^k$",
        ),
        ([], good, MalformedMessageError, r"^partial sum of senders \[\]: empty or repeated$"),
        ([1, 1], good, MalformedMessageError, r"^partial sum of senders \[1, 1\]: empty"),
        ([9], good, UnexpectedSenderError, r"^client 9 sent no shares$"),
    ]
    for senders, vector, error, message in cases:
        with pytest.raises(error, match=message):
            r.server.receive_masked_sum(senders, vector)
    top = np.full(16, (1 << bits) - 1, dtype=np.uint64)  # the top of the ring is a residue
    r.server.receive_masked_sum([3], top)
    r.server.receive_masked_sum([1], good)
    with pytest.raises(ReplayedMessageError, match=r"^input of client 1 counted already$"):
        r.server.receive_masked_sum([1, 2], _fold([masked[1], masked[2]], bits, 16))
    r.server.receive_masked_input(2, masked[2])
    with pytest.raises(ReplayedMessageError, match=r"^input of client 2 counted already$"):
        r.server.receive_masked_sum([2], _fold([masked[2]], bits, 16))
    # the refused partials left nothing behind: 1 and 2 count once each
    assert r.server.close_inputs() is not None


def test_a_worker_opens_an_input_only_in_the_round_s_ring() -> None:
    r, masked, _ = _masked_round(3)
    bits = r.config.encoding.modulus_bits
    opened = open_masked_input(masked[2], bits, 16)
    assert (opened.round_id, opened.sender, opened.modulus_bits) == (7, 2, bits)
    assert opened.vector.dtype == np.uint64
    assert opened.vector.shape == (16,)
    assert np.array_equal(open_masked_input(masked[2]).vector, opened.vector)  # as it says
    with pytest.raises(MalformedMessageError, match=rf"^input of 2: 16 values mod 2\^{bits}, "):
        open_masked_input(masked[2], bits + 1, 16)
    with pytest.raises(MalformedMessageError, match=r"expected 17 mod"):
        open_masked_input(masked[2], bits, 17)
    over = MaskedInput(7, 2, 20, 2, np.array([1 << 20, 0], "<u4").tobytes()).to_bytes()
    with pytest.raises(MalformedMessageError, match=r"^input of 2 holds values over 2\^k$"):
        open_masked_input(over, 20, 2)
    top = MaskedInput(7, 2, 20, 2, np.array([(1 << 20) - 1, 0], "<u4").tobytes()).to_bytes()
    assert open_masked_input(top, 20, 2).vector.tolist() == [(1 << 20) - 1, 0]
    full = MaskedInput(7, 2, 64, 1, np.array([2**64 - 1], "<u8").tobytes()).to_bytes()
    assert open_masked_input(full, 64, 1).vector.tolist() == [2**64 - 1]


def test_round_config_limits() -> None:
    base = h.make_config(4, threshold=2, min_survivors=3, dimension=8)
    for ok in (
        {"round_id": 0},
        {"round_id": 2**64 - 1},
        {"participants": (1, 2, 3, 0xFFFF)},
        {"threshold": 3, "min_survivors": 4},  # t = min(degree, n - 1) = 3
    ):
        dataclasses.replace(base, **ok)
    refused: list[tuple[dict[str, object], str]] = [
        ({"round_id": -1}, r"^round id -1 is not a u64$"),
        ({"round_id": 2**64}, r"^round id 18446744073709551616 is not a u64$"),
        ({"graph_seed": bytes(31)}, r"^graph seed must be 32 bytes, got 31$"),
        ({"participants": (1, 2, 3, 0)}, r"^participants must be distinct ids in 1\.\.65535$"),
        ({"participants": (1, 2, 3, 0x10000)}, r"^participants must be distinct"),
        ({"participants": (1, 2, 3, 3)}, r"^participants must be distinct"),
        ({"threshold": 0}, r"^threshold 0 outside 1\.\.degree$"),
        ({"threshold": 4, "min_survivors": 4}, r"^threshold 4 outside 1\.\.degree$"),
        ({"min_survivors": 2}, r"^need threshold < min_survivors <= participants$"),
        ({"min_survivors": 5}, r"^need threshold < min_survivors <= participants$"),
    ]
    for overrides, message in refused:
        with pytest.raises(SecAggParameterError, match=message):
            dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    assert isinstance(base, RoundConfig)
