"""Broadcast frames field by field and at their limits: a body, key entry or delivery cut short
names the frame, the field and the offset; every bound is probed at its exact value and one past
it; and a body and its entries open with an independent reading of docs/protocol.md (leaf hash,
key wrap, content-key wrap, signature), so both ends agree with the document, not only with
each other."""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from pqlink import (
    ContentType,
    DecodeError,
    Identity,
    LocalProtocolError,
    ReplayError,
    Role,
)
from pqlink._ascon import decrypt as ascon_decrypt
from pqlink.broadcast import (
    DEFAULT_MAX_BODY_SIZE,
    BroadcastEpoch,
    EpochKeyCache,
    KeyEntry,
    join_delivery,
    new_epoch,
    open_broadcast,
    open_delivery,
    peek_broadcast,
    peek_entry,
    seal_broadcast,
    split_delivery,
)

from . import pqlink_reference as ref
from .conftest import Parties
from .frame_cuts import check_cuts, signed_header

SIG = 3309  # ML-DSA-65, the aggregator's algorithm
KEM_CT = 1120  # ML-KEM-768 ciphertext + X25519 share
SENDER = "aggregator"
#: Bytes of a body before its ciphertext length, for the sender "aggregator" (docs table).
HEADER_SIZE = 1 + 1 + 1 + 1 + 1 + len(SENDER) + 8 + 4 + 8 + 16 + 16 + 2 + 32 + 32


@pytest.fixture(scope="module")
def trio() -> list[Identity]:
    return [Identity.generate(f"edge-{i}", Role.GATEWAY) for i in range(3)]


@pytest.fixture(scope="module")
def epoch(trio: list[Identity]) -> BroadcastEpoch:
    return new_epoch([g.public for g in trio])


def _body(
    parties: Parties,
    epoch: BroadcastEpoch,
    payload: bytes,
    *,
    round: int = 7,
    model_version: int = 3,
    now: float | None = 1_700_000_000.5,
) -> bytes:
    return seal_broadcast(
        parties.aggregator,
        epoch,
        payload,
        content_type=ContentType.GLOBAL_MODEL,
        round=round,
        model_version=model_version,
        now=now,
    ).body


def _body_layout(ciphertext: int) -> list[tuple[str, int]]:
    return [
        *signed_header(len(SENDER)),
        ("model version", 4),
        ("created", 8),
        ("broadcast id", 16),
        ("epoch id", 16),
        ("recipient count", 2),
        ("entry tree root", 32),
        ("wrapped content key", 32),
        ("ciphertext length", 4),
        ("ciphertext", ciphertext),
        ("signature length", 2),
        ("signature", SIG),
    ]


# --- truncation names the frame, the field and the offset ---------------------------------


def test_a_body_cut_short_names_the_field(parties: Parties, epoch: BroadcastEpoch) -> None:
    body = _body(parties, epoch, b"weights" * 3)
    check_cuts(peek_broadcast, body, "broadcast", _body_layout(len(b"weights" * 3) + 16))


def test_an_entry_cut_short_names_the_field(epoch: BroadcastEpoch) -> None:
    """Leaf 0 of 3 has a path of two hashes: its sibling, then the root's right child."""
    entry = epoch.entries["edge-0"]
    layout = [
        ("type", 1),
        ("version", 1),
        ("epoch id", 16),
        ("recipient count", 2),
        ("index", 2),
        ("recipient fingerprint", 32),
        ("recipient KEM ciphertext", KEM_CT),
        ("wrapped key", 32),
        ("path length", 1),
        ("path hash 0", 32),
        ("path hash 1", 32),
    ]
    check_cuts(peek_entry, entry, "broadcast key entry", layout)


def test_a_delivery_cut_short_names_the_field(parties: Parties, epoch: BroadcastEpoch) -> None:
    body = _body(parties, epoch, b"m")
    layout = [("type", 1), ("version", 1), ("body length", 4), ("body", len(body))]
    check_cuts(split_delivery, join_delivery(body, b""), "broadcast delivery", layout)


