"""Stateless sealed envelopes for model updates and global models.

One Ascon-AEAD128 body under a fresh content key, that key wrapped for each recipient through the
hybrid KEM, and the sender's ML-DSA signature over everything, so any holder of a recipient key
can open an envelope later without session state."""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pqlink._ascon import decrypt as _ascon_decrypt
from pqlink._ascon import encrypt as _ascon_encrypt
from pqlink._codec import Reader, Writer
from pqlink._errors import DecodeError, ErrorReason, LocalProtocolError
from pqlink.identity import Identity, PublicIdentity, Registry
from pqlink.kdf import expand_label, hkdf_extract
from pqlink.keys import HYBRID_CIPHERTEXT_SIZE, SigAlg
from pqlink.record import BytesLike

ENVELOPE_TYPE = 0x04
ENVELOPE_VERSION = 1
ENVELOPE_ID_SIZE = 16
FINGERPRINT_SIZE = 32
WRAPPED_KEY_SIZE = 32
RECIPIENT_SLOT_SIZE = FINGERPRINT_SIZE + HYBRID_CIPHERTEXT_SIZE + WRAPPED_KEY_SIZE
MAX_RECIPIENTS = 4096
DEFAULT_MAX_ENVELOPE_SIZE = 32 * 1024 * 1024
_SIGN_CONTEXT = b"pqlink1 envelope"
_WRAP_SALT = b"pqlink1 envelope wrap"


class ContentType(enum.IntEnum):
    MODEL_UPDATE = 1
    GLOBAL_MODEL = 2
    ROUND_ANNOUNCEMENT = 3
    SECAGG = 4  # a secure-aggregation protocol message (adverts, keys, shares, unmasking)
    MASKED_INPUT = 5  # a gateway's masked update, summed by crypto workers


@dataclass(frozen=True, slots=True)
class EnvelopeMetadata:
    """Authenticated (signed), unencrypted metadata of an envelope."""

    sender: str
    content_type: ContentType
    round: int
    model_version: int
    sample_count: int
    created_ms: int
    envelope_id: bytes
    sig_alg: SigAlg
    recipients: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class OpenedEnvelope:
    metadata: EnvelopeMetadata
    payload: bytes
    sender: PublicIdentity


def _check_u(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} must be in [0, 2**{bits}), got {value}")


def _wrap_key(shared_secret: bytes, fingerprint: bytes, envelope_id: bytes) -> bytes:
    prk = hkdf_extract(_WRAP_SALT, shared_secret)
    return expand_label(prk, "wrap", fingerprint + envelope_id, 16)


