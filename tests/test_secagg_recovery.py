"""How the server recovers a dropped client's pair seeds when the early rebuild could not, and
every way that recovery or the unmasking stage ends in an abort, field by field; the server's
and the client's refusals of messages a malicious peer can sign (a sender without a key, an
entry to a neighbour that never advertised, a share of the wrong kind or at the wrong index)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from pqlink._secagg_codec import (
    Advert,
    ForwardedKeyShares,
    KeyShareEntry,
    KeyShares,
    ShareKind,
    UnmaskResponse,
)
from pqlink.ascon import encrypt
from pqlink.keys import HybridPrivateKey, HybridPublicKey
from pqlink.secagg import (
    AggregateResult,
    ForgedMessageError,
    MalformedMessageError,
    RoundAborted,
    RoundConfig,
    RoundKeys,
    SecAggClient,
    SecAggParameterError,
    SecAggServer,
    SecAggStateError,
    ServerState,
    UnexpectedSenderError,
    _advert_context,
    _share_ad,
    _share_key,
    _share_nonce,
    check_advert,
    decode_bundle,
)
from pqlink.shamir import PRIME, Share
from tests import secagg_harness as h

# Six clients, every pair neighbours, threshold 3; client 6 drops after sharing its keys.
N, T, DROPPED = 6, 3, 6
SURVIVORS = (1, 2, 3, 4, 5)


def _config() -> RoundConfig:
    return h.make_config(N, threshold=T, min_survivors=4, dimension=32)


def _unmasking(r: h.Round, seed: int) -> tuple[bytes, dict[int, np.ndarray]]:
    """Masked inputs of the survivors in; the server's unmasking request and their plain
    inputs."""
    ring, plain = h.random_inputs(r.config, np.random.default_rng(seed))
    for u in SURVIVORS:
        r.server.receive_masked_input(u, r.clients[u].masked_input(ring[u]))
    request = r.server.close_inputs()
    assert isinstance(request, bytes)
    return request, plain


def _with_pair_share(answer: bytes, owner: int, value: int) -> bytes:
    """`answer` with the value of its pair-key share of `owner` replaced."""
    msg = UnmaskResponse.from_bytes(answer)
    shares = tuple((o, k, Share(sh.index, value) if o == owner else sh) for o, k, sh in msg.shares)
    return replace(msg, shares=shares).to_bytes()


def _pair_share_value(answer: bytes, owner: int) -> int:
    (value,) = (
        sh.value
        for o, k, sh in UnmaskResponse.from_bytes(answer).shares
        if o == owner and k is ShareKind.PAIR_KEY
    )
    return value


def _recovery_without_early_rebuild(r: h.Round, seed: int) -> AggregateResult | RoundAborted:
    """Every survivor answers the unmasking request; the early rebuild of the dropped
    client's pair seeds has not succeeded; what `finish` makes of it."""
    request, _ = _unmasking(r, seed)
    for u in SURVIVORS:
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    assert DROPPED not in r.server._rebuilt
    return r.server.finish()


def test_a_bad_share_outside_the_lowest_t_is_left_out_by_finish_which_recovers() -> None:
    # The answers come in from the highest index down and the first t include 5's garbled
    # share of 6's pair-key seed: the early rebuild fails; finish takes the t lowest indices
    # (1, 2, 3), rebuilds 6's pair seeds itself and removes its masks exactly.
    r = h.start(_config())
    h.through_shares(r)
    request, plain = _unmasking(r, 21)
    answers = {u: r.clients[u].unmask(request) for u in SURVIVORS}
    garbled = _with_pair_share(answers[5], DROPPED, (_pair_share_value(answers[5], 6) + 1) % PRIME)
    r.server.receive_unmask_response(5, garbled)
    for u in (4, 3):
        r.server.receive_unmask_response(u, answers[u])
    assert DROPPED not in r.server._rebuilt  # the first t did not open
    for u in (2, 1):
        r.server.receive_unmask_response(u, answers[u])
    assert DROPPED not in r.server._rebuilt
    result = r.server.finish()
    assert isinstance(result, AggregateResult)
    assert (result.round_id, result.survivors, result.dropped) == (7, SURVIVORS, (DROPPED,))
    assert np.array_equal(result.signed_sum(), sum(plain[u] for u in SURVIVORS))
    assert r.server.state is ServerState.DONE