def test_delivery_frame_layout(parties: Parties, epoch: BroadcastEpoch) -> None:
    body, entry = _body(parties, epoch, b"m"), epoch.entries["edge-1"]
    frame = join_delivery(body, entry)
    assert frame == b"\x07\x01" + struct.pack(">I", len(body)) + body + entry
    assert split_delivery(frame) == (body, entry)


# --- an independent reading of the document ----------------------------------------------


def _leaf(entry: bytes) -> tuple[int, bytes]:
    """(index, leaf hash) of an entry, read as the document's entry table says."""
    assert entry[:2] == b"\x06\x02"
    index = int.from_bytes(entry[20:22], "big")
    # epoch id | u16 index | fingerprint | KEM ciphertext | wrapped key (the count is left out)
    leaf = entry[2:18] + entry[20:22] + entry[22 : 22 + 32 + KEM_CT + 32]
    return index, hashlib.sha256(b"\x00" + leaf).digest()


def _reference_open(body: bytes, entry: bytes, recipient: Identity, sig_public: bytes) -> bytes:
    """The payload of a body opened with one entry by docs/protocol.md alone: any disagreement
    with pqlink fails the signature check or an unwrap."""
    c = ref.Cursor(body)
    assert (c.u8(), c.u8(), c.u8(), c.u8()) == (0x05, 2, ContentType.GLOBAL_MODEL, 2)
    assert c.ident() == SENDER
    c.take(8 + 4 + 8)
    broadcast_id, epoch_id = c.take(16), c.take(16)
    c.u16()
    c.take(32)
    prefix = body[: c.pos]
    wrapped_content_key = c.take(32)
    header = body[: c.pos]
    ciphertext = c.take(c.u32())
    signed = body[: c.pos]
    signature = c.take(c.u16())
    assert c.at_end()
    mldsa.MLDSA65PublicKey.from_public_bytes(sig_public).verify(
        signature, signed, b"pqlink1 broadcast"
    )
    fp = entry[22:54]
    kem_ct = entry[54 : 54 + KEM_CT]
    wrapped_epoch_key = entry[54 + KEM_CT : 54 + KEM_CT + 32]
    assert recipient.kem_key is not None
    ss = ref.hybrid_decapsulate(*recipient.kem_key.seeds(), kem_ct)
    kek = ref.expand_label(ref.extract(b"pqlink1 broadcast wrap", ss), "wrap", fp + epoch_id, 16)
    epoch_key = ascon_decrypt(kek, epoch_id, fp, wrapped_epoch_key)
    content_key = ascon_decrypt(epoch_key, broadcast_id, prefix, wrapped_content_key)
    return ascon_decrypt(content_key, broadcast_id, header, ciphertext)


def test_body_and_entries_follow_the_document(
    parties: Parties, trio: list[Identity], epoch: BroadcastEpoch
) -> None:
    payload = b"global model, round 7"
    body = _body(parties, epoch, payload)
    meta = peek_broadcast(body)
    leaves = dict(_leaf(epoch.entries[g.name]) for g in trio)
    assert sorted(leaves) == [0, 1, 2]

    def node(x: bytes, y: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + x + y).digest()

    # three leaves: split at two, the largest power of two below three
    assert meta.root == epoch.root == node(node(leaves[0], leaves[1]), leaves[2])
    for g in trio:
        entry = epoch.entries[g.name]
        assert _reference_open(body, entry, g, parties.aggregator.public.verify_key.raw) == payload
        assert open_broadcast(body, entry, g, parties.aggregator_registry()).payload == payload


def test_single_recipient_root_is_its_leaf_hash(parties: Parties, trio: list[Identity]) -> None:
    one = new_epoch([trio[1].public])
    entry = one.entries["edge-1"]
    assert len(entry) == 2 + 16 + 2 + 2 + 32 + KEM_CT + 32 + 1  # no path hash
    index, leaf = _leaf(entry)
    assert index == 0
    assert peek_entry(entry).leaf() == leaf == one.root
    body = _body(parties, one, b"solo")
    assert peek_broadcast(body).root == leaf
    assert _reference_open(body, entry, trio[1], parties.aggregator.public.verify_key.raw) == (
        b"solo"
    )


