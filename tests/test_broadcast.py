"""Sealed broadcasts: one body for all, one key entry per recipient per key epoch with its Merkle
path; every recipient opens every body of the epoch, and tampering, truncation, a wrong
recipient, an entry of another epoch or a replay fail with their own error."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pqlink import (
    AuthenticationError,
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
    BROADCAST_VERSION,
    ENTRY_FIXED_SIZE,
    HASH_SIZE,
    BroadcastEpoch,
    EntryMismatchError,
    EpochKeyCache,
    KeyEntry,
    NotAddressedError,
    SealedBroadcast,
    merkle_root_and_paths,
    new_epoch,
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


def _seal(
    parties: Parties,
    recipients: list[Identity],
    payload: bytes,
    epoch: BroadcastEpoch | None = None,
    **kw: int,
) -> SealedBroadcast:
    """A broadcast of a new key epoch for `recipients` (or of `epoch`), with its entries."""
    return seal_broadcast(
        parties.aggregator,
        epoch or new_epoch([r.public for r in recipients]),
        payload,
        content_type=ContentType.GLOBAL_MODEL,
        round=kw.get("round", 9),
        model_version=kw.get("model_version", 4),
        with_entries=True,
    )


def test_every_recipient_opens_the_one_body(parties: Parties, fleet: list[Identity]) -> None:
    payload = os.urandom(5000)
    sealed = _seal(parties, fleet, payload)
    assert set(sealed.entries) == {g.name for g in fleet}
    for g in fleet:
        opened = open_broadcast(
            sealed.body, sealed.entries[g.name], g, parties.aggregator_registry()
        )
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
        open_broadcast(
            sealed.body, sealed.entries["gw-00"], fleet[1], parties.aggregator_registry()
        )
    # a gateway left out of the broadcast has no entry of its own to use
    outsider = _seal(parties, fleet[:2], b"model")
    with pytest.raises(NotAddressedError):
        open_broadcast(
            outsider.body, outsider.entries["gw-00"], fleet[4], parties.aggregator_registry()
        )


def test_entry_of_another_epoch(parties: Parties, fleet: list[Identity]) -> None:
    first = _seal(parties, fleet, b"model one")
    second = _seal(parties, fleet, b"model two")
    with pytest.raises(EntryMismatchError, match="another key epoch"):
        open_broadcast(second.body, first.entries["gw-00"], fleet[0], parties.aggregator_registry())
    # the same epoch id with another recipient count is not the body's epoch either
    real = KeyEntry.from_bytes(first.entries["gw-00"])
    recount = KeyEntry(
        real.epoch_id,
        real.recipient_count + 1,
        real.index,
        real.fingerprint,
        real.kem_ciphertext,
        real.wrapped_key,
        real.path,  # leaf 0 of 6 needs 3 hashes, as of 5: a well-formed entry
    )
    with pytest.raises(EntryMismatchError, match="another key epoch"):
        open_broadcast(first.body, bytes(recount), fleet[0], parties.aggregator_registry())


def test_forged_entry_for_the_same_broadcast(parties: Parties, fleet: list[Identity]) -> None:
    """An attacker with the body re-wraps a key of its own for gw-00: valid framing, right
    broadcast id and recipient, but the leaf is not under the signed root."""
    sealed = _seal(parties, fleet, b"model")
    real = KeyEntry.from_bytes(sealed.entries["gw-00"])
    forged = KeyEntry(
        real.epoch_id,
        real.recipient_count,
        real.index,
        real.fingerprint,
        fleet[0].public.kem_public.encapsulate().ciphertext,  # type: ignore[union-attr]
        os.urandom(32),
        real.path,
    )
    with pytest.raises(EntryMismatchError, match="Merkle path"):
        open_broadcast(sealed.body, bytes(forged), fleet[0], parties.aggregator_registry())
    # the same entry moved to another index keeps a well-formed path of the right length
    moved = KeyEntry(
        real.epoch_id,
        real.recipient_count,
        1,
        real.fingerprint,
        real.kem_ciphertext,
        real.wrapped_key,
        real.path,
    )
    with pytest.raises(EntryMismatchError):
        open_broadcast(sealed.body, bytes(moved), fleet[0], parties.aggregator_registry())


def test_tampered_body(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model" * 50)
    body = bytearray(sealed.body)
    body[-3400] ^= 1  # inside the ciphertext: the signature covers it
    with pytest.raises(SignatureError):
        open_broadcast(
            bytes(body), sealed.entries["gw-00"], fleet[0], parties.aggregator_registry()
        )


def test_truncations(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    entry = sealed.entries["gw-00"]
    with pytest.raises(DecodeError, match="truncated"):
        open_broadcast(sealed.body[:-1], entry, fleet[0], parties.aggregator_registry())
    with pytest.raises(DecodeError, match="truncated"):
        open_broadcast(sealed.body, entry[:-1], fleet[0], parties.aggregator_registry())
    with pytest.raises(DecodeError, match="trailing"):
        open_broadcast(sealed.body, entry + b"\0", fleet[0], parties.aggregator_registry())
    # one path hash missing, with the length byte saying so
    short = bytearray(entry[:-HASH_SIZE])
    short[ENTRY_FIXED_SIZE - 1] -= 1
    with pytest.raises(DecodeError, match="path of 2 hashes; index 0 of 5 needs 3"):
        peek_entry(bytes(short))


def test_replay_of_an_older_round(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model", round=9)
    args = (sealed.body, sealed.entries["gw-00"], fleet[0], parties.aggregator_registry())
    assert open_broadcast(*args, after_round=8).metadata.round == 9  # the next round: fine
    with pytest.raises(ReplayError, match="round 9; round 9 already taken"):
        open_broadcast(*args, after_round=9)


def test_sender_must_be_enrolled_and_active(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    with pytest.raises(UnknownPeerError):
        open_broadcast(sealed.body, sealed.entries["gw-00"], fleet[0], Registry())
    reg = parties.aggregator_registry()
    reg.revoke("aggregator")
    with pytest.raises(RevokedPeerError):
        open_broadcast(sealed.body, sealed.entries["gw-00"], fleet[0], reg)


def test_seal_bounds(parties: Parties, fleet: list[Identity]) -> None:
    with pytest.raises(LocalProtocolError, match="1 to 65535 recipients"):
        new_epoch([])
    with pytest.raises(LocalProtocolError, match="listed twice"):
        _seal(parties, [fleet[0], fleet[0]], b"x")
    with pytest.raises(LocalProtocolError, match="round must be in"):
        _seal(parties, fleet[:1], b"x", round=2**64)
    assert _seal(parties, fleet[:1], b"x", round=2**64 - 1).body


@pytest.mark.parametrize("count", [1, 2, 3, 7, 100])
def test_round_trip_for_every_fleet_shape(parties: Parties, count: int) -> None:
    recipients = [Identity.generate(f"n-{i:03d}", Role.GATEWAY) for i in range(count)]
    sealed = _seal(parties, recipients, b"model for %d" % count)
    assert len(sealed.entries) == count
    for r in recipients:
        opened = open_broadcast(
            sealed.body, sealed.entries[r.name], r, parties.aggregator_registry()
        )
        assert opened.payload == b"model for %d" % count
        assert opened.metadata.recipient_count == count


def test_every_body_of_an_epoch_opens_with_its_one_entry(
    parties: Parties, fleet: list[Identity]
) -> None:
    epoch = new_epoch([g.public for g in fleet])
    bodies = [
        seal_broadcast(
            parties.aggregator,
            epoch,
            b"model %d" % r,
            content_type=ContentType.GLOBAL_MODEL,
            round=r,
        )
        for r in range(1, 5)
    ]
    assert all(not b.entries for b in bodies)  # entries only when asked for
    ids = {peek_broadcast(b.body).broadcast_id for b in bodies}
    assert len(ids) == 4  # a fresh broadcast id (and content key) per body
    for g in fleet:
        entry = epoch.entries[g.name]
        assert peek_entry(entry).epoch_id == epoch.epoch_id
        for r, b in enumerate(bodies, start=1):
            assert peek_broadcast(b.body).epoch_id == epoch.epoch_id
            assert (
                open_broadcast(b.body, entry, g, parties.aggregator_registry()).payload
                == b"model %d" % r
            )


def test_epoch_key_is_never_shown(fleet: list[Identity]) -> None:
    epoch = new_epoch([g.public for g in fleet])
    for text in (repr(epoch), str(epoch), f"{epoch}", repr([epoch])):
        assert epoch.key.hex() not in text
        assert repr(epoch.key) not in text
        assert epoch.epoch_id.hex() in text  # what it does show


def _epoch_with(
    recipients: list[Identity], *, wrapped: bytes | None = None, key: bytes | None = None
) -> BroadcastEpoch:
    """An epoch the sender built wrongly: every entry's wrapped epoch key replaced by
    `wrapped`, or the key the bodies are sealed under replaced by `key`; the Merkle tree is
    over the entries as they are, so every structural check passes."""
    real = new_epoch([r.public for r in recipients])
    keys = [KeyEntry.from_bytes(real.entries[r.name]) for r in recipients]
    if wrapped is not None:
        keys = [dataclasses.replace(k, wrapped_key=wrapped) for k in keys]
    root, paths = merkle_root_and_paths([k.leaf() for k in keys])
    entries = {
        r.name: bytes(dataclasses.replace(k, path=paths[k.index]))
        for r, k in zip(recipients, keys, strict=True)
    }
    return BroadcastEpoch(real.epoch_id, key or real.key, root, real.fingerprints, entries)


def test_a_wrong_key_wrap_fails_authentication(parties: Parties, fleet: list[Identity]) -> None:
    """Signed and in the tree, but a key that does not unwrap: the AEAD check says so."""
    for epoch in (
        _epoch_with(fleet, wrapped=os.urandom(32)),
        _epoch_with(fleet, key=os.urandom(16)),
    ):
        sealed = _seal(parties, fleet, b"model", epoch)
        with pytest.raises(AuthenticationError) as info:
            open_broadcast(
                sealed.body, sealed.entries["gw-00"], fleet[0], parties.aggregator_registry()
            )
        assert type(info.value) is AuthenticationError  # not an entry mismatch


def test_tampered_fields_fail_with_their_own_error(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    meta = peek_broadcast(sealed.body)
    body, entry = sealed.body, sealed.entries["gw-00"]
    epoch_at = body.index(meta.epoch_id)
    wrapped_at = body.index(meta.root) + HASH_SIZE  # the wrapped content key follows the root
    for offset in (epoch_at, wrapped_at, wrapped_at + 31):
        bad = bytearray(body)
        bad[offset] ^= 1  # signed: the signature fails before anything is unwrapped
        with pytest.raises(SignatureError):
            open_broadcast(bytes(bad), entry, fleet[0], parties.aggregator_registry())
    bad = bytearray(entry)
    bad[2] ^= 1  # the entry's epoch id
    with pytest.raises(EntryMismatchError, match="another key epoch"):
        open_broadcast(body, bytes(bad), fleet[0], parties.aggregator_registry())
    for offset in (ENTRY_FIXED_SIZE - 2, ENTRY_FIXED_SIZE - 33, ENTRY_FIXED_SIZE):
        bad = bytearray(entry)
        bad[offset] ^= 1  # the wrapped epoch key, the KEM ciphertext, a path hash
        with pytest.raises(EntryMismatchError, match="Merkle path"):
            open_broadcast(body, bytes(bad), fleet[0], parties.aggregator_registry())


def test_truncation_at_every_offset(parties: Parties, fleet: list[Identity]) -> None:
    sealed = _seal(parties, fleet, b"model")
    body, entry = sealed.body, sealed.entries["gw-04"]
    for cut in range(len(body)):
        with pytest.raises(DecodeError):
            open_broadcast(body[:cut], entry, fleet[4], parties.aggregator_registry())
    for cut in range(len(entry)):
        with pytest.raises(DecodeError):
            open_broadcast(body, entry[:cut], fleet[4], parties.aggregator_registry())


def test_version_1_frames_are_rejected(parties: Parties, fleet: list[Identity]) -> None:
    assert BROADCAST_VERSION == 2
    sealed = _seal(parties, fleet, b"model")
    body, entry = sealed.body, sealed.entries["gw-00"]
    old_body = body[:1] + b"\x01" + body[2:]
    old_entry = entry[:1] + b"\x01" + entry[2:]
    with pytest.raises(DecodeError, match="broadcast version 1 is not supported"):
        open_broadcast(old_body, entry, fleet[0], parties.aggregator_registry())
    with pytest.raises(DecodeError, match="broadcast key entry version 1 is not supported"):
        open_broadcast(body, old_entry, fleet[0], parties.aggregator_registry())
    with pytest.raises(DecodeError, match="version 3 is not supported"):
        peek_broadcast(body[:1] + b"\x03" + body[2:])


def test_an_opener_decapsulates_once_per_epoch(parties: Parties, fleet: list[Identity]) -> None:
    cache = EpochKeyCache(max_epochs=2)
    epochs = [new_epoch([g.public for g in fleet]) for _ in range(3)]

    def open_round(epoch: BroadcastEpoch, round_: int, gw: Identity) -> bytes:
        body = seal_broadcast(
            parties.aggregator,
            epoch,
            b"model %d" % round_,
            content_type=ContentType.GLOBAL_MODEL,
            round=round_,
        ).body
        entry = epoch.entries[gw.name]
        return open_broadcast(
            body, entry, gw, parties.aggregator_registry(), epoch_keys=cache
        ).payload

    assert [open_round(epochs[0], r, fleet[0]) for r in (1, 2, 3)] == [
        b"model 1",
        b"model 2",
        b"model 3",
    ]
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)
    assert open_round(epochs[0], 4, fleet[1]) == b"model 4"  # another opener: its own key
    assert (cache.misses, len(cache)) == (2, 2)  # the bound, exactly
    assert open_round(epochs[1], 5, fleet[0]) == b"model 5"
    assert (cache.misses, len(cache)) == (3, 2)  # bound + 1: the least recently used went
    assert open_round(epochs[0], 6, fleet[1]) == b"model 6"
    assert (cache.misses, cache.hits) == (3, 3)  # kept: used after gw-00's first epoch key
    assert open_round(epochs[0], 7, fleet[0]) == b"model 7"
    assert (cache.misses, cache.hits) == (4, 3)  # evicted: unwrapped again, and it opens
    # a tampered entry is refused before the cache is looked at: every check runs each time
    bad = bytearray(epochs[0].entries["gw-00"])
    bad[-1] ^= 1
    body = _seal(parties, fleet, b"x", epochs[0]).body
    with pytest.raises(EntryMismatchError, match="Merkle path"):
        open_broadcast(body, bytes(bad), fleet[0], parties.aggregator_registry(), epoch_keys=cache)
    assert (cache.misses, cache.hits) == (4, 3)
    for text in (repr(cache), str(cache)):
        assert all(k.key.hex() not in text for k in epochs)
    with pytest.raises(LocalProtocolError, match="at least one key"):
        EpochKeyCache(0)


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
        open_broadcast(body, entry, fleet[2], parties.aggregator_registry())


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
