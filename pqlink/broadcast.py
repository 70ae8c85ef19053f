"""Sealed broadcasts: one signed, Ascon-sealed body for every recipient, and one small key entry
per recipient per key epoch, each entry proven part of the signed set by a Merkle path (RFC 9162).

A multi-recipient envelope carries every recipient's key slot, so sending it to n recipients
costs n^2 slots on the wire. Here the body travels once (a fanout) and each recipient holds only
its own entry with log2(n) hashes. The entries wrap an epoch key that serves every body of the
epoch: each body wraps its own fresh content key under it, so a broadcast that starts no epoch
costs the sender no key encapsulation and the broker one message, whatever the fleet size. The
sender's signature on each body covers the Merkle root of the epoch's entries, so every
recipient still verifies that the key it unwraps is the sender's.

Body frame (big-endian):
    u8 type 0x05 | u8 version 2 | u8 content type | u8 signature algorithm
    | u8 len + sender id | u64 round | u32 model version | u64 created (ms)
    | 16 broadcast id | 16 epoch id | u16 recipient count | 32 entry tree root
    | 32 wrapped content key (epoch key, nonce = broadcast id, AD = every byte before it)
                                                                   (= header, the body's AD)
    | u32 n + Ascon-AEAD128 ciphertext (content key, nonce = broadcast id)
    | u16 n + ML-DSA signature over everything before it
Entry frame:
    u8 type 0x06 | u8 version 2 | 16 epoch id | u16 recipient count | u16 index
    | 32 recipient fingerprint | hybrid KEM ciphertext | 32 wrapped epoch key
    | u8 path length + 32-byte hashes (leaf's sibling first)
Delivery frame (a body and one entry kept together by their recipient, unauthenticated):
    u8 type 0x07 | u8 version 1 | u32 n + body frame | entry frame
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
#: Version of the body and entry frames (2: key entries per epoch, not per broadcast).
BROADCAST_VERSION = 2
#: Version of the delivery container, which did not change with the frames it holds.
DELIVERY_VERSION = 1
BROADCAST_ID_SIZE = 16
EPOCH_ID_SIZE = 16
EPOCH_KEY_SIZE = 16
HASH_SIZE = 32
FINGERPRINT_SIZE = 32
WRAPPED_KEY_SIZE = 32
MAX_RECIPIENTS = 65_535
MAX_PATH = 16  # ceil(log2(MAX_RECIPIENTS))
#: An entry's size without its path: type, version, id, count, index, slot, path length.
ENTRY_FIXED_SIZE = (
    2 + EPOCH_ID_SIZE + 4 + FINGERPRINT_SIZE + HYBRID_CIPHERTEXT_SIZE + WRAPPED_KEY_SIZE + 1
)
DEFAULT_MAX_BODY_SIZE = 32 * 1024 * 1024
_SIGN_CONTEXT = b"pqlink1 broadcast"
_WRAP_SALT = b"pqlink1 broadcast wrap"
_LEAF = b"\x00"  # RFC 9162 domain separation: leaves and inner nodes never collide
_NODE = b"\x01"


class EntryMismatchError(AuthenticationError):
    """A key entry is not one the sender signed: its Merkle path does not lead to the body's
    root, or it belongs to another key epoch."""


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
    epoch_id: bytes


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One recipient's share of a key epoch: its wrapped epoch key and Merkle path."""

    epoch_id: bytes
    recipient_count: int
    index: int
    fingerprint: bytes
    kem_ciphertext: bytes
    wrapped_key: bytes
    path: tuple[bytes, ...]

    def leaf(self) -> bytes:
        return _leaf_hash(
            self.epoch_id, self.index, self.fingerprint, self.kem_ciphertext, self.wrapped_key
        )

    def __bytes__(self) -> bytes:
        w = (
            Writer()
            .u8(ENTRY_TYPE)
            .u8(BROADCAST_VERSION)
            .raw(self.epoch_id)
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
        epoch_id = r.raw(EPOCH_ID_SIZE, "epoch id")
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
        return cls(epoch_id, count, index, fp, ct, wrapped, path)


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class BroadcastEpoch:
    """A key epoch: a random epoch key wrapped once for each recipient (its key entry, keyed
    by recipient name) under the Merkle root every body of the epoch carries. Held in memory
    by the sender only; its repr never shows the key."""

    epoch_id: bytes
    key: bytes
    root: bytes
    #: The recipients' fingerprints (hex), to tell when the recipient set changed.
    fingerprints: frozenset[str]
    entries: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def recipient_count(self) -> int:
        return len(self.fingerprints)

    def __repr__(self) -> str:
        return (
            f"BroadcastEpoch(epoch_id={self.epoch_id.hex()}, "
            f"recipients={self.recipient_count}, key=<hidden>)"
        )

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class SealedBroadcast:
    """What `seal_broadcast` makes: the body for everyone and, when asked for, the epoch's
    entries keyed by recipient name (empty when they were published already)."""

    body: bytes
    entries: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class OpenedBroadcast:
    metadata: BroadcastMetadata
    payload: bytes
    sender: PublicIdentity


class EpochKeyCache:
    """Epoch keys a recipient unwrapped, so that it decapsulates once per key epoch rather than
    once per body. Keyed by SHA-256 over the entry's bytes and the opener's fingerprint, so a
    hit gives exactly what decapsulating that entry would; filled only after the entry was
    checked against a signed root and unwrapped. In memory only (never persisted, never
    shown by repr), the newest `max_epochs` kept; safe to share between threads."""

    def __init__(self, max_epochs: int = 4) -> None:
        if max_epochs < 1:
            raise LocalProtocolError(f"an epoch key cache holds at least one key, not {max_epochs}")
        self.max_epochs = max_epochs
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def slot(entry: bytes, fingerprint: bytes) -> bytes:
        return hashlib.sha256(bytes(entry) + fingerprint).digest()

    def get(self, slot: bytes) -> bytes | None:
        with self._lock:
            key = self._keys.get(slot)
            if key is None:
                self.misses += 1
                return None
            self._keys.move_to_end(slot)
            self.hits += 1
            return key

    def put(self, slot: bytes, key: bytes) -> None:
        with self._lock:
            self._keys[slot] = key
            self._keys.move_to_end(slot)
            while len(self._keys) > self.max_epochs:
                self._keys.popitem(last=False)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"EpochKeyCache({len(self._keys)} of {self.max_epochs} epochs, keys=<hidden>)"

    __str__ = __repr__


def _leaf_hash(epoch_id: bytes, index: int, fp: bytes, ct: bytes, wrapped: bytes) -> bytes:
    return hashlib.sha256(_LEAF + epoch_id + index.to_bytes(2, "big") + fp + ct + wrapped).digest()


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


def _wrap_key(shared_secret: bytes, fingerprint: bytes, epoch_id: bytes) -> bytes:
    prk = hkdf_extract(_WRAP_SALT, shared_secret)
    return expand_label(prk, "wrap", fingerprint + epoch_id, 16)


def _check_u(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise LocalProtocolError(f"{name} must be in [0, 2**{bits}), got {value}")


def new_epoch(recipients: Sequence[PublicIdentity]) -> BroadcastEpoch:
    """A fresh key epoch for `recipients`: a random epoch key encapsulated and wrapped for each
    of them, and the Merkle tree over their entries."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise LocalProtocolError(f"a broadcast needs 1 to {MAX_RECIPIENTS} recipients")
    epoch_id = os.urandom(EPOCH_ID_SIZE)
    epoch_key = os.urandom(EPOCH_KEY_SIZE)
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
        kek = _wrap_key(enc.shared_secret, fp, epoch_id)
        slots.append((rcpt.name, fp, enc.ciphertext, _ascon_encrypt(kek, epoch_id, fp, epoch_key)))
    count = len(slots)
    leaves = [_leaf_hash(epoch_id, i, fp, ct, wk) for i, (_, fp, ct, wk) in enumerate(slots)]
    root, paths = merkle_root_and_paths(leaves)
    entries = {
        name: bytes(KeyEntry(epoch_id, count, i, fp, ct, wk, paths[i]))
        for i, (name, fp, ct, wk) in enumerate(slots)
    }
    return BroadcastEpoch(epoch_id, epoch_key, root, frozenset(fp.hex() for fp in seen), entries)


def seal_broadcast(
    sender: Identity,
    epoch: BroadcastEpoch,
    payload: bytes,
    *,
    content_type: ContentType,
    round: int,
    model_version: int = 0,
    now: float | None = None,
    with_entries: bool = False,
) -> SealedBroadcast:
    """Encrypt `payload` once under a fresh content key, wrap that key under the epoch key,
    and sign the body with the Merkle root of the epoch's entries. `with_entries`: hand the
    epoch's entries back with the body (for the epoch's first broadcast)."""
    _check_u(round, 64, "round")
    _check_u(model_version, 32, "model_version")
    created_ms = int((time.time() if now is None else now) * 1000)
    broadcast_id = os.urandom(BROADCAST_ID_SIZE)
    content_key = os.urandom(16)
    prefix = (
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
        .raw(epoch.epoch_id)
        .u16(epoch.recipient_count)
        .raw(epoch.root)
        .getvalue()
    )
    header = prefix + _ascon_encrypt(epoch.key, broadcast_id, prefix, content_key)
    ciphertext = _ascon_encrypt(content_key, broadcast_id, header, payload)
    signed = header + len(ciphertext).to_bytes(4, "big") + ciphertext
    signature = sender.signing_key.sign(signed, _SIGN_CONTEXT)
    body = signed + len(signature).to_bytes(2, "big") + signature
    return SealedBroadcast(body, dict(epoch.entries) if with_entries else {})


@dataclass(frozen=True, slots=True)
class _ParsedBody:
    metadata: BroadcastMetadata
    prefix: bytes  # the header before the wrapped content key: that key's AD
    wrapped_key: bytes
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
    epoch_id = r.raw(EPOCH_ID_SIZE, "epoch id")
    count = r.u16("recipient count")
    if count < 1:
        raise DecodeError("broadcast lists no recipients")
    root = r.raw(HASH_SIZE, "entry tree root")
    prefix_end = r.offset
    wrapped_key = r.raw(WRAPPED_KEY_SIZE, "wrapped content key")
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
        sender,
        content_type,
        round_,
        model_version,
        created_ms,
        broadcast_id,
        sig_alg,
        count,
        root,
        epoch_id,
    )
    return _ParsedBody(
        meta,
        raw[:prefix_end],
        wrapped_key,
        raw[:header_end],
        ciphertext,
        raw[:signed_end],
        signature,
    )


def peek_broadcast(frame: bytes, max_size: int = DEFAULT_MAX_BODY_SIZE) -> BroadcastMetadata:
    """Decode a body's metadata WITHOUT verifying anything: for routing and logging only."""
    return _parse_body(frame, max_size).metadata


def peek_entry(frame: bytes) -> KeyEntry:
    """Decode a key entry WITHOUT verifying anything: for pairing it with its bodies."""
    return KeyEntry.from_bytes(frame)


def open_broadcast(
    body: bytes,
    entry: bytes,
    recipient: Identity,
    senders: Registry,
    *,
    after_round: int | None = None,
    max_size: int = DEFAULT_MAX_BODY_SIZE,
    epoch_keys: EpochKeyCache | None = None,
) -> OpenedBroadcast:
    """Verify the sender's signature on the body (sender enrolled, not revoked), check that the
    entry is of the body's epoch, addressed to `recipient` and one the sender signed, then
    unwrap the epoch key, the body's content key, and decrypt.

    `after_round`: the last round the recipient accepted; an older or equal round is a
    replay (ReplayError), checked only after the signature so it is never a forgery's claim.
    `epoch_keys`: where the recipient keeps the epoch keys it unwrapped (every check above
    still runs for each body)."""
    parsed = _parse_body(body, max_size)
    meta = parsed.metadata
    sender = senders.lookup(meta.sender)
    if sender.verify_key.alg is not meta.sig_alg:
        raise DecodeError(f"{meta.sender!r} is enrolled with {sender.verify_key.alg.label}")
    sender.verify_key.verify(parsed.signature, parsed.signed, _SIGN_CONTEXT)
    if after_round is not None and meta.round <= after_round:
        raise ReplayError(f"broadcast for round {meta.round}; round {after_round} already taken")
    key = KeyEntry.from_bytes(entry)
    if key.epoch_id != meta.epoch_id or key.recipient_count != meta.recipient_count:
        raise EntryMismatchError("key entry belongs to another key epoch")
    if recipient.kem_key is None:
        raise LocalProtocolError(f"{recipient.name!r} has no KEM key to open broadcasts with")
    fp = bytes.fromhex(recipient.public.fingerprint)
    if key.fingerprint != fp:
        raise NotAddressedError(f"key entry is not addressed to {recipient.name!r}")
    if root_from_path(key.index, key.recipient_count, key.leaf(), key.path) != meta.root:
        raise EntryMismatchError("key entry's Merkle path does not lead to the signed root")
    slot = EpochKeyCache.slot(entry, fp) if epoch_keys is not None else b""
    epoch_key = epoch_keys.get(slot) if epoch_keys is not None else None
    if epoch_key is None:
        kek = _wrap_key(recipient.kem_key.decapsulate(key.kem_ciphertext), fp, meta.epoch_id)
        epoch_key = _ascon_decrypt(kek, meta.epoch_id, fp, key.wrapped_key)
        if epoch_keys is not None:
            epoch_keys.put(slot, epoch_key)
    content_key = _ascon_decrypt(epoch_key, meta.broadcast_id, parsed.prefix, parsed.wrapped_key)
    payload = _ascon_decrypt(content_key, meta.broadcast_id, parsed.header, parsed.ciphertext)
    return OpenedBroadcast(meta, payload, sender)


def join_delivery(body: bytes, entry: bytes) -> bytes:
    """A body and a recipient's entry as one frame, for a recipient to keep until it opens
    them (nothing is authenticated here: `open_delivery` checks everything)."""
    return bytes((DELIVERY_TYPE, DELIVERY_VERSION)) + len(body).to_bytes(4, "big") + body + entry


def split_delivery(frame: bytes) -> tuple[bytes, bytes]:
    """The body and entry of a `join_delivery` frame."""
    r = Reader(bytes(frame), "broadcast delivery")
    if r.u8("type") != DELIVERY_TYPE:
        raise DecodeError("frame is not a broadcast delivery")
    version = r.u8("version")
    if version != DELIVERY_VERSION:
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
    epoch_keys: EpochKeyCache | None = None,
) -> OpenedBroadcast:
    """`open_broadcast` of a `join_delivery` frame."""
    body, entry = split_delivery(frame)
    return open_broadcast(
        body,
        entry,
        recipient,
        senders,
        after_round=after_round,
        max_size=max_size,
        epoch_keys=epoch_keys,
    )
