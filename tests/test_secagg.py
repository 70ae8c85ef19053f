"""Secure aggregation (pqlink.secagg) end to end in memory: exact sums, dropouts, aborts,
refused unmasking requests, forged / replayed / out-of-round messages, uniform masked inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pqlink._errors import AuthenticationError
from pqlink._secagg_codec import (
    Advert,
    ForwardedKeyShares,
    KeyShares,
    UnmaskRequest,
    UnmaskResponse,
)
from pqlink.ascon import decrypt
from pqlink.secagg import (
    AggregateResult,
    ForgedMessageError,
    InsufficientNeighboursError,
    MalformedMessageError,
    ReplayedMessageError,
    RoundAborted,
    SecAggClient,
    SecAggStateError,
    UnexpectedSenderError,
    UnmaskRefusedError,
    WrongRoundError,
    _mask_key,
    _share_ad,
    _share_key,
    _share_nonce,
    decode_bundle,
)
from pqlink.shamir import PRIME, SHARE_SIZE, Share
from tests import secagg_harness as h


def flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("n", [3, 10, 25])
def test_unmasked_sum_equals_plain_sum_exactly(n: int) -> None:
    config = h.make_config(n, dimension=1106)
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(n))
    result = h.finish(r, ring)
    assert isinstance(result, AggregateResult)
    assert result.survivors == config.participants
    assert result.dropped == ()
    want = np.sum(list(plain.values()), axis=0)
    assert np.array_equal(result.signed_sum(), want)
    # and the server never saw an input in the clear
    for u in config.participants:
        assert not np.array_equal(r.server._c.inputs[u], ring[u])


def test_sparse_harary_graph_round_is_exact() -> None:
    # 25 clients on a degree-8 graph: masks cancel only along the graph's edges.
    config = h.make_config(25, degree=8, threshold=5, min_survivors=20)
    r = h.start(config)
    assert all(len(c.neighbours) == 8 for c in r.clients.values())
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(3))
    dropped = frozenset({2, 9, 17})
    result = h.finish(r, ring, dropped=dropped)
    assert isinstance(result, AggregateResult)
    want = np.sum([q for u, q in plain.items() if u not in dropped], axis=0)
    assert np.array_equal(result.signed_sum(), want)


def test_twenty_percent_dropouts_after_key_sharing_recovered_exactly() -> None:
    config = h.make_config(50, dimension=1106, dropout_fraction=0.2)
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(50))
    dropped = frozenset(range(3, 51, 5))  # 10 of 50
    result = h.finish(r, ring, dropped=dropped)
    assert isinstance(result, AggregateResult)
    assert result.dropped == tuple(sorted(dropped))
    assert len(result.survivors) == 40
    want = np.sum([q for u, q in plain.items() if u not in dropped], axis=0)
    assert np.array_equal(result.signed_sum(), want)


def test_dropped_pair_seeds_are_rebuilt_as_soon_as_t_shares_are_in() -> None:
    config = h.make_config(6, threshold=3, min_survivors=4, dimension=32)
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(11))
    for u in (1, 2, 3, 4, 5):  # 6 dropped after sharing
        r.server.receive_masked_input(u, r.clients[u].masked_input(ring[u]))
    request = r.server.close_inputs()
    assert isinstance(request, bytes)
    for u in (1, 2):  # t - 1 answers: nothing rebuilt yet
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    assert 6 not in r.server._rebuilt
    r.server.receive_unmask_response(3, r.clients[3].unmask(request))  # the t-th
    assert [v for v, _ in r.server._rebuilt[6]] == [1, 2, 3, 4, 5]
    for u in (4, 5):
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    result = r.server.finish()
    assert isinstance(result, AggregateResult)
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in (1, 2, 3, 4, 5)))


def test_a_bad_share_among_the_first_t_is_left_to_finish_which_aborts() -> None:
    config = h.make_config(6, threshold=3, min_survivors=4, dimension=32)
    r = h.start(config)
    h.through_shares(r)
    ring, _ = h.random_inputs(config, np.random.default_rng(12))
    for u in (1, 2, 3, 4, 5):
        r.server.receive_masked_input(u, r.clients[u].masked_input(ring[u]))
    request = r.server.close_inputs()
    assert isinstance(request, bytes)
    answer = UnmaskResponse.from_bytes(r.clients[1].unmask(request))
    shares = tuple(
        (o, k, Share(sh.index, (sh.value + 1) % PRIME) if o == 6 else sh)
        for o, k, sh in answer.shares
    )
    r.server.receive_unmask_response(1, dataclasses.replace(answer, shares=shares).to_bytes())
    for u in (2, 3, 4, 5):
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    assert 6 not in r.server._rebuilt
    # 1's share shifts the secret by its Lagrange weight: a 32-byte seed, not the committed one
    assert r.server.finish() == RoundAborted(
        7, "unmask", "bad_share", "client 6: seed not committed"
    )


def test_noisy_inputs_sum_exactly_with_their_noise() -> None:
    config = h.make_config(10, noise_std=40.0)
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(4))
    result = h.finish(r, ring)
    assert isinstance(result, AggregateResult)
    assert np.array_equal(result.signed_sum(), np.sum(list(plain.values()), axis=0))


def test_fewer_survivors_than_the_minimum_aborts_before_unmasking() -> None:
    config = h.make_config(10, threshold=6, min_survivors=7)
    # exactly min_survivors survive: the round completes
    r = h.start(config)
    h.through_shares(r)
    ring, _ = h.random_inputs(config, np.random.default_rng(5))
    result = h.finish(r, ring, dropped=frozenset({1, 2, 3}))
    assert isinstance(result, AggregateResult)
    # one fewer: aborted, no request is ever produced, nothing is recovered
    r = h.start(config)
    h.through_shares(r)
    result = h.finish(r, ring, dropped=frozenset({1, 2, 3, 4}))
    assert result == RoundAborted(7, "inputs", "too_few_survivors", "6 inputs")
    assert r.request == b""
    with pytest.raises(SecAggStateError):
        r.server.finish()


def test_fewer_responses_than_the_threshold_aborts() -> None:
    config = h.make_config(6, threshold=4, min_survivors=5)
    r = h.start(config)
    h.through_shares(r)
    ring, _ = h.random_inputs(config, np.random.default_rng(6))
    for u in config.participants:
        r.server.receive_masked_input(u, r.clients[u].masked_input(ring[u]))
    request = r.server.close_inputs()
    assert isinstance(request, bytes)
    for u in (1, 2, 3):  # three answers, threshold four
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    result = r.server.finish()
    assert isinstance(result, RoundAborted)
    assert (result.stage, result.reason) == ("unmask", "too_few_shares")


def _ready_for_unmask(n: int = 5) -> h.Round:
    config = h.make_config(n, threshold=2, min_survivors=3)
    r = h.start(config)
    h.through_shares(r)
    ring, _ = h.random_inputs(config, np.random.default_rng(7))
    for u in config.participants:
        r.clients[u].masked_input(ring[u])
    return r


def test_request_for_both_kinds_of_share_is_refused() -> None:
    r = _ready_for_unmask()
    client = r.clients[1]
    request = UnmaskRequest(7, (1, 2, 3, 4), (4, 5)).to_bytes()
    with pytest.raises(UnmaskRefusedError, match=r"both_kinds_requested \[4\]"):
        client.unmask(request)
    assert [(e.name, dict(e.fields)) for e in client.events] == [
        (
            "secagg_unmask_refused",
            {"round": 7, "client": 1, "reason": "both_kinds_requested", "ids": "4"},
        )
    ]
    # having refused, it answers nothing more this round, not even a proper request
    with pytest.raises(UnmaskRefusedError, match="second_request"):
        client.unmask(UnmaskRequest(7, (1, 2, 3, 4), (5,)).to_bytes())
    assert dict(client.events[1].fields) == {
        "round": 7,
        "client": 1,
        "reason": "second_request",
        "ids": "",
    }


@pytest.mark.parametrize(
    ("survivors", "dropped", "why", "ids"),
    [
        ((2, 3, 4), (1,), "self_listed_as_dropped", "1"),
        ((2, 3, 4, 5), (), "self_not_listed", "1"),
        ((1, 2), (3, 4, 5), "too_few_survivors", "2"),
    ],
)
def test_other_unsafe_requests_are_refused(
    survivors: tuple[int, ...], dropped: tuple[int, ...], why: str, ids: str
) -> None:
    r = _ready_for_unmask()
    with pytest.raises(UnmaskRefusedError, match=why):
        r.clients[1].unmask(UnmaskRequest(7, survivors, dropped).to_bytes())
    assert [(e.name, dict(e.fields)) for e in r.clients[1].events] == [
        ("secagg_unmask_refused", {"round": 7, "client": 1, "reason": why, "ids": ids})
    ]


def test_exactly_min_survivors_is_answered() -> None:
    r = _ready_for_unmask()
    response = r.clients[1].unmask(UnmaskRequest(7, (1, 2, 3), (4, 5)).to_bytes())
    assert response
    assert r.clients[1].events == []


def test_a_second_request_is_refused() -> None:
    r = _ready_for_unmask()
    request = UnmaskRequest(7, (1, 2, 3, 4, 5), ()).to_bytes()
    r.clients[1].unmask(request)
    with pytest.raises(UnmaskRefusedError, match="second_request"):
        r.clients[1].unmask(request)


# --- adverts ---------------------------------------------------------------------------------


def _advertised(n: int = 4, round_id: int = 7) -> tuple[h.Round, dict[int, bytes]]:
    r = h.start(h.make_config(n, round_id=round_id, threshold=2, min_survivors=3))
    return r, {u: c.advertise() for u, c in r.clients.items()}


def test_forged_advert_rejected_by_server_and_client() -> None:
    r, adverts = _advertised()
    forged = flip(adverts[2], 20)  # inside the public key
    with pytest.raises(ForgedMessageError, match=r"^advert of 2 not signed by it$"):
        r.server.receive_advert(2, forged)
    with pytest.raises(ForgedMessageError, match=r"^advert of 2 not signed by it$"):
        r.clients[1].receive_advert(forged)
    # signed by someone else's identity: still forged
    advert = Advert.from_bytes(adverts[2])
    other = h.identity(3).sign(advert.signed_part(), b"iomt-secagg advert")
    with pytest.raises(ForgedMessageError):
        r.clients[1].receive_advert(dataclasses.replace(advert, signature=other).to_bytes())
    r.clients[1].receive_advert(adverts[2])  # the genuine one is still accepted


def test_replayed_advert_rejected() -> None:
    r, adverts = _advertised()
    r.server.receive_advert(2, adverts[2])
    r.clients[1].receive_advert(adverts[2])
    with pytest.raises(ReplayedMessageError):
        r.server.receive_advert(2, adverts[2])
    with pytest.raises(ReplayedMessageError):
        r.clients[1].receive_advert(adverts[2])


def test_advert_of_another_round_rejected() -> None:
    r, _ = _advertised(round_id=7)
    _, old = _advertised(round_id=6)
    with pytest.raises(WrongRoundError):
        r.server.receive_advert(2, old[2])
    with pytest.raises(WrongRoundError):
        r.clients[1].receive_advert(old[2])
    # the round field rewritten to the current round: the signature no longer verifies
    moved = dataclasses.replace(Advert.from_bytes(old[2]), round_id=7).to_bytes()
    with pytest.raises(ForgedMessageError):
        r.clients[1].receive_advert(moved)


def test_advert_from_wrong_or_unknown_sender_rejected() -> None:
    r, adverts = _advertised()
    with pytest.raises(UnexpectedSenderError):
        r.server.receive_advert(3, adverts[2])  # transport says 3, message says 2
    with pytest.raises(UnexpectedSenderError):
        r.clients[1].receive_advert(adverts[1])  # itself
    stranger = SecAggClient(h.make_config(5, threshold=2, min_survivors=3), 5, h.identity(5), {})
    with pytest.raises(UnexpectedSenderError):
        r.server.receive_advert(5, stranger.advertise())


# --- keys and shares -------------------------------------------------------------------------


def _sent_key_shares(round_id: int = 7) -> tuple[h.Round, dict[int, bytes]]:
    config = h.make_config(4, round_id=round_id, threshold=2, min_survivors=3)
    r = h.start(config)
    h.through_adverts(r)
    return r, {u: c.key_shares() for u, c in r.clients.items()}


def _after_key_shares(round_id: int = 7) -> tuple[h.Round, dict[int, list[bytes]]]:
    r, sent = _sent_key_shares(round_id)
    for u, msg in sent.items():
        r.server.receive_key_shares(u, msg)
    bundles = r.server.close_key_shares()
    assert isinstance(bundles, dict)
    return r, {u: list(decode_bundle(b)[1]) for u, b in bundles.items()}


def test_forged_key_shares_rejected_by_client() -> None:
    r, fwd = _after_key_shares()
    item = fwd[4][0]  # from client 1 to client 4
    msg = ForwardedKeyShares.from_bytes(item)
    assert (msg.sender, msg.entry.recipient) == (1, 4)
    e = msg.entry
    for entry in (
        dataclasses.replace(e, share_ciphertext=flip(e.share_ciphertext, 5)),
        dataclasses.replace(e, mask_ciphertext=flip(e.mask_ciphertext, 5)),
        dataclasses.replace(e, shares=flip(e.shares, 5)),
        dataclasses.replace(e, escrow=flip(e.escrow, 5)),
    ):
        swapped = dataclasses.replace(msg, entry=entry).to_bytes()
        with pytest.raises(ForgedMessageError, match="not the ones it signed"):
            r.clients[4].receive_key_shares(swapped)
    resigned = dataclasses.replace(msg, signature=flip(msg.signature, 0)).to_bytes()
    with pytest.raises(ForgedMessageError, match="not signed by it"):
        r.clients[4].receive_key_shares(resigned)
    # the server relabelling who sent it: the signature is checked under the other's key
    relabelled = dataclasses.replace(msg, sender=2).to_bytes()
    with pytest.raises(ForgedMessageError, match="not signed by it"):
        r.clients[4].receive_key_shares(relabelled)
    r.clients[4].receive_key_shares(item)


def test_shares_that_do_not_authenticate_rejected() -> None:
    # a sender that signs shares which do not open under the key it encapsulated
    r, sent = _sent_key_shares()
    msg = KeyShares.from_bytes(sent[1])
    for index in (0, 70, len(msg.entries[0].shares) - 1):
        entries = list(msg.entries)
        bad = entries[2]  # for client 4
        entries[2] = dataclasses.replace(bad, shares=flip(bad.shares, index))
        forged = h.resigned(dataclasses.replace(msg, entries=tuple(entries)))
        r.server.receive_key_shares(1, forged)  # the server cannot tell: the shares are sealed
        for u in (2, 3, 4):
            r.server.receive_key_shares(u, sent[u])
        bundles = r.server.close_key_shares()
        assert isinstance(bundles, dict)
        item = decode_bundle(bundles[4])[1][0]
        with pytest.raises(ForgedMessageError, match="do not authenticate"):
            r.clients[4].receive_key_shares(item)
        r, sent = _sent_key_shares()


def test_forged_key_shares_rejected_by_server() -> None:
    config = h.make_config(3, threshold=1, min_survivors=2)
    r = h.start(config)
    h.through_adverts(r)
    ks = KeyShares.from_bytes(r.clients[1].key_shares())
    first = ks.entries[0]
    bad = dataclasses.replace(first, share_ciphertext=flip(first.share_ciphertext, 9))
    tampered = dataclasses.replace(ks, entries=(bad, *ks.entries[1:]))
    with pytest.raises(ForgedMessageError, match="not signed by it"):
        r.server.receive_key_shares(1, tampered.to_bytes())
    with pytest.raises(UnexpectedSenderError, match="claims to be 1"):
        r.server.receive_key_shares(2, ks.to_bytes())
    r.server.receive_key_shares(1, ks.to_bytes())
    with pytest.raises(ReplayedMessageError):
        r.server.receive_key_shares(1, ks.to_bytes())


def test_key_shares_to_a_non_neighbour_rejected_by_server() -> None:
    r, sent = _sent_key_shares()
    msg = KeyShares.from_bytes(sent[1])
    stray = dataclasses.replace(msg.entries[0], recipient=9)
    with pytest.raises(UnexpectedSenderError, match="may not share with 9"):
        r.server.receive_key_shares(1, h.resigned(dataclasses.replace(msg, entries=(stray,))))
    # fewer entries than the threshold (2): exactly 2 are taken, 1 is refused
    short = dataclasses.replace(msg, entries=msg.entries[:1])
    with pytest.raises(MalformedMessageError, match="fewer than t"):
        r.server.receive_key_shares(1, h.resigned(short))
    r.server.receive_key_shares(1, h.resigned(dataclasses.replace(msg, entries=msg.entries[:2])))


def test_replayed_key_shares_rejected() -> None:
    r, fwd = _after_key_shares()
    r.clients[4].receive_key_shares(fwd[4][0])
    with pytest.raises(ReplayedMessageError):
        r.clients[4].receive_key_shares(fwd[4][0])


def test_key_shares_of_another_round_or_recipient_rejected() -> None:
    r, fwd = _after_key_shares(round_id=7)
    _, old = _after_key_shares(round_id=6)
    with pytest.raises(WrongRoundError):
        r.clients[4].receive_key_shares(old[4][0])
    with pytest.raises(UnexpectedSenderError, match="addressed to 4"):
        r.clients[3].receive_key_shares(fwd[4][0])
    # an old entry relabelled into this round: its signature names the other round
    moved = dataclasses.replace(ForwardedKeyShares.from_bytes(old[4][0]), round_id=7).to_bytes()
    with pytest.raises(ForgedMessageError):
        r.clients[4].receive_key_shares(moved)


def test_one_sided_pair_neither_forwarded_nor_masked() -> None:
    # 1 never got 2's advert, so 1 did not encapsulate to 2: the server forwards neither
    # direction of the pair, and a client refuses an entry from a neighbour it did not address
    config = h.make_config(4, threshold=2, min_survivors=3, dimension=32)
    r = h.start(config)
    adverts = {u: c.advertise() for u, c in r.clients.items()}
    for u in r.clients:
        r.server.receive_advert(u, adverts[u])
    bundles = r.server.close_adverts()
    assert isinstance(bundles, dict)
    for u, bundle in bundles.items():
        for item in decode_bundle(bundle)[1]:
            if (u, Advert.from_bytes(item).sender) != (1, 2):
                r.clients[u].receive_advert(item)
    sent = {u: c.key_shares() for u, c in r.clients.items()}
    for u, msg in sent.items():
        r.server.receive_key_shares(u, msg)
    fwd = r.server.close_key_shares()
    assert isinstance(fwd, dict)
    senders = {
        u: {ForwardedKeyShares.from_bytes(i).sender for i in decode_bundle(b)[1]}
        for u, b in fwd.items()
    }
    assert senders == {1: {3, 4}, 2: {3, 4}, 3: {1, 2, 4}, 4: {1, 2, 3}}
    h.deliver(fwd, {u: c.receive_key_shares for u, c in r.clients.items()})
    # what the server would refuse to forward, the client refuses too
    _, fwd2 = _after_key_shares()
    from_2 = next(i for i in fwd2[1] if ForwardedKeyShares.from_bytes(i).sender == 2)
    with pytest.raises(UnexpectedSenderError, match="no keys and shares expected from 2"):
        r.clients[1].receive_key_shares(from_2)
    ring, plain = h.random_inputs(config, np.random.default_rng(3))
    result = h.finish(r, ring, dropped=frozenset({2}))
    assert isinstance(result, AggregateResult)
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in (1, 3, 4)))


def test_recovered_pair_key_opens_no_share_sent_to_the_dropped_client() -> None:
    # rebuilding a dropped client's mask key must not unseal the shares it received: those
    # were encapsulated to its random share key, which nobody else ever holds
    r, fwd = _after_key_shares()
    item = ForwardedKeyShares.from_bytes(fwd[4][0])
    dropped = r.clients[4]
    mask_kem = _mask_key(dropped._pair_seed, 7, 4)
    shared = mask_kem.decapsulate(item.entry.share_ciphertext)
    key = _share_key(shared, 7, item.sender, 4, item.entry.share_ciphertext)
    with pytest.raises(AuthenticationError):
        decrypt(key, _share_nonce(item.sender, 4), _share_ad(7, item.sender, 4), item.entry.shares)
    # and the same derivation under the real share key does open them
    real = dropped._kem.decapsulate(item.entry.share_ciphertext)
    key = _share_key(real, 7, item.sender, 4, item.entry.share_ciphertext)
    plain = decrypt(
        key, _share_nonce(item.sender, 4), _share_ad(7, item.sender, 4), item.entry.shares
    )
    assert len(plain) == 2 * SHARE_SIZE


def test_state_machine_refuses_out_of_order_calls() -> None:
    r, _ = _advertised()
    client = r.clients[1]
    with pytest.raises(SecAggStateError, match="client is advertised, expected start"):
        client.advertise()
    with pytest.raises(SecAggStateError, match="expected keys_sent"):
        client.receive_key_shares(b"")
    with pytest.raises(SecAggStateError):
        r.server.close_key_shares()


def test_masked_input_is_uniform_modulo_2k() -> None:
    # One client's input is a constant (the worst case for a leak); its masked vector must
    # still look uniform: chi-square over the top 8 of the k bits (df 255, p = 0.001: 330.5).
    config = h.make_config(3, dimension=25_600, threshold=2, min_survivors=3)
    r = h.start(config)
    h.through_shares(r)
    k = config.encoding.modulus_bits
    constant = config.encoding.to_ring(np.full(25_600, 4095, dtype=np.int64))
    masked = np.frombuffer(r.clients[2].masked_input(constant)[-4 * 25_600 :], dtype="<u4")
    counts = np.bincount((masked >> (k - 8)).astype(np.int64), minlength=256)
    assert counts.size == 256
    expected = 25_600 / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 330.5, chi2
    # the same test does see structure when there is some: the plain input fails it
    plain_counts = np.bincount((constant >> np.uint64(k - 8)).astype(np.int64), minlength=256)
    assert float(((plain_counts - expected) ** 2 / expected).sum()) > 330.5


def test_malformed_input_rejected_by_server() -> None:
    config = h.make_config(3, threshold=2, min_survivors=3)
    r = h.start(config)
    h.through_shares(r)
    ring, _ = h.random_inputs(config, np.random.default_rng(8))
    good = r.clients[1].masked_input(ring[1])
    with pytest.raises(MalformedMessageError):
        r.server.receive_masked_input(1, good[:-1])
    r.server.receive_masked_input(1, good)
    with pytest.raises(ReplayedMessageError):
        r.server.receive_masked_input(1, good)


def test_client_without_enough_neighbours_cannot_share() -> None:
    config = h.make_config(4, threshold=3, min_survivors=4)
    r = h.start(config)
    adverts = {u: c.advertise() for u, c in r.clients.items()}
    r.clients[1].receive_advert(adverts[2])  # only one neighbour's advert arrives
    with pytest.raises(InsufficientNeighboursError, match="1 neighbours advertised keys"):
        r.clients[1].key_shares()


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_any_dropout_set_gives_the_exact_sum_or_a_clean_abort(data: st.DataObject) -> None:
    n = data.draw(st.integers(3, 7), label="clients")
    t = data.draw(st.integers(1, n - 1), label="threshold")
    config = h.make_config(n, threshold=t, min_survivors=t + 1, dimension=16)
    dropped = frozenset(
        data.draw(st.sets(st.sampled_from(config.participants), max_size=n - 1), label="dropped")
    )
    r = h.start(config)
    h.through_shares(r)
    ring, plain = h.random_inputs(config, np.random.default_rng(len(dropped)))
    result = h.finish(r, ring, dropped=dropped)
    if n - len(dropped) < config.min_survivors:
        assert isinstance(result, RoundAborted)
        assert result.reason == "too_few_survivors"
    else:
        assert isinstance(result, AggregateResult)
        want = np.sum([q for u, q in plain.items() if u not in dropped], axis=0)
        assert np.array_equal(result.signed_sum(), want)