def test_a_fresh_server_has_neither_survivors_nor_dropouts() -> None:
    config = _config()
    server = SecAggServer(config, h.verify_keys(config.participants))
    assert server.survivors == ()
    assert server.dropped == ()


def test_finish_without_any_answer_aborts_on_the_first_survivor() -> None:
    r = h.start(_config())
    h.through_shares(r)
    _unmasking(r, 22)
    assert r.server.finish() == RoundAborted(
        7, "unmask", "too_few_shares", "client 1: 0 shares, threshold 3"
    )
    assert r.server.state is ServerState.DONE


def test_shares_that_interpolate_past_256_bits_abort_as_a_bad_share() -> None:
    # Lagrange weight of index 1 among (1, 2, 3) at zero: (0-2)(0-3) / ((1-2)(1-3)) = 3.
    # Adding 2^256 / 3 (mod p) to 1's share adds 2^256 to the secret: below p = 2^521 - 1,
    # but no 32-byte seed.
    r = h.start(_config())
    h.through_shares(r)
    request, _ = _unmasking(r, 23)
    answer = r.clients[1].unmask(request)
    shift = (1 << 256) * pow(3, -1, PRIME) % PRIME
    value = (_pair_share_value(answer, DROPPED) + shift) % PRIME
    r.server.receive_unmask_response(1, _with_pair_share(answer, DROPPED, value))
    for u in (2, 3, 4, 5):
        r.server.receive_unmask_response(u, r.clients[u].unmask(request))
    assert r.server.finish() == RoundAborted(
        7, "unmask", "bad_share", "client 6: shares do not interpolate to a 32-byte secret"
    )


def _advertises_another_mask_key(client: SecAggClient, config: RoundConfig) -> None:
    """The client advertises a mask key of its own choosing instead of the one its pair-key
    seed derives (and can open what is encapsulated to it): a malicious client's advert."""
    other = HybridPrivateKey.generate()
    advert = replace(
        Advert.from_bytes(client._advert), mask_key=other.public_key().raw, signature=b""
    )
    context = _advert_context(config.round_id, client.client_id, config.graph_seed)
    signature = h.identity(client.client_id).sign(advert.signed_part(), context)
    client._advert = replace(advert, signature=signature).to_bytes()
    client._mask_kem = other


def test_a_dropped_client_whose_mask_key_its_seed_does_not_derive_aborts_the_round() -> None:
    config = _config()
    r = h.start(config)
    _advertises_another_mask_key(r.clients[DROPPED], config)
    h.through_shares(r)
    assert _recovery_without_early_rebuild(r, 24) == RoundAborted(
        7, "unmask", "bad_share", "client 6: mask key not advertised"
    )


def test_a_dropped_client_whose_escrow_does_not_open_aborts_the_round() -> None:
    r = h.start(_config())
    # its escrowed half of the pair seed it shares with 1, damaged
    damaged = _altered(1, lambda e: replace(e, escrow=bytes([e.escrow[0] ^ 1]) + e.escrow[1:]))
    bundles = _through_shares_with(r, DROPPED, damaged)
    h.deliver(bundles, {u: c.receive_key_shares for u, c in r.clients.items()})
    assert _recovery_without_early_rebuild(r, 25) == RoundAborted(
        7, "unmask", "bad_escrow", "escrow of 6 for 1"
    )


def test_a_participant_without_a_verification_key_is_refused() -> None:
    config = _config()
    keys = h.verify_keys(config.participants)
    del keys[3]
    server = SecAggServer(config, keys)
    client = SecAggClient(config, 3, h.identity(3), h.verify_keys(config.participants))
    with pytest.raises(UnexpectedSenderError, match=r"^client 3 is not a participant$"):
        server.receive_advert(3, client.advertise())


