"""Sealed broadcasts: one body for all, one key entry per recipient with its Merkle path; every
recipient opens, and tampering, truncation, a wrong recipient, a foreign entry or a replay fail
with their own error."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    LocalProtocolError,
    PqlinkError,
    Registry,
    ReplayError,
    RevokedPeerError,
    Role,
    SignatureError,
    UnknownPeerError,
)
from pqlink.broadcast import (
    ENTRY_FIXED_SIZE,
    HASH_SIZE,
    EntryMismatchError,
    KeyEntry,
    NotAddressedError,
    SealedBroadcast,
    merkle_root_and_paths,
    open_broadcast,
    path_length,
    peek_broadcast,
    peek_entry,
    root_from_path,
    seal_broadcast,
)

from .conftest import Parties
from .test_properties import mutations


@pytest.fixture(scope="module")
def fleet() -> list[Identity]:
    return [Identity.generate(f"gw-{i:02d}", Role.GATEWAY) for i in range(5)]


def _senders(parties: Parties) -> Registry:
    reg = Registry()
    reg.enroll(parties.aggregator.public)
    return reg


def _seal(
    parties: Parties, recipients: list[Identity], payload: bytes, **kw: int
) -> SealedBroadcast:
    return seal_broadcast(
        parties.aggregator,
        [r.public for r in recipients],
        payload,
        content_type=ContentType.GLOBAL_MODEL,
        round=kw.get("round", 9),
        model_version=kw.get("model_version", 4),
    )


def test_every_recipient_opens_the_one_body(parties: Parties, fleet: list[Identity]) -> None:
    payload = os.urandom(5000)
    sealed = _seal(parties, fleet, payload)
    assert set(sealed.entries) == {g.name for g in fleet}
    for g in fleet:
        opened = open_broadcast(sealed.body, sealed.entries[g.name], g, _senders(parties))
        assert opened.payload == payload
        meta = opened.metadata
        assert (meta.sender, meta.round, meta.model_version, meta.recipient_count) == (
            "aggregator",
            9,
            4,
            5,
        )
        assert meta.content_type is ContentType.GLOBAL_MODEL
        assert peek_broadcast(sealed.body) == meta


def test_sizes_grow_with_log_n_per_recipient(parties: Parties, fleet: list[Identity]) -> None:
    """The body does not depend on the recipient count; an entry grows by one hash per
    doubling (5 recipients: leaves 0-3 need 3 hashes, leaf 4 one)."""
    one = _seal(parties, fleet[:1], b"x" * 100)
    five = _seal(parties, fleet, b"x" * 100)
    assert len(one.body) == len(five.body)
    assert len(one.entries["gw-00"]) == ENTRY_FIXED_SIZE
    assert [len(five.entries[g.name]) - ENTRY_FIXED_SIZE for g in fleet] == [
        3 * HASH_SIZE,
        3 * HASH_SIZE,
        3 * HASH_SIZE,
        3 * HASH_SIZE,
        HASH_SIZE,
    ]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 100])
def test_merkle_paths_lead_to_the_root(count: int) -> None:
    leaves = [hashlib.sha256(bytes([i % 256, i // 256])).digest() for i in range(count)]
    root, paths = merkle_root_and_paths(leaves)
    for i, (leaf, path) in enumerate(zip(leaves, paths, strict=True)):
        assert len(path) == path_length(i, count)
        assert root_from_path(i, count, leaf, path) == root
        if count > 1:  # another leaf's path, or this one at another index, does not
            other = (i + 1) % count
            assert root_from_path(i, count, leaves[other], path) != root


def test_rfc9162_tree_shape() -> None:
    """Three leaves: root = H(1 || H(1 || a || b) || c), the largest power of two on the left."""
    a, b, c = (hashlib.sha256(bytes([i])).digest() for i in range(3))

    def node(x: bytes, y: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + x + y).digest()

    root, paths = merkle_root_and_paths([a, b, c])
    assert root == node(node(a, b), c)
    assert paths == [(b, c), (a, c), (node(a, b),)]


def test_wrong_recipient(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    with pytest.raises(NotAddressedError, match="not addressed to 'gw-01'"):
        open_broadcast(sealed.body, sealed.entries["gw-00"], fleet[1], _senders(parties))
    # a gateway left out of the broadcast has no entry of its own to use
    outsider = _seal(parties, fleet[:2], b"model")
    with pytest.raises(NotAddressedError):
        open_broadcast(outsider.body, outsider.entries["gw-00"], fleet[4], _senders(parties))


def test_entry_of_another_broadcast(parties: Parties, fleet: list[Identity]) -> None:
    first = _seal(parties, fleet, b"model one")
    second = _seal(parties, fleet, b"model two")
    with pytest.raises(EntryMismatchError, match="another broadcast"):
        open_broadcast(second.body, first.entries["gw-00"], fleet[0], _senders(parties))


def test_forged_entry_for_the_same_broadcast(parties: Parties, fleet: list[Identity]) -> None:
    """An attacker with the body re-wraps a key of its own for gw-00: valid framing, right
    broadcast id and recipient, but the leaf is not under the signed root."""
    sealed = _seal(parties, fleet, b"model")
    real = KeyEntry.from_bytes(sealed.entries["gw-00"])
    forged = KeyEntry(
        real.broadcast_id,
        real.recipient_count,
        real.index,
        real.fingerprint,
        fleet[0].public.kem_public.encapsulate().ciphertext,  # type: ignore[union-attr]
        os.urandom(32),
        real.path,
    )
    with pytest.raises(EntryMismatchError, match="Merkle path"):
        open_broadcast(sealed.body, bytes(forged), fleet[0], _senders(parties))
    # the same entry moved to another index keeps a well-formed path of the right length
    moved = KeyEntry(
        real.broadcast_id,
        real.recipient_count,
        1,
        real.fingerprint,
        real.kem_ciphertext,
        real.wrapped_key,
        real.path,
    )
    with pytest.raises(EntryMismatchError):
        open_broadcast(sealed.body, bytes(moved), fleet[0], _senders(parties))


def test_tampered_body(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model" * 50)
    body = bytearray(sealed.body)
    body[-3400] ^= 1  # inside the ciphertext: the signature covers it
    with pytest.raises(SignatureError):
        open_broadcast(bytes(body), sealed.entries["gw-00"], fleet[0], _senders(parties))


def test_truncations(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    entry = sealed.entries["gw-00"]
    with pytest.raises(DecodeError, match="truncated"):
        open_broadcast(sealed.body[:-1], entry, fleet[0], _senders(parties))
    with pytest.raises(DecodeError, match="truncated"):
        open_broadcast(sealed.body, entry[:-1], fleet[0], _senders(parties))
    with pytest.raises(DecodeError, match="trailing"):
        open_broadcast(sealed.body, entry + b"\0", fleet[0], _senders(parties))
    # one path hash missing, with the length byte saying so
    short = bytearray(entry[:-HASH_SIZE])
    short[ENTRY_FIXED_SIZE - 1] -= 1
    with pytest.raises(DecodeError, match="path of 2 hashes; index 0 of 5 needs 3"):
        peek_entry(bytes(short))


def test_replay_of_an_older_round(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model", round=9)
    args = (sealed.body, sealed.entries["gw-00"], fleet[0], _senders(parties))
    assert open_broadcast(*args, after_round=8).metadata.round == 9  # the next round: fine
    with pytest.raises(ReplayError, match="round 9; round 9 already taken"):
        open_broadcast(*args, after_round=9)


def test_sender_must_be_enrolled_and_active(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    with pytest.raises(UnknownPeerError):
        open_broadcast(sealed.body, sealed.entries["gw-00"], fleet[0], Registry())
    reg = _senders(parties)
    reg.revoke("aggregator")
    with pytest.raises(RevokedPeerError):
        open_broadcast(sealed.body, sealed.entries["gw-00"], fleet[0], reg)


def test_seal_bounds(parties: Parties, fleet: list[Identity]) -> None:
    with pytest.raises(LocalProtocolError, match="1 to 65535 recipients"):
        seal_broadcast(parties.aggregator, [], b"x", content_type=ContentType.GLOBAL_MODEL, round=1)
    with pytest.raises(LocalProtocolError, match="listed twice"):
        _seal(parties, [fleet[0], fleet[0]], b"x")
    with pytest.raises(LocalProtocolError, match="round must be in"):
        _seal(parties, fleet[:1], b"x", round=2**64)
    assert _seal(parties, fleet[:1], b"x", round=2**64 - 1).body


SETTINGS = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.data())
def test_mutated_body_or_entry_is_never_accepted(
    parties: Parties, fleet: list[Identity], data: st.DataObject
) -> None:
    sealed = _seal(parties, fleet[:3], b"global" * 30)
    target = data.draw(st.sampled_from(["body", "entry"]))
    body, entry = sealed.body, sealed.entries["gw-02"]
    if target == "body":
        body = data.draw(mutations(body))
    else:
        entry = data.draw(mutations(entry))
    with pytest.raises(PqlinkError):
        open_broadcast(body, entry, fleet[2], _senders(parties))


@SETTINGS
@given(count=st.integers(1, 300), index=st.data())
def test_merkle_path_property(count: int, index: st.DataObject) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]
    root, paths = merkle_root_and_paths(leaves)
    i = index.draw(st.integers(0, count - 1))
    assert root_from_path(i, count, leaves[i], paths[i]) == root
    assert len(paths[i]) <= max(1, (count - 1).bit_length())
    with pytest.raises(DecodeError, match="longer than the tree is deep"):
        root_from_path(i, count, leaves[i], (*paths[i], root))