def test_metadata_round_trips_exactly(parties: Parties, trio: list[Identity]) -> None:
    epoch = new_epoch([g.public for g in trio])
    body = _body(parties, epoch, b"m", round=2**64 - 1, model_version=2**32 - 1, now=2.25)
    opened = open_broadcast(body, epoch.entries["edge-2"], trio[2], parties.aggregator_registry())
    meta = opened.metadata
    assert (meta.round, meta.model_version, meta.created_ms) == (2**64 - 1, 2**32 - 1, 2250)
    assert (meta.sender, meta.recipient_count, meta.epoch_id) == (SENDER, 3, epoch.epoch_id)
    assert opened.sender.name == SENDER
    assert opened.sender.fingerprint == parties.aggregator.public.fingerprint
    # the created field is the `now` given, in milliseconds, at its wire offset
    created_at = 1 + 1 + 1 + 1 + 1 + len(SENDER) + 8 + 4
    assert body[created_at : created_at + 8] == (2250).to_bytes(8, "big")


def test_created_is_milliseconds_of_now(parties: Parties, epoch: BroadcastEpoch) -> None:
    assert peek_broadcast(_body(parties, epoch, b"m")).created_ms == 1_700_000_000_500
    assert peek_broadcast(_body(parties, epoch, b"m", now=0.0)).created_ms == 0


def test_model_version_defaults_to_zero(parties: Parties, epoch: BroadcastEpoch) -> None:
    body = seal_broadcast(
        parties.aggregator, epoch, b"m", content_type=ContentType.GLOBAL_MODEL, round=1
    ).body
    assert peek_broadcast(body).model_version == 0


# --- bounds, each at its exact value and one past it ---------------------------------------


def test_model_version_is_a_u32(parties: Parties, epoch: BroadcastEpoch) -> None:
    assert peek_broadcast(_body(parties, epoch, b"m", model_version=2**32 - 1)).model_version == (
        2**32 - 1
    )
    for bad in (2**32, -1):
        with pytest.raises(LocalProtocolError, match=r"^model_version must be in \[0, 2\*\*32\)"):
            _body(parties, epoch, b"m", model_version=bad)


def test_recipient_count_bound(parties: Parties) -> None:
    """65535 recipients is within the bound (the list is then refused at its first recipient,
    which has no KEM key); 65536 is refused for its size before any recipient is looked at."""
    sensor = parties.sensor.public
    assert sensor.kem_public is None
    with pytest.raises(LocalProtocolError, match="'wearable-0001' has no KEM key"):
        new_epoch([sensor] * 65_535)
    with pytest.raises(LocalProtocolError, match="a broadcast needs 1 to 65535 recipients"):
        new_epoch([sensor] * 65_536)


def test_body_size_limit(parties: Parties, trio: list[Identity], epoch: BroadcastEpoch) -> None:
    body = _body(parties, epoch, b"m" * 100)
    assert peek_broadcast(body, max_size=len(body)).round == 7
    limit = len(body) - 1
    with pytest.raises(DecodeError, match=f"of {len(body)} bytes exceeds the {limit}-byte limit"):
        peek_broadcast(body, max_size=limit)
    entry = epoch.entries["edge-0"]
    assert open_broadcast(
        body, entry, trio[0], parties.aggregator_registry(), max_size=len(body)
    ).payload
    with pytest.raises(DecodeError, match="exceeds"):
        open_broadcast(body, entry, trio[0], parties.aggregator_registry(), max_size=limit)
    assert DEFAULT_MAX_BODY_SIZE == 32 * 1024 * 1024


