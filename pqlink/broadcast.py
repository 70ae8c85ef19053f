"""Sealed broadcasts: one signed, Ascon-sealed body for every recipient plus one small key entry
per recipient, each entry proven part of the signed set by a Merkle path (RFC 9162 tree).

A multi-recipient envelope carries every recipient's key slot, so sending it to n recipients
costs n^2 slots on the wire. Here the body travels once (a fanout) and each recipient gets only
its own entry with log2(n) hashes: the sender's single signature covers the Merkle root of all
entries, so every recipient still verifies that the key it unwraps is the sender's.

Body frame (big-endian):
    u8 type 0x05 | u8 version 1 | u8 content type | u8 signature algorithm
    | u8 len + sender id | u64 round | u32 model version | u64 created (ms)
    | 16 broadcast id | u16 recipient count | 32 entry tree root      (= header, the body's AD)
    | u32 n + Ascon-AEAD128 ciphertext (content key, nonce = broadcast id)
    | u16 n + ML-DSA signature over everything before it
Entry frame:
    u8 type 0x06 | u8 version 1 | 16 broadcast id | u16 recipient count | u16 index
    | 32 recipient fingerprint | hybrid KEM ciphertext | 32 wrapped content key
    | u8 path length + 32-byte hashes (leaf's sibling first)
Delivery frame (a body and one entry kept together by their recipient, unauthenticated):
    u8 type 0x07 | u8 version 1 | u32 n + body frame | entry frame
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pqlink._ascon import decrypt as _ascon_decrypt
from pqlink._ascon import encrypt as _ascon_encrypt
from pqlink._codec import Reader, Writer
from pqlink._errors import (
    AuthenticationError,
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayError,
)
from pqlink.envelope import ContentType
from pqlink.identity import Identity, PublicIdentity, Registry
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import HYBRID_CIPHERTEXT_SIZE, SigAlg

BODY_TYPE = 0x05
ENTRY_TYPE = 0x06
DELIVERY_TYPE = 0x07
BROADCAST_VERSION = 1
BROADCAST_ID_SIZE = 16
HASH_SIZE = 32
FINGERPRINT_SIZE = 32
WRAPPED_KEY_SIZE = 32
MAX_RECIPIENTS = 65_535
MAX_PATH = 16  # ceil(log2(MAX_RECIPIENTS))
#: An entry's size without its path: type, version, id, count, index, slot, path length.
ENTRY_FIXED_SIZE = (
    2 + BROADCAST_ID_SIZE + 4 + FINGERPRINT_SIZE + HYBRID_CIPHERTEXT_SIZE + WRAPPED_KEY_SIZE + 1
)
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
_SIGN_CONTEXT = b"pqlink1 broadcast"
_WRAP_SALT = b"pqlink1 broadcast wrap"
_LEAF = b"\x00"  # RFC 9162 domain separation: leaves and inner nodes never collide
_NODE = b"\x01"


class EntryMismatchError(AuthenticationError):
    """A key entry is not one the sender signed: its Merkle path does not lead to the body's
    root, or it belongs to another broadcast."""


class NotAddressedError(RemoteProtocolError):
    """A key entry is addressed to another recipient than the one opening it."""


@dataclass(frozen=True, slots=True)
class BroadcastMetadata:
    """Authenticated (signed), unencrypted metadata of a broadcast body."""

    sender: str
    content_type: ContentType
    round: int
    model_version: int
    created_ms: int
    broadcast_id: bytes
    sig_alg: SigAlg
    recipient_count: int
    root: bytes


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One recipient's share of a broadcast: its wrapped content key and Merkle path."""

    broadcast_id: bytes
    recipient_count: int
    index: int
    fingerprint: bytes
    kem_ciphertext: bytes
    wrapped_key: bytes
    path: tuple[bytes, ...]

    def leaf(self) -> bytes:
        return _leaf_hash(
            self.broadcast_id, self.index, self.fingerprint, self.kem_ciphertext, self.wrapped_key
        )

    def __bytes__(self) -> bytes:
        w = (
            Writer()
            .u8(ENTRY_TYPE)
            .u8(BROADCAST_VERSION)
            .raw(self.broadcast_id)
            .u16(self.recipient_count)
            .u16(self.index)
            .raw(self.fingerprint)
            .raw(self.kem_ciphertext)
            .raw(self.wrapped_key)
            .u8(len(self.path))
        )
        for h in self.path:
            w.raw(h)
        return w.getvalue()

    @classmethod
    def from_bytes(cls, frame: bytes) -> KeyEntry:
        r = Reader(bytes(frame), "broadcast key entry")
        if r.u8("type") != ENTRY_TYPE:
            raise DecodeError("frame is not a broadcast key entry")
        version = r.u8("version")
        if version != BROADCAST_VERSION:
            raise DecodeError(f"broadcast key entry version {version} is not supported")
        broadcast_id = r.raw(BROADCAST_ID_SIZE, "broadcast id")
        count = r.u16("recipient count")
        index = r.u16("index")
        if index >= count:  # also rejects a count of 0
            raise DecodeError(f"key entry index {index} is outside 0-{count - 1}")
        fp = r.raw(FINGERPRINT_SIZE, "recipient fingerprint")
        ct = r.raw(HYBRID_CIPHERTEXT_SIZE, "recipient KEM ciphertext")
        wrapped = r.raw(WRAPPED_KEY_SIZE, "wrapped key")
        n = r.u8("path length")
        if n != path_length(index, count):
            raise DecodeError(
                f"key entry path of {n} hashes; index {index} of {count} needs "
                f"{path_length(index, count)}"
            )
        path = tuple(r.raw(HASH_SIZE, f"path hash {i}") for i in range(n))
        r.end()
        return cls(broadcast_id, count, index, fp, ct, wrapped, path)


