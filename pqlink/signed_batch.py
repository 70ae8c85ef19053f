"""Signed batches: one ML-DSA signature over distinct payloads for distinct recipients, each
recipient given only its own payload and a Merkle path (RFC 9162 tree) to the signed root.

For payloads that need authenticity but no secrecy (public keys, KEM ciphertexts, data already
encrypted end to end): n recipients cost one signature instead of n sealed envelopes, and each
frame carries its own payload and log2(n) hashes instead of everyone's.

Item frame (big-endian):
    u8 type 0x08 | u8 version 1 | u8 content type | u8 signature algorithm
    | u8 len + sender id | u64 round | 16 batch id | u16 recipient count | 32 tree root
                                                                 (= header, signed as a whole)
    | u16 index | u8 len + recipient id | u32 n + payload
    | u8 path length + 32-byte hashes (leaf's sibling first)
    | u16 n + ML-DSA signature over the header
Leaf: SHA-256(0x00 "pqlink batch leaf" | batch id | u16 index | u8 len + recipient id
| SHA-256(payload)); nodes as in pqlink.broadcast.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pqlink._codec import Reader, Writer
from pqlink._errors import AuthenticationError, DecodeError, ErrorReason, LocalProtocolError
from pqlink.broadcast import MAX_PATH, merkle_root_and_paths, path_length, root_from_path
from pqlink.envelope import ContentType
from pqlink.identity import Identity, PublicIdentity, Registry
from pqlink.keys import SigAlg

BATCH_TYPE = 0x08
BATCH_VERSION = 1
BATCH_ID_SIZE = 16
HASH_SIZE = 32
MAX_RECIPIENTS = 65_535
DEFAULT_MAX_ITEM_SIZE = 32 * 1024 * 1024
_SIGN_CONTEXT = b"pqlink signed batch v1"
_LEAF = b"\x00pqlink batch leaf"


class NotInBatchError(AuthenticationError):
    """The frame's payload or recipient is not the one the sender signed at this position."""


@dataclass(frozen=True, slots=True)
class OpenedItem:
    """One recipient's verified payload and the signed metadata of its batch."""

    sender: PublicIdentity
    content_type: ContentType
    round: int
    batch_id: bytes
    recipient: str
    payload: bytes


def _leaf(batch_id: bytes, index: int, recipient: bytes, payload: bytes) -> bytes:
    return hashlib.sha256(
        _LEAF
        + batch_id
        + index.to_bytes(2, "big")
        + bytes((len(recipient),))
        + recipient
        + hashlib.sha256(payload).digest()
    ).digest()


def sign_batch(
    sender: Identity,
    items: Sequence[tuple[str, bytes]],
    *,
    content_type: ContentType,
    round: int,
) -> dict[str, bytes]:
    """One frame per (recipient name, payload), all under one signature; names distinct."""
    if not 1 <= len(items) <= MAX_RECIPIENTS:
        raise LocalProtocolError(
            f"a batch needs 1 to {MAX_RECIPIENTS} recipients", reason=ErrorReason.BAD_COUNT
        )
    if not 0 <= round < 1 << 64:
        raise LocalProtocolError(f"round must be a u64, got {round}")
    names = [name for name, _ in items]
    if len(set(names)) != len(names):
        raise LocalProtocolError(
            "a recipient is listed twice", reason=ErrorReason.DUPLICATE_RECIPIENT
        )
    batch_id = os.urandom(BATCH_ID_SIZE)
    encoded = [Writer().identifier(name).getvalue()[1:] for name in names]
    leaves = [
        _leaf(batch_id, i, rcpt, payload)
        for i, (rcpt, (_, payload)) in enumerate(zip(encoded, items, strict=True))
    ]
    root, paths = merkle_root_and_paths(leaves)
    header = (
        Writer()
        .u8(BATCH_TYPE)
        .u8(BATCH_VERSION)
        .u8(ContentType(content_type))
        .u8(sender.signing_key.alg)
        .identifier(sender.name)
        .u64(round)
        .raw(batch_id)
        .u16(len(items))
        .raw(root)
        .getvalue()
    )
    signature = sender.signing_key.sign(header, _SIGN_CONTEXT)
    tail = len(signature).to_bytes(2, "big") + signature
    out: dict[str, bytes] = {}
    for i, ((name, payload), path) in enumerate(zip(items, paths, strict=True)):
        w = Writer().raw(header).u16(i).identifier(name).u32(len(payload)).raw(payload)
        w.u8(len(path))
        for h in path:
            w.raw(h)
        out[name] = w.getvalue() + tail
    return out


def is_batch_item(frame: bytes) -> bool:
    """Whether a frame claims to be a batch item (by its type byte; nothing is checked)."""
    return len(frame) > 0 and frame[0] == BATCH_TYPE


def open_batch_item(
    frame: bytes,
    recipient: str,
    senders: Registry,
    *,
    max_size: int = DEFAULT_MAX_ITEM_SIZE,
) -> OpenedItem:
    """Verify that `frame` carries the payload its sender signed for `recipient` (sender
    enrolled and not revoked); DecodeError, SignatureError or NotInBatchError otherwise."""
    if len(frame) > max_size:
        raise DecodeError(
            f"batch item of {len(frame)} bytes over {max_size}", reason=ErrorReason.TOO_LARGE
        )
    raw = bytes(frame)
    r = Reader(raw, "batch item")
    if r.u8("type") != BATCH_TYPE:
        raise DecodeError("frame is not a batch item", reason=ErrorReason.WRONG_TYPE)
    if r.u8("version") != BATCH_VERSION:
        raise DecodeError("batch item version is not supported", reason=ErrorReason.BAD_VERSION)
    ct_code = r.u8("content type")
    try:
        content_type = ContentType(ct_code)
    except ValueError:
        raise DecodeError(
            f"unknown content type {ct_code}", reason=ErrorReason.UNKNOWN_CONTENT_TYPE
        ) from None
    sig_alg = SigAlg.from_wire(r.u8("signature algorithm"))
    sender_name = r.identifier("sender id")
    round_ = r.u64("round")
    batch_id = r.raw(BATCH_ID_SIZE, "batch id")
    count = r.u16("recipient count")
    root = r.raw(HASH_SIZE, "tree root")
    header = raw[: r.offset]
    index = r.u16("index")
    name = r.identifier("recipient id")
    payload = r.raw(r.u32("payload length"), "payload")
    depth = r.u8("path length")
    if depth > MAX_PATH:
        raise DecodeError(f"audit path of {depth} hashes", reason=ErrorReason.BAD_COUNT)
    path = [r.raw(HASH_SIZE, "path hash") for _ in range(depth)]
    signature = r.raw(r.u16("signature length"), "signature")
    r.end()
    if not index < count or depth != path_length(index, count):
        raise DecodeError(f"index {index} or path of {depth} outside a batch of {count}")
    sender = senders.lookup(sender_name)
    if sender.verify_key.alg is not sig_alg:
        raise DecodeError(
            f"{sender_name!r} is enrolled with {sender.verify_key.alg.label}",
            reason=ErrorReason.SIG_ALG_MISMATCH,
        )
    sender.verify_key.verify(signature, header, _SIGN_CONTEXT)
    if name != recipient:
        raise NotInBatchError(f"batch item addressed to {name!r}, not {recipient!r}")
    leaf = _leaf(batch_id, index, name.encode("ascii"), payload)
    if root_from_path(index, count, leaf, path) != root:
        raise NotInBatchError(f"batch item {index} of {sender_name!r} is not the one it signed")
    return OpenedItem(sender, content_type, round_, batch_id, name, payload)