def test_ciphertext_length_is_at_least_the_tag(
    parties: Parties, trio: list[Identity], epoch: BroadcastEpoch
) -> None:
    """An empty payload seals to the 16-byte tag alone, which opens; 15 bytes cannot hold it."""
    body = _body(parties, epoch, b"")
    assert body[HEADER_SIZE : HEADER_SIZE + 4] == (16).to_bytes(4, "big")
    assert (
        open_broadcast(
            body, epoch.entries["edge-0"], trio[0], parties.aggregator_registry()
        ).payload
        == b""
    )
    short = body[:HEADER_SIZE] + (15).to_bytes(4, "big") + body[HEADER_SIZE + 4 + 1 :]
    with pytest.raises(DecodeError, match="ciphertext of 15 bytes is shorter than its tag"):
        peek_broadcast(short)


@pytest.mark.parametrize("code", [0, 6, 255])
def test_unknown_content_type(parties: Parties, epoch: BroadcastEpoch, code: int) -> None:
    body = bytearray(_body(parties, epoch, b"m"))
    body[2] = code
    with pytest.raises(DecodeError, match=f"^unknown broadcast content type {code}$"):
        peek_broadcast(bytes(body))


def test_entry_index_must_be_below_the_count(epoch: BroadcastEpoch) -> None:
    """Index 2 of 3 (the last leaf, one hash) decodes; index 3 of 3 is refused even with a
    path of the length its position would have."""
    real = peek_entry(epoch.entries["edge-2"])
    assert (real.index, real.recipient_count, len(real.path)) == (2, 3, 1)
    outside = dataclasses.replace(real, index=3)
    with pytest.raises(DecodeError, match=r"^key entry index 3 is outside 0-2$"):
        peek_entry(bytes(outside))
    empty = KeyEntry(real.epoch_id, 0, 0, real.fingerprint, real.kem_ciphertext, b"\0" * 32, ())
    with pytest.raises(DecodeError, match=r"^key entry index 0 is outside 0--1$"):
        peek_entry(bytes(empty))


# --- the epoch key cache -------------------------------------------------------------------


def _slot(i: int) -> bytes:
    return hashlib.sha256(bytes([i])).digest()


def test_cache_keeps_the_newest_four_by_default() -> None:
    cache = EpochKeyCache()
    for i in range(4):
        cache.put(_slot(i), bytes([i]) * 16)
    assert len(cache) == 4
    cache.put(_slot(4), b"\x04" * 16)
    assert len(cache) == 4
    assert cache.get(_slot(0)) is None  # the oldest went
    assert [cache.get(_slot(i)) for i in range(1, 5)] == [bytes([i]) * 16 for i in range(1, 5)]


def test_cache_of_one_key() -> None:
    cache = EpochKeyCache(1)
    cache.put(_slot(0), b"\x00" * 16)
    assert cache.get(_slot(0)) == b"\x00" * 16
    cache.put(_slot(1), b"\x01" * 16)
    assert len(cache) == 1
    assert (cache.get(_slot(0)), cache.get(_slot(1))) == (None, b"\x01" * 16)


# --- open_delivery passes its options on ---------------------------------------------------


def test_open_delivery_honours_its_options(
    parties: Parties, trio: list[Identity], epoch: BroadcastEpoch
) -> None:
    body = _body(parties, epoch, b"delivered", round=7)
    frame = join_delivery(body, epoch.entries["edge-1"])
    senders = parties.aggregator_registry()
    opened = open_delivery(frame, trio[1], senders, after_round=6)
    assert (opened.payload, opened.metadata.round) == (b"delivered", 7)
    assert opened.sender.name == SENDER
    with pytest.raises(ReplayError, match="round 7; round 7 already taken"):
        open_delivery(frame, trio[1], senders, after_round=7)
    assert open_delivery(frame, trio[1], senders, max_size=len(body)).payload == b"delivered"
    with pytest.raises(DecodeError, match=f"exceeds the {len(body) - 1}-byte limit"):
        open_delivery(frame, trio[1], senders, max_size=len(body) - 1)
    cache = EpochKeyCache()
    for _ in range(2):
        assert open_delivery(frame, trio[1], senders, epoch_keys=cache).payload == b"delivered"
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)