@dataclass(frozen=True, slots=True)
class SealedBroadcast:
    """What `seal_broadcast` makes: the body for everyone and each recipient's entry, keyed
    by recipient name."""

    body: bytes
    entries: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class OpenedBroadcast:
    metadata: BroadcastMetadata
    payload: bytes
    sender: PublicIdentity


def _leaf_hash(broadcast_id: bytes, index: int, fp: bytes, ct: bytes, wrapped: bytes) -> bytes:
    return hashlib.sha256(
        _LEAF + broadcast_id + index.to_bytes(2, "big") + fp + ct + wrapped
    ).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (n >= 2): where RFC 9162 splits a tree of n leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def path_length(index: int, count: int) -> int:
    """Hashes in the audit path of leaf `index` in a tree of `count` leaves."""
    length = 0
    while count > 1:
        k = _split(count)
        if index < k:
            count = k
        else:
            index, count = index - k, count - k
        length += 1
    return length


def merkle_root_and_paths(leaves: Sequence[bytes]) -> tuple[bytes, list[tuple[bytes, ...]]]:
    """The RFC 9162 tree hash over leaf hashes and every leaf's audit path (sibling first)."""
    if len(leaves) == 1:
        return leaves[0], [()]
    k = _split(len(leaves))
    left_root, left_paths = merkle_root_and_paths(leaves[:k])
    right_root, right_paths = merkle_root_and_paths(leaves[k:])
    paths = [(*p, right_root) for p in left_paths] + [(*p, left_root) for p in right_paths]
    return _node(left_root, right_root), paths