def test_an_entry_to_a_neighbour_that_never_advertised_is_refused() -> None:
    config = _config()
    r = h.start(config)
    h.through_adverts(r, absent=frozenset({DROPPED}))  # 6 never advertises
    msg = KeyShares.from_bytes(r.clients[1].key_shares())
    assert DROPPED in r.server._graph[1]  # a neighbour, but without an advert
    stray = replace(msg.entries[0], recipient=DROPPED)
    forged = h.resigned(replace(msg, entries=(*msg.entries, stray)))
    with pytest.raises(UnexpectedSenderError, match=r"^client 1 may not share with 6$"):
        r.server.receive_key_shares(1, forged)
    r.server.receive_key_shares(1, h.resigned(msg))  # the honest entries alone are taken


def test_an_answer_with_a_share_of_the_wrong_kind_is_refused() -> None:
    r = h.start(_config())
    h.through_shares(r)
    request, _ = _unmasking(r, 26)
    msg = UnmaskResponse.from_bytes(r.clients[1].unmask(request))
    # the pair-key share of survivor 2 instead of its self-mask share
    shares = tuple((o, ShareKind.PAIR_KEY if o == 2 else k, sh) for o, k, sh in msg.shares)
    wrong = replace(msg, shares=shares).to_bytes()
    with pytest.raises(MalformedMessageError, match=r"^response of 1: unrequested share of 2$"):
        r.server.receive_unmask_response(1, wrong)
    r.server.receive_unmask_response(1, msg.to_bytes())


@pytest.mark.parametrize(
    "vector",
    [np.zeros(32, np.int64), np.zeros(31, np.uint64), np.zeros((32, 1), np.uint64)],
    ids=["int64", "short", "two-dimensional"],
)
def test_a_masked_input_must_be_a_uint64_vector_of_the_round_s_length(
    vector: np.ndarray,
) -> None:
    r = h.start(_config())
    h.through_shares(r)
    with pytest.raises(SecAggStateError, match=r"^input must be a uint64 vector of length 32$"):
        r.clients[1].masked_input(vector)
    r.clients[1].masked_input(np.zeros(32, np.uint64))


def test_the_threshold_is_bounded_by_the_other_participants_even_with_a_larger_degree() -> None:
    base = h.make_config(5, threshold=2, min_survivors=3)
    with pytest.raises(SecAggParameterError, match=r"^threshold 5 outside 1\.\.degree$"):
        replace(base, degree=5, threshold=5, min_survivors=5)
    # four is every other participant: the bound itself
    assert replace(base, degree=5, threshold=4, min_survivors=5).threshold == 4


def _shares_at(r: h.Round, sender: int, recipient: int, b_index: int, p_index: int) -> Entry:
    """`sender`'s entry for `recipient` with shares at the given indices, sealed under a fresh
    encapsulation to the recipient's advertised share key: what a malicious sender can make."""
    rid = r.config.round_id
    advert = Advert.from_bytes(r.clients[recipient]._advert)
    enc = HybridPublicKey(advert.public_key).encapsulate()
    key = _share_key(enc.shared_secret, rid, sender, recipient, enc.ciphertext)
    plain = Share(b_index, 11).to_bytes() + Share(p_index, 12).to_bytes()
    sealed = encrypt(key, _share_nonce(sender, recipient), _share_ad(rid, sender, recipient), plain)
    return lambda e: replace(e, share_ciphertext=enc.ciphertext, shares=sealed)


@pytest.mark.parametrize(("b_index", "p_index"), [(5, 4), (4, 5), (4, 4)])
def test_shares_at_another_client_s_index_are_refused(b_index: int, p_index: int) -> None:
    r = h.start(h.make_config(4, threshold=2, min_survivors=3))
    change = _shares_at(r, 1, 4, b_index, p_index)
    bundles = _through_shares_with(r, 1, _altered(4, change))
    item = _from(1, bundles[4])
    if (b_index, p_index) == (4, 4):
        r.clients[4].receive_key_shares(item)  # at its own index: taken
        return
    with pytest.raises(ForgedMessageError, match=r"^shares from 1 are not at this client's index$"):
        r.clients[4].receive_key_shares(item)


def _from(sender: int, bundle: bytes) -> bytes:
    """The item of `bundle` that `sender` sent."""
    (item,) = (
        i for i in decode_bundle(bundle)[1] if ForwardedKeyShares.from_bytes(i).sender == sender
    )
    return item