def seal_envelope(
    sender: Identity,
    recipients: Sequence[PublicIdentity],
    payload: bytes,
    *,
    content_type: ContentType,
    round: int,
    model_version: int = 0,
    sample_count: int = 0,
    now: float | None = None,
) -> bytes:
    """Encrypt `payload` for every recipient and sign the whole envelope."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise LocalProtocolError(
            f"an envelope needs 1 to {MAX_RECIPIENTS} recipients", reason=ErrorReason.BAD_COUNT
        )
    _check_u(round, 64, "round")
    _check_u(model_version, 32, "model_version")
    _check_u(sample_count, 64, "sample_count")
    created_ms = int((time.time() if now is None else now) * 1000)
    envelope_id = os.urandom(ENVELOPE_ID_SIZE)
    content_key = os.urandom(16)
    w = (
        Writer()
        .u8(ENVELOPE_TYPE)
        .u8(ENVELOPE_VERSION)
        .u8(ContentType(content_type))
        .u8(sender.signing_key.alg)
        .identifier(sender.name)
        .u64(round)
        .u32(model_version)
        .u64(sample_count)
        .u64(created_ms)
        .raw(envelope_id)
        .u16(len(recipients))
    )
    seen: set[bytes] = set()
    for rcpt in recipients:
        if rcpt.kem_public is None:
            raise LocalProtocolError(
                f"recipient {rcpt.name!r} has no KEM key", reason=ErrorReason.BAD_KEY
            )
        fp = bytes.fromhex(rcpt.fingerprint)
        if fp in seen:
            raise LocalProtocolError(
                f"recipient {rcpt.name!r} is listed twice", reason=ErrorReason.DUPLICATE_RECIPIENT
            )
        seen.add(fp)
        enc = rcpt.kem_public.encapsulate()
        kek = _wrap_key(enc.shared_secret, fp, envelope_id)
        w.raw(fp).raw(enc.ciphertext).raw(_ascon_encrypt(kek, envelope_id, fp, content_key))
    header = w.getvalue()
    body = _ascon_encrypt(content_key, envelope_id, header, payload)
    signed = header + len(body).to_bytes(4, "big") + body
    signature = sender.signing_key.sign(signed, _SIGN_CONTEXT)
    return signed + len(signature).to_bytes(2, "big") + signature


@dataclass(frozen=True, slots=True)
class _Parsed:
    metadata: EnvelopeMetadata
    slots: dict[bytes, tuple[bytes, bytes]]
    header: bytes
    body: bytes
    signed: bytes
    signature: bytes


def _parse(frame: BytesLike, max_size: int) -> _Parsed:
    if len(frame) > max_size:
        raise DecodeError(
            f"envelope of {len(frame)} bytes exceeds the {max_size}-byte limit",
            reason=ErrorReason.TOO_LARGE,
        )
    raw = bytes(frame)
    r = Reader(raw, "envelope")
    if r.u8("type") != ENVELOPE_TYPE:
        raise DecodeError("frame is not an envelope", reason=ErrorReason.WRONG_TYPE)
    version = r.u8("version")
    if version != ENVELOPE_VERSION:
        raise DecodeError(
            f"envelope version {version} is not supported", reason=ErrorReason.BAD_VERSION
        )
    ct_code = r.u8("content type")
    try:
        content_type = ContentType(ct_code)
    except ValueError:
        raise DecodeError(
            f"unknown envelope content type {ct_code}", reason=ErrorReason.UNKNOWN_CONTENT_TYPE
        ) from None
    sig_alg = SigAlg.from_wire(r.u8("signature algorithm"))
    sender = r.identifier("sender id")
    round_ = r.u64("round")
    model_version = r.u32("model version")
    sample_count = r.u64("sample count")
    created_ms = r.u64("created")
    envelope_id = r.raw(ENVELOPE_ID_SIZE, "envelope id")
    n = r.u16("recipient count")
    if not 1 <= n <= MAX_RECIPIENTS:
        raise DecodeError(
            f"envelope lists {n} recipients (1-{MAX_RECIPIENTS} allowed)",
            reason=ErrorReason.BAD_COUNT,
        )
    slots: dict[bytes, tuple[bytes, bytes]] = {}
    for _ in range(n):
        fp = r.raw(FINGERPRINT_SIZE, "recipient fingerprint")
        ct = r.raw(HYBRID_CIPHERTEXT_SIZE, "recipient KEM ciphertext")
        wrapped = r.raw(WRAPPED_KEY_SIZE, "wrapped key")
        if fp in slots:
            raise DecodeError(
                "envelope lists a recipient twice", reason=ErrorReason.DUPLICATE_RECIPIENT
            )
        slots[fp] = (ct, wrapped)
    header_end = r.offset
    body_len = r.u32("body length")
    if body_len < 16:
        raise DecodeError(
            f"envelope body of {body_len} bytes is shorter than its tag",
            reason=ErrorReason.BODY_TOO_SHORT,
        )
    body = r.raw(body_len, "body")
    signed_end = r.offset
    sig_len = r.u16("signature length")
    if sig_len != sig_alg.signature_size:
        raise DecodeError(
            f"signature length {sig_len} does not match {sig_alg.label}",
            reason=ErrorReason.BAD_SIGNATURE_LENGTH,
        )
    signature = r.raw(sig_len, "signature")
    r.end()
    meta = EnvelopeMetadata(
        sender,
        content_type,
        round_,
        model_version,
        sample_count,
        created_ms,
        envelope_id,
        sig_alg,
        tuple(slots),
    )
    return _Parsed(meta, slots, raw[:header_end], body, raw[:signed_end], signature)


def peek_envelope(frame: BytesLike, max_size: int = DEFAULT_MAX_ENVELOPE_SIZE) -> EnvelopeMetadata:
    """Decode the metadata WITHOUT verifying anything: for routing and logging only."""
    return _parse(frame, max_size).metadata


def open_envelope(
    frame: BytesLike,
    recipient: Identity,
    senders: Registry,
    *,
    max_size: int = DEFAULT_MAX_ENVELOPE_SIZE,
) -> OpenedEnvelope:
    """Verify the sender's signature (sender enrolled and not revoked), then decrypt."""
    parsed = _parse(frame, max_size)
    meta = parsed.metadata
    sender = senders.lookup(meta.sender)
    if sender.verify_key.alg is not meta.sig_alg:
        raise DecodeError(
            f"{meta.sender!r} is enrolled with {sender.verify_key.alg.label}",
            reason=ErrorReason.SIG_ALG_MISMATCH,
        )
    sender.verify_key.verify(parsed.signature, parsed.signed, _SIGN_CONTEXT)
    if recipient.kem_key is None:
        raise LocalProtocolError(
            f"{recipient.name!r} has no KEM key to open envelopes with", reason=ErrorReason.BAD_KEY
        )
    fp = bytes.fromhex(recipient.public.fingerprint)
    slot = parsed.slots.get(fp)
    if slot is None:
        raise DecodeError(
            f"envelope is not addressed to {recipient.name!r}", reason=ErrorReason.NOT_A_RECIPIENT
        )
    ct, wrapped = slot
    kek = _wrap_key(recipient.kem_key.decapsulate(ct), fp, meta.envelope_id)
    content_key = _ascon_decrypt(kek, meta.envelope_id, fp, wrapped)
    payload = _ascon_decrypt(content_key, meta.envelope_id, parsed.header, parsed.body)
    return OpenedEnvelope(meta, payload, sender)
