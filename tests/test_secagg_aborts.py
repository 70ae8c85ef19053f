"""What a secure round reports when it stops, field by field (the coordinator logs and counts
these; refusals of unsafe unmasking requests are in test_secagg.py), the 64-bit ring's path end
to end, and the key material's limits."""

from __future__ import annotations

import numpy as np
import pytest

from pqlink._secagg_codec import MaskedInput
from pqlink.secagg import (
    AggregateResult,
    MalformedMessageError,
    RoundAborted,
    RoundKeys,
    SecAggParameterError,
)
from tests import secagg_harness as h


def test_too_few_adverts_abort_with_stage_reason_and_count() -> None:
    r = h.start(h.make_config(5, threshold=2, min_survivors=4, dimension=8))
    for u in (1, 2, 3):
        r.server.receive_advert(u, r.clients[u].advertise())
    assert r.server.close_adverts() == RoundAborted(7, "adverts", "too_few_clients", "3 adverts")


def test_too_few_key_shares_abort_with_stage_reason_and_count() -> None:
    r = h.start(h.make_config(5, threshold=2, min_survivors=4, dimension=8))
    h.through_adverts(r)
    for u in (1, 2, 5):
        r.server.receive_key_shares(u, r.clients[u].key_shares())
    assert r.server.close_key_shares() == RoundAborted(
        7, "key_shares", "too_few_clients", "3 sent keys"
    )


def test_a_round_in_the_64_bit_ring_sums_exactly() -> None:
    # 40 bits of precision need a modulus over 32 bits: inputs travel as 8-byte words
    config = h.make_config(4, threshold=2, min_survivors=3, dimension=8, precision_bits=40)
    assert config.encoding.modulus_bits > 32
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(8))
    message = r.clients[1].masked_input(ring[1])
    assert len(MaskedInput.from_bytes(message).vector) == 8 * 8
    r.server.receive_masked_input(1, message)
    result = h.finish(r, {u: ring[u] for u in (2, 3, 4)})
    assert isinstance(result, AggregateResult)
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in config.participants))


def test_a_masked_input_at_the_top_of_the_ring_is_taken_and_past_it_refused() -> None:
    r = h.start(h.make_config(3, threshold=1, min_survivors=2, dimension=2))
    h.through_shares(r)
    bits = r.config.encoding.modulus_bits
    top = MaskedInput(7, 1, bits, 2, np.array([(1 << bits) - 1, 0], "<u4").tobytes())
    r.server.receive_masked_input(1, top.to_bytes())
    over = MaskedInput(7, 2, bits, 2, np.array([1 << bits, 0], "<u4").tobytes())
    with pytest.raises(MalformedMessageError, match=r"^input of 2 holds values over 2\^k$"):
        r.server.receive_masked_input(2, over.to_bytes())


def test_round_keys_limits() -> None:
    key = h.identity(1)
    for round_id, client in ((0, 1), (2**64 - 1, 1), (3, 0xFFFF)):
        keys = RoundKeys(round_id, client, key)
        assert (keys.round_id, keys.client_id) == (round_id, client)
        assert len(keys.self_seed) == len(keys.pair_seed) == 32
        assert keys.self_seed != keys.pair_seed
    for round_id, client in ((-1, 1), (2**64, 1), (3, 0), (3, 0x10000)):
        with pytest.raises(
            SecAggParameterError, match=rf"^round {round_id} or client id {client} out of range$"
        ):
            RoundKeys(round_id, client, key)