def root_from_path(index: int, count: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root a leaf's audit path leads to (RFC 9162 verification, recursively)."""
    if count == 1:
        if path:
            raise DecodeError("audit path is longer than the tree is deep")
        return leaf
    if not path:
        raise DecodeError("audit path is shorter than the tree is deep")
    k = _split(count)
    if index < k:
        return _node(root_from_path(index, k, leaf, path[:-1]), path[-1])
    return _node(path[-1], root_from_path(index - k, count - k, leaf, path[:-1]))


def _wrap_key(shared_secret: bytes, fingerprint: bytes, broadcast_id: bytes) -> bytes:
    prk = hkdf_extract(_WRAP_SALT, shared_secret)
    return expand_label(prk, "wrap", fingerprint + broadcast_id, 16)


def _check_u(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"{name} must be in [0, 2**{bits}), got {value}")


def seal_broadcast(
    sender: Identity,
    recipients: Sequence[PublicIdentity],
    payload: bytes,
    *,
    content_type: ContentType,
    round: int,
    model_version: int = 0,
    now: float | None = None,
) -> SealedBroadcast:
    """Encrypt `payload` once under a fresh content key, wrap that key for each recipient,
    and sign the body with the Merkle root of the entries."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise LocalProtocolError(f"a broadcast needs 1 to {MAX_RECIPIENTS} recipients")
    _check_u(round, 64, "round")
    _check_u(model_version, 32, "model_version")
    created_ms = int((time.time() if now is None else now) * 1000)
    broadcast_id = os.urandom(BROADCAST_ID_SIZE)
    content_key = os.urandom(16)
    slots: list[tuple[str, bytes, bytes, bytes]] = []
    seen: set[bytes] = set()
    for rcpt in recipients:
        if rcpt.kem_public is None:
            raise LocalProtocolError(f"recipient {rcpt.name!r} has no KEM key")
        fp = bytes.fromhex(rcpt.fingerprint)
        if fp in seen:
            raise LocalProtocolError(f"recipient {rcpt.name!r} is listed twice")
        seen.add(fp)
        enc = rcpt.kem_public.encapsulate()
        kek = _wrap_key(enc.shared_secret, fp, broadcast_id)
        slots.append(
            (rcpt.name, fp, enc.ciphertext, _ascon_encrypt(kek, broadcast_id, fp, content_key))
        )
    count = len(slots)
    leaves = [_leaf_hash(broadcast_id, i, fp, ct, wk) for i, (_, fp, ct, wk) in enumerate(slots)]
    root, paths = merkle_root_and_paths(leaves)
    header = (
        Writer()
        .u8(BODY_TYPE)
        .u8(BROADCAST_VERSION)
        .u8(ContentType(content_type))
        .u8(sender.signing_key.alg)
        .identifier(sender.name)
        .u64(round)
        .u32(model_version)
        .u64(created_ms)
        .raw(broadcast_id)
        .u16(count)
        .raw(root)
        .getvalue()
    )
    ciphertext = _ascon_encrypt(content_key, broadcast_id, header, payload)
    signed = header + len(ciphertext).to_bytes(4, "big") + ciphertext
    signature = sender.signing_key.sign(signed, _SIGN_CONTEXT)
    body = signed + len(signature).to_bytes(2, "big") + signature
    entries = {
        name: bytes(KeyEntry(broadcast_id, count, i, fp, ct, wk, paths[i]))
        for i, (name, fp, ct, wk) in enumerate(slots)
    }
    return SealedBroadcast(body, entries)


@dataclass(frozen=True, slots=True)
class _ParsedBody:
    metadata: BroadcastMetadata
    header: bytes
    ciphertext: bytes
    signed: bytes
    signature: bytes


def _parse_body(frame: bytes, max_size: int) -> _ParsedBody:
    if len(frame) > max_size:
        raise DecodeError(f"broadcast of {len(frame)} bytes exceeds the {max_size}-byte limit")
    raw = bytes(frame)
    r = Reader(raw, "broadcast")
    if r.u8("type") != BODY_TYPE:
        raise DecodeError("frame is not a broadcast body")
    version = r.u8("version")
    if version != BROADCAST_VERSION:
        raise DecodeError(f"broadcast version {version} is not supported")
    ct_code = r.u8("content type")
    try:
        content_type = ContentType(ct_code)
    except ValueError:
        raise DecodeError(f"unknown broadcast content type {ct_code}") from None
    sig_alg = SigAlg.from_wire(r.u8("signature algorithm"))
    sender = r.identifier("sender id")
    round_ = r.u64("round")
    model_version = r.u32("model version")
    created_ms = r.u64("created")
    broadcast_id = r.raw(BROADCAST_ID_SIZE, "broadcast id")
    count = r.u16("recipient count")
    if count < 1:
        raise DecodeError("broadcast lists no recipients")
    root = r.raw(HASH_SIZE, "entry tree root")
    header_end = r.offset
    n = r.u32("ciphertext length")
    if n < 16:
        raise DecodeError(f"broadcast ciphertext of {n} bytes is shorter than its tag")
    ciphertext = r.raw(n, "ciphertext")
    signed_end = r.offset
    sig_len = r.u16("signature length")
    if sig_len != sig_alg.signature_size:
        raise DecodeError(f"signature length {sig_len} does not match {sig_alg.label}")
    signature = r.raw(sig_len, "signature")
    r.end()
    meta = BroadcastMetadata(
        sender, content_type, round_, model_version, created_ms, broadcast_id, sig_alg, count, root
    )
    return _ParsedBody(meta, raw[:header_end], ciphertext, raw[:signed_end], signature)


def peek_broadcast(frame: bytes, max_size: int = DEFAULT_MAX_BODY_SIZE) -> BroadcastMetadata:
    """Decode a body's metadata WITHOUT verifying anything: for routing and logging only."""
    return _parse_body(frame, max_size).metadata


def peek_entry(frame: bytes) -> KeyEntry:
    """Decode a key entry WITHOUT verifying anything: for pairing it with its body."""
    return KeyEntry.from_bytes(frame)


def open_broadcast(
    body: bytes,
    entry: bytes,
    recipient: Identity,
    senders: Registry,
    *,
    after_round: int | None = None,
    max_size: int = DEFAULT_MAX_BODY_SIZE,
) -> OpenedBroadcast:
    """Verify the sender's signature on the body (sender enrolled, not revoked), check that the
    entry is addressed to `recipient` and is one the sender signed, then decrypt.

    `after_round`: the last round the recipient accepted; an older or equal round is a
    replay (ReplayError), checked only after the signature so it is never a forgery's claim."""
    parsed = _parse_body(body, max_size)
    meta = parsed.metadata
    sender = senders.lookup(meta.sender)
    if sender.verify_key.alg is not meta.sig_alg:
        raise DecodeError(f"{meta.sender!r} is enrolled with {sender.verify_key.alg.label}")
    sender.verify_key.verify(parsed.signature, parsed.signed, _SIGN_CONTEXT)
    if after_round is not None and meta.round <= after_round:
        raise ReplayError(f"broadcast for round {meta.round}; round {after_round} already taken")
    key = KeyEntry.from_bytes(entry)
    if key.broadcast_id != meta.broadcast_id or key.recipient_count != meta.recipient_count:
        raise EntryMismatchError("key entry belongs to another broadcast")
    if recipient.kem_key is None:
        raise LocalProtocolError(f"{recipient.name!r} has no KEM key to open broadcasts with")
    fp = bytes.fromhex(recipient.public.fingerprint)
    if key.fingerprint != fp:
        raise NotAddressedError(f"key entry is not addressed to {recipient.name!r}")
    if root_from_path(key.index, key.recipient_count, key.leaf(), key.path) != meta.root:
        raise EntryMismatchError("key entry's Merkle path does not lead to the signed root")
    kek = _wrap_key(recipient.kem_key.decapsulate(key.kem_ciphertext), fp, meta.broadcast_id)
    content_key = _ascon_decrypt(kek, meta.broadcast_id, fp, key.wrapped_key)
    payload = _ascon_decrypt(content_key, meta.broadcast_id, parsed.header, parsed.ciphertext)
    return OpenedBroadcast(meta, payload, sender)


def join_delivery(body: bytes, entry: bytes) -> bytes:
    """A body and a recipient's entry as one frame, for a recipient to keep until it opens
    them (nothing is authenticated here: `open_delivery` checks everything)."""
    return bytes((DELIVERY_TYPE, BROADCAST_VERSION)) + len(body).to_bytes(4, "big") + body + entry


def split_delivery(frame: bytes) -> tuple[bytes, bytes]:
    """The body and entry of a `join_delivery` frame."""
    r = Reader(bytes(frame), "broadcast delivery")
    if r.u8("type") != DELIVERY_TYPE:
        raise DecodeError("frame is not a broadcast delivery")
    version = r.u8("version")
    if version != BROADCAST_VERSION:
        raise DecodeError(f"broadcast delivery version {version} is not supported")
    body = r.raw(r.u32("body length"), "body")
    return body, r.rest()


def open_delivery(
    frame: bytes,
    recipient: Identity,
    senders: Registry,
    *,
    after_round: int | None = None,
    max_size: int = DEFAULT_MAX_BODY_SIZE,
) -> OpenedBroadcast:
    """`open_broadcast` of a `join_delivery` frame."""
    body, entry = split_delivery(frame)
    return open_broadcast(
        body, entry, recipient, senders, after_round=after_round, max_size=max_size
    )