def _resigned_advert(advert: Advert, config: RoundConfig | None) -> bytes:
    """`advert` signed by its sender again: bound to `config`'s graph seed, or made ahead."""
    seed = None if config is None else config.graph_seed
    context = _advert_context(advert.round_id, advert.sender, seed)
    signature = h.identity(advert.sender).sign(advert.signed_part(), context)
    return replace(advert, signature=signature).to_bytes()


# An ML-KEM-768 encapsulation key whose coefficients are all 4095 >= q = 3329 (FIPS 203's
# modulus check refuses it), followed by a valid X25519 key.
_NOT_A_KEY = b"\xff" * 1184


@pytest.mark.parametrize("field", ["public_key", "mask_key"])
def test_a_signed_advert_whose_key_does_not_decode_is_malformed(field: str) -> None:
    config = h.make_config(4, threshold=2, min_survivors=3)
    r = h.start(config)
    genuine = Advert.from_bytes(r.clients[2].advertise())
    key = getattr(genuine, field)
    bad = replace(genuine, **{field: _NOT_A_KEY + key[1184:]})
    r.clients[1].advertise()
    with pytest.raises(MalformedMessageError, match=r"^advert of 2: "):
        r.clients[1].receive_advert(_resigned_advert(bad, config))
    r.clients[1].receive_advert(genuine.to_bytes())
    # the same check for an advert made ahead, which a coordinator keeps for its round
    ahead = Advert.from_bytes(RoundKeys(9, 2, h.identity(2)).advert)
    bad_ahead = replace(ahead, **{field: _NOT_A_KEY + key[1184:]})
    with pytest.raises(MalformedMessageError, match=r"^advert of 2: "):
        check_advert(_resigned_advert(bad_ahead, None), 9, h.identity(2).public_key())
    assert check_advert(ahead.to_bytes(), 9, h.identity(2).public_key()) == 2


#: a change to one entry of a keys-and-shares message
Entry = Callable[[KeyShareEntry], KeyShareEntry]


def _altered(recipient: int, change: Entry) -> Callable[[bytes], bytes]:
    """A sender's keys and shares with `change` made to its entry for `recipient`, signed
    again by the sender: what a malicious sender can produce."""

    def tamper(sent: bytes) -> bytes:
        msg = KeyShares.from_bytes(sent)
        entries = tuple(change(e) if e.recipient == recipient else e for e in msg.entries)
        return h.resigned(replace(msg, entries=entries))

    return tamper


def _low_order_mask_ciphertext(e: KeyShareEntry) -> KeyShareEntry:
    """The X25519 half of the entry's mask ciphertext replaced by the all-zero point."""
    return replace(e, mask_ciphertext=e.mask_ciphertext[:-32] + bytes(32))


def _through_shares_with(
    r: h.Round, sender: int, tamper: Callable[[bytes], bytes]
) -> dict[int, bytes]:
    """Rounds 0-1 with `sender`'s keys and shares passed through `tamper`; the bundles the
    server forwards."""
    h.through_adverts(r)
    for u, c in r.clients.items():
        sent = c.key_shares()
        r.server.receive_key_shares(u, tamper(sent) if u == sender else sent)
    shares = r.server.close_key_shares()
    assert isinstance(shares, dict)
    return shares


def test_a_mask_ciphertext_on_a_low_order_point_is_refused_by_its_recipient() -> None:
    r = h.start(h.make_config(4, threshold=2, min_survivors=3))
    bundles = _through_shares_with(r, 1, _altered(4, _low_order_mask_ciphertext))
    item = _from(1, bundles[4])
    with pytest.raises(
        MalformedMessageError, match=r"^ciphertext from 1: X25519 ciphertext is a low-order point$"
    ):
        r.clients[4].receive_key_shares(item)


def test_a_low_order_mask_ciphertext_to_a_dropped_client_aborts_its_recovery() -> None:
    # The dropped client never opens it; the server, rebuilding its pair seeds, must.
    r = h.start(_config())
    bundles = _through_shares_with(r, 1, _altered(DROPPED, _low_order_mask_ciphertext))
    del bundles[DROPPED]  # gone before it reads them
    h.deliver(bundles, {u: r.clients[u].receive_key_shares for u in SURVIVORS})
    assert _recovery_without_early_rebuild(r, 27) == RoundAborted(
        7, "unmask", "bad_escrow", "mask ciphertext of 1 for 6"
    )
